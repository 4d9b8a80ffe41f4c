"""Eval sets: a small YAML card plus JSONL items, split into dev (seen by the search) and holdout (re-checks only).

Layout: `eval_sets/<name>/card.yaml` and `eval_sets/<name>/items.jsonl`. Every item has an `id` and a `split`
(`dev`, `holdout`, or `fewshot`: examples only, never scored) plus the fields the card's prompt template uses.
By kind:

- `multiple_choice`: `choices` (strings) and `gold` (index; lm-eval's `label` or `answer` is read as `gold`).
  `form: cloze` scores each choice text as the continuation; `form: letter` lists the choices as "A: ..." lines
  (template field `{options}`) and scores the letters. Metrics: acc, acc_norm, acc_bytes, gold_prob (scorers.py).
- `instruction`: `constraints` (verifiers.py) and optionally `language` (the expected response language, default
  the card's) and `reference` (a response that keeps every constraint; needed for few-shot examples, and checked
  by the tests for shipped sets). Metrics: prompt_acc, inst_acc, their loose forms, lang_acc.
- `perplexity`: `text`. Metric: bits_per_byte (lower is better; fitness.py turns it around).

The card's `origin` says where the items came from (dataset, config, the source split of dev and of holdout, how
they were split); `guard_test_splits` uses it to refuse a benchmark's test split as a search dev set.
"""

from __future__ import annotations

import json
import math
import random
import re
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from evomerge.errors import UserError
from evomerge.reference import REQUIRED, Key, by_name, names, required
from evomerge.scorers import METRICS
from evomerge.verifiers import Constraint, parse_constraint

