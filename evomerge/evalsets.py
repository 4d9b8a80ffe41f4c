"""Eval sets: a small YAML card plus JSONL items, split into dev (seen by the search) and holdout (re-checks only).

Layout: `eval_sets/<name>/card.yaml` and `eval_sets/<name>/items.jsonl`. A multiple-choice item is
`{"id", "split": "dev"|"holdout", "choices": [...], "gold": i, ...fields used by the card's prompt}`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from evomerge.errors import UserError

KINDS = ("multiple_choice",)
METRICS = ("acc", "gold_prob")
SPLITS = ("dev", "holdout")
_CARD_KEYS = {"name", "language", "kind", "metric", "chat_template", "prompt", "target_delimiter", "few_shot",
              "source", "license"}


@dataclass(frozen=True)
class Card:
    """What an eval set measures and how its prompts are built."""

    name: str
    language: str
    kind: str
    metric: str
    prompt: str
    chat_template: bool = False
    target_delimiter: str = " "
    few_shot: int = 0
    source: str = ""
    license: str = ""


@dataclass(frozen=True)
class Item:
    """One multiple-choice item."""

    id: str
    split: str
    choices: tuple[str, ...]
    gold: int
    fields: Mapping[str, Any]

    def prompt(self, card: Card) -> str:
        """The card's prompt template filled with this item's fields."""
        return card.prompt.format(**self.fields)


@dataclass(frozen=True)
class EvalSet:
    """A loaded, validated eval set."""

    path: str
    card: Card
    items: tuple[Item, ...]

    @property
    def name(self) -> str:
        return self.card.name

    def select(self, split: str, max_items: int | None = None, seed: int = 0) -> tuple[Item, ...]:
        """The items of one split; a seeded subset when max_items is smaller (same seed -> same items)."""
        items = [it for it in self.items if it.split == split]
        if not items:
            raise UserError(self.path, f"no items in split {split!r}", "add items or choose another split")
        if max_items is not None and max_items < len(items):
            items = random.Random(f"{seed}:{self.name}").sample(items, max_items)
            items.sort(key=lambda it: it.id)
        return tuple(items)


def load_evalset(path: str | Path) -> EvalSet:
    """Read and validate `card.yaml` and `items.jsonl` under an eval-set directory."""
    import yaml

    root = Path(path)
    card_file, items_file = root / "card.yaml", root / "items.jsonl"
    if not card_file.is_file():
        raise UserError(str(root), "no card.yaml", "an eval set is a directory with card.yaml and items.jsonl")
    try:
        raw = yaml.safe_load(card_file.read_text())
    except yaml.YAMLError:
        raise UserError(str(card_file), "malformed YAML", "fix the syntax") from None
    if not isinstance(raw, dict):
        raise UserError(str(card_file), "must be a mapping", "see eval_sets/ for examples")
    unknown = sorted(set(raw) - _CARD_KEYS)
    if unknown:
        raise UserError(f"{card_file}: {unknown[0]}", "unknown key", f"known keys: {', '.join(sorted(_CARD_KEYS))}")
    for key in ("name", "language", "kind", "metric", "prompt"):
        if not isinstance(raw.get(key), str):
            raise UserError(f"{card_file}: {key}", "missing or not a string", "see eval_sets/ for examples")
    if raw["kind"] not in KINDS:
        raise UserError(f"{card_file}: kind", f"unknown kind {raw['kind']!r}", f"use one of {', '.join(KINDS)}")
    if raw["metric"] not in METRICS:
        raise UserError(f"{card_file}: metric", f"unknown metric {raw['metric']!r}", f"use one of {', '.join(METRICS)}")
    card = Card(**{k: raw[k] for k in raw})
    if not items_file.is_file():
        raise UserError(str(root), "no items.jsonl", "add the items, one JSON object per line")
    items = []
    for n, line in enumerate(items_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{items_file}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(where, "malformed JSON", "one JSON object per line") from None
        items.append(_item(obj, where, card))
    if not items:
        raise UserError(str(items_file), "empty", "add at least one item")
    return EvalSet(str(root), card, tuple(items))


def _item(obj: Any, where: str, card: Card) -> Item:
    if not isinstance(obj, dict):
        raise UserError(where, "must be a JSON object", "see eval_sets/ for examples")
    choices, gold, split = obj.get("choices"), obj.get("gold"), obj.get("split")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise UserError(f"{where}: choices", "must be a list of at least two strings", "list the answer options")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        raise UserError(f"{where}: gold", f"must index choices (0..{len(choices) - 1})", "fix the gold index")
    if split not in SPLITS:
        raise UserError(f"{where}: split", f"must be one of {', '.join(SPLITS)}", "mark each item dev or holdout")
    fields = {k: v for k, v in obj.items() if k not in ("choices", "gold", "split")}
    try:
        card.prompt.format(**fields)
    except (KeyError, IndexError) as e:
        raise UserError(where, f"the card's prompt needs field {e}", "add the field to the item") from None
    return Item(str(obj.get("id", where)), split, tuple(choices), gold, fields)
