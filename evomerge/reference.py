"""What a key of a user's file is (`Key`), and docs/reference.md generated from the validators' own key tables.

Each validator describes its keys once, as a tuple of `Key`s next to the code that reads them (`space.SPACE_KEYS`,
`evalsets.CARD_KEYS`, `evalsets.ORIGIN_KEYS`, `evalsets.ITEM_FIELDS`; the constraint types are `verifiers.RULES`),
and reads its allowed keys, required keys, types and choices from that table. This module renders the same tables
as markdown, so the reference cannot drift from what is accepted:

    python -m evomerge.reference > docs/reference.md

(tests/test_reference.py checks that the committed file equals the generated one). Pure: no I/O but `main`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # a Key's default when the key must be given


@dataclass(frozen=True)
class Derived:
    """A default computed from other keys (e.g. a gene's init: the middle of its bounds), shown as its rule."""

    rule: str

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "true/false", list: "list", dict: "mapping"}


@dataclass(frozen=True)
class Key:
    """One key of a YAML mapping (or a JSON item): its name, type, default, a one-line doc and an example value as
    written in the file. `type` is a Python type or a tuple of them (float accepts integers; int refuses
    booleans); `shape` adds what a list or mapping holds; `choices` lists the accepted values; `default` is the
    value used when the key is absent (REQUIRED: it must be given; None: unset)."""

    name: str
    type: type | tuple[type, ...]
    doc: str
    example: str
    default: Any = None
    shape: str = ""
    choices: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def accepts(self, value: Any) -> bool:
        """Whether `value` has this key's type (and is one of its choices, when it has any)."""
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        ok = any(_is(value, t) for t in types)
        return ok and (not self.choices or value in self.choices)

    @property
    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        name = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        return f"{name} {self.shape}".strip()


def _is(value: Any, t: type) -> bool:
    if isinstance(value, bool):
        return t is bool
    if t is float:
        return isinstance(value, (int, float))
    return isinstance(value, t)


def names(keys: Iterable[Key]) -> set[str]:
    """The names of a table's keys."""
    return {k.name for k in keys}


def required(keys: Iterable[Key]) -> set[str]:
    """The names of a table's required keys."""
    return {k.name for k in keys if k.required}


def by_name(keys: Iterable[Key]) -> dict[str, Key]:
    return {k.name: k for k in keys}


# ---- rendering --------------------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(key: Key) -> str:
    if key.required:
        return "**required**"
    if key.default is None:
        return "unset"
    if isinstance(key.default, Derived):
        return key.default.rule
    if isinstance(key.default, bool):
        return f"`{str(key.default).lower()}`"
    if isinstance(key.default, str):
        return f'`"{key.default}"`' if key.default.strip() != key.default or not key.default else f"`{key.default}`"
    if isinstance(key.default, (tuple, list)) and not key.default:
        return "`[]`"
    if isinstance(key.default, Mapping) and not key.default:
        return "`{}`"
    return f"`{key.default}`"


def table(keys: Iterable[Key]) -> str:
    """A markdown table of keys: name, type, default, what it does, an example."""
    rows = ["| key | type | default | meaning | example |", "|---|---|---|---|---|"]
    for k in keys:
        doc = k.doc + (f" One of: {', '.join(f'`{c}`' for c in k.choices)}." if k.choices else "")
        rows.append(f"| `{k.name}` | {_cell(k.type_name)} | {_default(k)} | {_cell(doc)} | `{_cell(k.example)}` |")
    return "\n".join(rows)


def render() -> str:
    """docs/reference.md: every key of a search space, an eval-set card and each kind's item fields, plus the
    constraint types of instruction items, from the tables the validators read."""
    from evomerge.evalsets import CARD_KEYS, ITEM_FIELDS, ORIGIN_KEYS
    from evomerge.space import SPACE_KEYS, SPACE_SECTIONS
    from evomerge.verifiers import RULES

    out = ["# evomerge reference: search spaces and eval sets", "",
           "Generated from the validators' own key tables by `python -m evomerge.reference > docs/reference.md`;",
           "do not edit by hand (a test checks this file equals the generated one). A key not listed here is",
           "refused with the list of known keys. Examples are written as in the file (YAML for spaces and cards,",
           "JSON for items).", "",
           "## Search space (`search_spaces/*.yaml`)", "",
           "Relative paths resolve against the space file's directory. `evomerge space show SPACE.yaml` prints the",
           "dimensions a space expands to.", ""]
    for section, intro in SPACE_SECTIONS.items():
        out += [f"### `{section}`" if section else "### top level", "", intro, "", table(SPACE_KEYS[section]), ""]
    out += ["## Eval-set card (`eval_sets/NAME/card.yaml`)", "",
            "An eval set is a directory with `card.yaml` (what it measures, how prompts are built) and",
            "`items.jsonl` (one JSON object per line).", "", table(CARD_KEYS), "",
            "### `origin`", "", "Where the items came from; a search refuses a known benchmark's test split as its "
            "dev set (`--allow-test-splits` overrides).", "", table(ORIGIN_KEYS), "",
            "## Items (`eval_sets/NAME/items.jsonl`)", "",
            "Every item has the common fields; the card's kind adds its own. Any other field is a template field:",
            "the card's `prompt` reads it as `{field}` (a field the prompt never reads is warned about once per set).",
            ""]
    for kind, keys in ITEM_FIELDS.items():
        out += [f"### {'every item' if kind == '*' else f'kind `{kind}`'}", "", table(keys), ""]
    out += ["### Constraint types (`constraints` of `instruction` items)", "",
            'Each constraint is a mapping with a `type` and its arguments, e.g. `{"type": "words", "max": 50}`.', "",
            "| type | required arguments | optional arguments | keeps the constraint when |", "|---|---|---|---|"]
    for name, rule in RULES.items():
        req = ", ".join(f"`{a}` ({_TYPE_NAMES.get(t, t.__name__)})" for a, t in rule.required.items()) or "none"
        opt = ", ".join(f"`{a}` ({_TYPE_NAMES.get(t, t.__name__)})" for a, t in rule.optional.items()) or "none"
        need = f" (at least one of {', '.join(rule.needs_one_of)})" if rule.needs_one_of else ""
        out.append(f"| `{name}` | {req} | {opt}{need} | {_cell(rule.doc)} |")
    return "\n".join(out) + "\n"


def main() -> int:
    # through the package, not this __main__ copy: the validators' tables hold evomerge.reference's Key and Derived
    from evomerge import reference

    sys.stdout.write(reference.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