KINDS = tuple(METRICS)
FORMS = ("cloze", "letter")
SPLITS = ("dev", "holdout", "fewshot")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# The keys of a card, its origin and each kind's item fields, described once: the validation below reads its
# allowed keys, required keys, types and choices from these tables, and docs/reference.md is generated from them
# (evomerge/reference.py). A new key goes here first.
CARD_KEYS: tuple[Key, ...] = (
    Key("name", str, "The set's name in scores, the ledger and per-item records.", "belebele_eu", REQUIRED),
    Key("language", str, "Language code of the items; an instruction item's expected response language unless "
        "the item sets its own.", "eu", REQUIRED),
    Key("kind", str, "What an item is and how it is scored (see Items below).", "multiple_choice", REQUIRED,
        choices=KINDS),
    Key("metric", str, "The metric the search's fitness uses. By kind: " + "; ".join(
        f"{k}: {', '.join(m)}" for k, m in METRICS.items()) + ".", "gold_prob", REQUIRED),
    Key("prompt", str, "Template over item fields in single braces (`{question}`; lm-eval's Jinja `{{question}}` "
        "is refused); `{options}` is the lettered choice list (\"A: ...\" lines) of `form: letter`. Required "
        "except for perplexity sets.", "\"{passage}\\n{question}\\n{options}\\nAnswer:\"", "{text}"),
    Key("form", str, "Multiple choice only: `cloze` scores each choice text as the continuation, `letter` scores "
        "the letters A, B, ... (the prompt must hold `{options}`).", "letter", "cloze", choices=FORMS),
    Key("target_delimiter", str, "Put between the prompt and each scored continuation or few-shot answer "
        "(lm-eval's `target_delimiter`).", '" "', " "),
    Key("chat_template", bool, "Wrap the prompt in the model's chat template (few-shot examples become earlier "
        "turns); false for perplexity sets.", "true", False),
    Key("system", str, "System message: a system turn with `chat_template`, else the first block of the "
        "prompt.", '"Answer in Basque."', ""),
    Key("few_shot", int, "Examples before each prompt, drawn per item from the `fewshot` items (else dev), "
        "never the item itself; 0 for perplexity sets.", "5", 0),
    Key("max_new_tokens", int, "Instruction sets: generation cap per response (at least 1).", "1280", 256),
    Key("stop", list, "Instruction sets: a response is cut before the first of these strings.", '["\\n\\n"]',
        (), shape="of strings"),
    Key("source", str, "Where the items come from, for people (free text).", '"facebook/belebele (eus_Latn)"', ""),
    Key("license", str, "The items' licence.", "CC-BY-SA-4.0", ""),
    Key("origin", dict, "Machine-readable provenance (keys below); guards against searching on test data.",
        "{dataset: facebook/belebele, config: eus_Latn, dev_split: test, split_by: passage}", {},
        shape="(see origin)"),
)
ORIGIN_KEYS: tuple[Key, ...] = (
    Key("dataset", str, "Hugging Face dataset id the items came from.", "facebook/belebele"),
    Key("config", str, "The dataset's config (subset).", "eus_Latn"),
    Key("dev_split", str, "Source split of the dev items; a known benchmark test split is refused as a search "
        "dev set.", "test"),
    Key("holdout_split", str, "Source split of the holdout items.", "test"),
    Key("split_by", str, "How dev and holdout were split.", "passage"),
    Key("seed", int, "Seed of that split.", "0"),
    Key("n_dev", int, "Dev items asked for.", "100"),
    Key("n_holdout", int, "Holdout items asked for.", "300"),
    Key("test_split", bool, "true: the dev items are a benchmark's test data (refused unless "
        "--allow-test-splits).", "true"),
)
# "*": every item's fields; then each kind's. Fields not listed are template fields (the card's prompt reads them).
ITEM_FIELDS: dict[str, tuple[Key, ...]] = {
    "*": (Key("id", (str, int), "Unique within the set.", '"eu-001"', REQUIRED),
          Key("split", str, "`dev` (seen by the search), `holdout` (re-checks only) or `fewshot` (examples only, "
              "never scored).", '"dev"', REQUIRED, choices=SPLITS),
          Key("weight", float, "How many items this one counts as in the set's means (a positive number): a "
              "reduced set's anchor stands for its cluster (`evomerge evalset reduce`).", "7", 1)),
    "multiple_choice": (
        Key("choices", list, "The answer options (at least two, non-empty; at most 26 with `form: letter`).",
            '["the cat", "the dog"]', REQUIRED, shape="of strings"),
        Key("gold", int, "0-based index of the right choice; lm-eval's `label` or `answer` (an index, or its "
            "digits) is read as gold when gold is absent.", "1", REQUIRED)),
    "instruction": (
        Key("constraints", list, "What a response must keep (may be empty); see Constraint types.",
            '[{"type": "words", "max": 50}]', REQUIRED, shape="of constraint mappings"),
        Key("language", str, "Expected response language (scored by `lang_acc`); default the card's.", '"eu"'),
        Key("reference", str, "A response that keeps every constraint; needed by few-shot examples.",
            '"Zatoz Donostiara!"')),
    "perplexity": (Key("text", str, "The text scored for bits per byte (non-empty); the default prompt `{text}` "
                       "reads it.", '"Donostia hiri bat da."', REQUIRED),),
}
# item keys that are not template fields: every field a kind defines, but perplexity's `text`, which the prompt
# `{text}` reads
_RESERVED = {k.name for keys in ITEM_FIELDS.values() for k in keys} - {"text"}
# lm-eval's placeholders ({{ field }}) and blocks ({% for ... %}), which str.format does not fill
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
# item keys read as `gold` when it is absent: lm-eval task files and HF datasets name the gold index so
GOLD_ALIASES = ("label", "answer")

# (dataset id, split) pairs that are a public benchmark's test data: optimizing on them and then reporting them is
# test-set tuning. Belebele, IFEval and its translations publish only their evaluation split.
KNOWN_TEST_SPLITS: frozenset[tuple[str, str]] = frozenset({
    ("facebook/belebele", "test"), ("proxectonos/belebele_gl", "train"), ("proxectonos/belebele_gl", "test"),
    ("juletxara/xstory_cloze", "eval"), ("projecte-aina/xstorycloze_ca", "eval"),
    ("proxectonos/xstorycloze_gl", "eval"), ("proxectonos/xstorycloze_gl", "test"),
    ("google/IFEval", "train"), ("projecte-aina/IFEval_ca", "train"), ("projecte-aina/IFEval_ca", "test"),
    ("BSC-LT/IFEval_es", "train"), ("BSC-LT/IFEval_es", "test"),
    ("openlanguagedata/flores_plus", "devtest"),
    ("HiTZ/MGSM-eu", "test"), ("projecte-aina/mgsm_ca", "test"), ("proxectonos/mgsm_gl", "test"),
    ("juletxara/mgsm", "test"),
})


@dataclass(frozen=True)
class Card:
    """What an eval set measures and how its prompts are built."""

    name: str
    language: str
    kind: str
    metric: str
    prompt: str = "{text}"
    chat_template: bool = False
    target_delimiter: str = " "
    few_shot: int = 0
    source: str = ""
    license: str = ""
    form: str = "cloze"
    system: str = ""
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    origin: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    """One item; which of the kind-specific fields are set depends on the card's kind."""

    id: str
    split: str
    fields: Mapping[str, Any]
    choices: tuple[str, ...] = ()
    gold: int = -1
    constraints: tuple[Constraint, ...] = ()
    language: str = ""
    reference: str | None = None
    weight: float = 1

    def prompt(self, card: Card) -> str:
        """The card's prompt template filled with this item's fields (and `{options}` for letter form)."""
        return card.prompt.format(**self.fields, **_extra_fields(card, self.choices))

    def answer(self, card: Card) -> str:
        """The text a few-shot example shows as its answer."""
        if card.kind == "multiple_choice":
            return LETTERS[self.gold] if card.form == "letter" else self.choices[self.gold]
        if card.kind == "instruction" and self.reference is not None:
            return self.reference
        raise ValueError(f"item {self.id} has no answer to show")

    def text(self, card: Card) -> str:
        """All the item's own text a model reads: its prompt and its choice texts."""
        return " ".join((self.prompt(card), *self.choices))

    def continuations(self, card: Card) -> tuple[str, ...]:
        """The strings scored as continuations (choice texts or letters), without the target delimiter."""
        return tuple(LETTERS[: len(self.choices)]) if card.form == "letter" else self.choices


def _extra_fields(card: Card, choices: tuple[str, ...]) -> dict[str, str]:
    if card.kind == "multiple_choice" and card.form == "letter":
        return {"options": "\n".join(f"{LETTERS[i]}: {c}" for i, c in enumerate(choices))}
    return {}


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
        """The items of one split; a seeded subset when max_items is smaller (same seed -> same items, whatever
        the candidate: a generation's candidates are compared on equal terms)."""
        if split not in ("dev", "holdout"):
            raise UserError("split", f"cannot score split {split!r}", "use dev or holdout")
        items = [it for it in self.items if it.split == split]
        if not items:
            raise UserError(self.path, f"no items in split {split!r}", "add items or choose another split")
        if max_items is not None and max_items < len(items):
            items = random.Random(f"{seed}:{self.name}").sample(items, max_items)
            items.sort(key=lambda it: it.id)
        return tuple(items)

    def shots(self, item: Item, seed: int = 0) -> tuple[Item, ...]:
        """The card's few-shot examples for one item: from the `fewshot` items if there are any, else from the
        dev items (never the item itself); seeded per item, so every candidate sees the same examples."""
        k = self.card.few_shot
        if k == 0:
            return ()
        pool = [it for it in self.items if it.split == "fewshot"] or [it for it in self.items if it.split == "dev"]
        pool = [it for it in pool if it.id != item.id]
        if len(pool) < k:
            raise UserError(self.path, f"few_shot is {k} but only {len(pool)} example items",
                            "add `fewshot` items or lower few_shot")
        return tuple(random.Random(f"{seed}:{self.name}:shots:{item.id}").sample(pool, k))


def load_evalset(path: str | Path) -> EvalSet:
    """Read and validate `card.yaml` and `items.jsonl` under an eval-set directory."""
    root = Path(path)
    card_file, items_file = root / "card.yaml", root / "items.jsonl"
    if not card_file.is_file():
        raise UserError(str(root), "no card.yaml", "an eval set is a directory with card.yaml and items.jsonl")
    from evomerge.yamlfile import load_yaml

    card = parse_card(load_yaml(card_file, "an eval-set card"), str(card_file))
    if not items_file.is_file():
        raise UserError(str(root), "no items.jsonl", "add the items, one JSON object per line")
    items, ids = [], set()
    try:
        text = items_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(str(items_file), f"not UTF-8 text (byte {e.start})", "save the file as UTF-8") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{items_file}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(where, "malformed JSON", "one JSON object per line") from None
        item = parse_item(obj, where, card)
        if item.id in ids:
            raise UserError(f"{where}: id", f"duplicate id {item.id!r}", "ids must be unique within a set")
        ids.add(item.id)
        items.append(item)
    if not items:
        raise UserError(str(items_file), "empty", "add at least one item")
    if card.few_shot and card.kind == "instruction":
        pool = [it for it in items if it.split == "fewshot"] or [it for it in items if it.split == "dev"]
        if any(it.reference is None for it in pool):
            raise UserError(str(items_file), "few-shot instruction examples need a `reference` response",
                            "add `reference` to the example items or set few_shot: 0")
    unread = unread_fields(card, items)
    if unread:  # once per set, not per item: a pulled set's extra column would otherwise print a line per row
        warnings.warn(f"{root}: items have fields the card's prompt never reads: {', '.join(unread)} (prompt "
                      f"{card.prompt!r}; add them to the prompt as {{{unread[0]}}}, or drop them from the items)",
                      EvalSetWarning, stacklevel=2)
    return EvalSet(str(root), card, tuple(items))


class EvalSetWarning(UserWarning):
    """An eval set that loads but is probably not what its author meant."""


def prompt_fields(template: str) -> set[str]:
    """The item fields a prompt template reads (`{question}`, `{a.b}` and `{a[0]}` read `question` and `a`)."""
    out = set()
    for _, name, _, _ in string.Formatter().parse(template):
        if name:
            out.add(re.split(r"[.\[]", name, maxsplit=1)[0])
    return out


def unread_fields(card: Card, items: Iterable[Item]) -> tuple[str, ...]:
    """Template fields of the items that the card's prompt never reads, sorted (an item's `id`, `split` and its
    kind's own fields are not template fields; lm-eval's `label`/`answer` of a multiple-choice item is read as
    gold)."""
    present = {k for it in items for k in it.fields}
    read = prompt_fields(card.prompt) | (set(GOLD_ALIASES) if card.kind == "multiple_choice" else set())
    return tuple(sorted(present - read))


def parse_card(raw: Any, where: str) -> Card:
    """Validate a card mapping (unknown keys refused)."""
    if not isinstance(raw, dict):
        raise UserError(where, "must be a mapping", "see eval_sets/ for examples")
    unknown = sorted(set(raw) - names(CARD_KEYS))
    if unknown:
        raise UserError(f"{where}: {unknown[0]}", "unknown key",
                        f"known keys: {', '.join(sorted(names(CARD_KEYS)))}; see docs/reference.md")
    for key in sorted(required(CARD_KEYS), key=[k.name for k in CARD_KEYS].index):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise UserError(f"{where}: {key}", "missing or not a string", "see docs/reference.md")
    keys = by_name(CARD_KEYS)
    kind = raw["kind"]
    if not keys["kind"].accepts(kind):
        raise UserError(f"{where}: kind", f"unknown kind {kind!r}", f"use one of {', '.join(KINDS)}")
    if raw["metric"] not in METRICS[kind]:
        raise UserError(f"{where}: metric", f"unknown metric {raw['metric']!r} for {kind}",
                        f"use one of {', '.join(METRICS[kind])}")
    for key in CARD_KEYS:
        if key.name in raw and not key.accepts(raw[key.name]) and not key.choices:
            raise UserError(f"{where}: {key.name}", f"must be of type {key.type_name}, not {type(raw[key.name]).__name__}",
                            f"e.g. {key.name}: {key.example}")
    if kind != "perplexity" and "prompt" not in raw:
        raise UserError(f"{where}: prompt", "missing", 'a template over item fields, e.g. "{question}"')
    jinja = _JINJA.search(raw.get("prompt", ""))
    if jinja:  # str.format would print "{{question}}" as the literal "{question}": every item the same prompt
        simple = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", jinja.group(0))
        field_name = simple.group(1) if simple else "question"
        raise UserError(f"{where}: prompt", f"{jinja.group(0)!r} is lm-eval's Jinja, not evomerge's placeholder",
                        f"write {{{field_name}}}: one pair of braces around an item field (a lettered list of the "
                        "choices is {options} with form: letter)")
    if not keys["form"].accepts(raw.get("form", keys["form"].default)):
        raise UserError(f"{where}: form", f"unknown form {raw['form']!r}", f"use one of {', '.join(FORMS)}")
    if raw.get("few_shot", 0) < 0 or raw.get("max_new_tokens", 1) < 1:
        raise UserError(f"{where}: few_shot/max_new_tokens", "out of range", "few_shot >= 0, max_new_tokens >= 1")
    if kind == "multiple_choice" and raw.get("form") == "letter" and "{options}" not in raw["prompt"]:
        raise UserError(f"{where}: prompt", "form: letter scores the letters A, B, ... but the prompt never lists "
                        "them", 'add {options} (the "A: choice" lines), e.g. "{question}\n{options}\nAnswer:"')
    if kind == "perplexity" and (raw.get("chat_template") or raw.get("few_shot")):
        raise UserError(f"{where}: chat_template", "perplexity sets score raw text",
                        "set chat_template: false and few_shot: 0")
    if not all(isinstance(s, str) and s for s in raw.get("stop", [])):
        raise UserError(f"{where}: stop", "must be a list of non-empty strings", 'e.g. ["\\n\\n"]')
    origin = raw.get("origin", {})
    bad = sorted(set(origin) - names(ORIGIN_KEYS))
    if bad:
        raise UserError(f"{where}: origin.{bad[0]}", "unknown key",
                        f"known keys: {', '.join(sorted(names(ORIGIN_KEYS)))}")
    for key in ORIGIN_KEYS:
        if key.name in origin and not key.accepts(origin[key.name]):
            raise UserError(f"{where}: origin.{key.name}", f"must be of type {key.type_name}", f"e.g. {key.example}")
    values = dict(raw)
    if "stop" in values:
        values["stop"] = tuple(values["stop"])
    return Card(**values)


def parse_item(obj: Any, where: str, card: Card) -> Item:
    """Validate one item of a set of the card's kind."""
    if not isinstance(obj, dict):
        raise UserError(where, "must be a JSON object", "see eval_sets/ for examples")
    split = obj.get("split")
    if split not in SPLITS:
        raise UserError(f"{where}: split", f"must be one of {', '.join(SPLITS)}", "mark each item dev or holdout")
    if not isinstance(obj.get("id"), (str, int)) or isinstance(obj.get("id"), bool):
        raise UserError(f"{where}: id", "missing (a string or an integer)", "give every item a unique id")
    weight = obj.get("weight", 1)
    if not by_name(ITEM_FIELDS["*"])["weight"].accepts(weight) or not 0 < weight < math.inf:
        raise UserError(f"{where}: weight", "must be a positive number", "how many items this one counts as, e.g. 7")
    fields = {k: v for k, v in obj.items() if k not in _RESERVED}
    kw: dict[str, Any] = {}
    if card.kind == "multiple_choice":
        choices, gold = obj.get("choices"), _gold(obj)
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UserError(f"{where}: choices", "must be a list of at least two non-empty strings",
                            "list the answer options")
        if card.form == "letter" and len(choices) > len(LETTERS):
            raise UserError(f"{where}: choices", "too many for letters", f"at most {len(LETTERS)}")
        if gold is None:
            raise UserError(f"{where}: gold", "missing", "the right choice's index (0-based); lm-eval's `label` or "
                                                         "`answer` is read as gold when it is an index")
        if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
            raise UserError(f"{where}: gold", f"must index choices (0..{len(choices) - 1})", "fix the gold index")
        kw = {"choices": tuple(choices), "gold": gold}
    elif card.kind == "instruction":
        raw = obj.get("constraints")
        if not isinstance(raw, list):
            raise UserError(f"{where}: constraints", "must be a list (may be empty)",
                            'e.g. [{"type": "words", "max": 50}]')
        language = obj.get("language", card.language)
        if not isinstance(language, str) or not language:
            raise UserError(f"{where}: language", "must be a language code", "e.g. eu, ca, gl, es, en")
        reference = obj.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise UserError(f"{where}: reference", "must be a string", "a response that keeps the constraints")
        kw = {"constraints": tuple(parse_constraint(c, f"{where}: constraints[{i}]") for i, c in enumerate(raw)),
              "language": language, "reference": reference}
    else:
        if not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise UserError(f"{where}: text", "missing or empty", "a perplexity item is a piece of text")
    try:
        card.prompt.format(**fields, **_extra_fields(card, kw.get("choices", ())))
    except (KeyError, IndexError) as e:
        raise UserError(where, f"the card's prompt needs field {e}", "add the field to the item") from None
    return Item(str(obj["id"]), split, fields, weight=weight, **kw)


def _gold(obj: Mapping[str, Any]) -> Any:
    """An item's gold index: `gold`, else lm-eval's `label` or `answer` when it is an index (an int, or digits as
    lm-eval's doc_to_target turns "2" into 2); None when there is none."""
    if "gold" in obj:
        return obj["gold"]
    for key in GOLD_ALIASES:
        value = obj.get(key)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def benchmark_test_reason(card: Card) -> str | None:
    """Why this set's dev split is a known benchmark's test data, or None."""
    origin = card.origin
    if origin.get("test_split") is True:
        return "its card marks the dev items as benchmark test data (origin.test_split)"
    key = (str(origin.get("dataset", "")), str(origin.get("dev_split", "")))
    if key in KNOWN_TEST_SPLITS:
        return f"its dev items come from {key[0]}'s {key[1]!r} split, a benchmark's test data"
    return None


def guard_test_splits(evalsets: Iterable[EvalSet], allow: bool = False) -> None:
    """Refuse to search on a known benchmark's test split unless `allow` (mergekit has the same guard): a model
    tuned on the test items and then reported on them is not evidence of anything."""
    if allow:
        return
    for es in evalsets:
        reason = benchmark_test_reason(es.card)
        if reason:
            raise UserError(es.path, f"refusing to search on {es.name}: {reason}",
                            "pull a train/dev split instead, or pass --allow-test-splits if you know why")


def write_evalset(root: str | Path, card: Mapping[str, Any], items: Iterable[Mapping[str, Any]]) -> Path:
    """Write a card and items as an eval-set directory (validated first, so what is written loads)."""
    import yaml

    root = Path(root)
    parsed = parse_card(dict(card), str(root / "card.yaml"))
    lines = []
    for n, obj in enumerate(items, 1):
        parse_item(obj, f"{root / 'items.jsonl'}:{n}", parsed)
        lines.append(json.dumps(obj, ensure_ascii=False))
    if not lines:
        raise UserError(str(root), "no items to write", "the source gave no usable items")
    root.mkdir(parents=True, exist_ok=True)
    (root / "card.yaml").write_text(yaml.safe_dump(dict(card), sort_keys=False, allow_unicode=True, width=100),
                                    encoding="utf-8")
    (root / "items.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
