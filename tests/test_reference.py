"""docs/reference.md is generated from the validators' key tables (evomerge/reference.py), and those tables are
what the validators read: the committed file equals the generated one, a key added to a table is accepted, every
documented default is what omitting the key gives, and a card or an item made of the documented examples loads."""

from __future__ import annotations

import copy

import pytest
import yaml

from evomerge.errors import UserError
from evomerge.evalsets import CARD_KEYS, ITEM_FIELDS, parse_card, parse_item
from evomerge.reference import Derived, Key, render
from evomerge.space import SPACE_KEYS, parse_space

from conftest import REPO


def test_the_committed_reference_is_the_generated_one():
    committed = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    assert committed == render(), "regenerate it: python -m evomerge.reference > docs/reference.md"


def _space() -> dict:
    return {"models": [{"name": "base", "role": "base", "path": "b"}, {"name": "it", "role": "instruct", "path": "i"},
                       {"name": "eu", "role": "language", "language": "eu", "path": "e"}],
            "build": {"miniature": "m"},
            "merge": {"method": "task_arithmetic"},
            "genes": [{"parameter": "weight", "model": "eu", "low": 0, "high": 1},
                      {"parameter": "weight", "model": "it", "low": 0, "high": 1}],
            "seeds": [{"name": "s", "values": {"weight_eu": 0.5}}],
            "eval": {"sets": [{"path": "set"}]},
            "search": {}}


# a section that is a mapping of its own, filled with its required keys (first_pass and racing exclude each other)
STUBS = {"search.first_pass": {"items": 2}, "search.racing": {}}


def _space_for(section: str) -> dict:
    doc = _space()
    if section in STUBS:
        parent, name = section.rsplit(".", 1)
        _where(doc, parent)[0][name] = copy.deepcopy(STUBS[section])
    return doc


def _where(doc: dict, section: str) -> list[dict]:
    """The mappings of `doc` that a section's keys go into ("genes[]": every gene)."""
    if not section:
        return [doc]
    node: object = doc
    for part in section.split("."):
        node = node[part.removesuffix("[]")]
    return list(node) if section.endswith("[]") else [node]


@pytest.mark.parametrize("section", [s for s, keys in SPACE_KEYS.items()
                                     if any(not k.required and k.default is not None
                                            and not isinstance(k.default, Derived) for k in keys)])
def test_a_documented_space_default_is_what_omitting_the_key_gives(section, tmp_path):
    source = str(tmp_path / "space.yaml")
    for key in SPACE_KEYS[section]:
        if key.required or key.default is None or isinstance(key.default, Derived):
            continue
        omitted, written = _space_for(section), _space_for(section)
        for node in _where(omitted, section):
            node.pop(key.name, None)
        for node in _where(written, section):
            node[key.name] = copy.deepcopy(key.default) if not isinstance(key.default, tuple) else []
        assert parse_space(written, source) == parse_space(omitted, source), f"{section}.{key.name}"


CARD = {"name": "t", "language": "en", "kind": "multiple_choice", "metric": "acc", "prompt": "{q}"}


def test_a_documented_card_default_is_what_omitting_the_key_gives():
    plain = parse_card(dict(CARD), "card.yaml")
    for key in CARD_KEYS:
        if key.required or key.name == "prompt":  # prompt is required but for perplexity sets
            continue
        value = list(key.default) if isinstance(key.default, tuple) else copy.deepcopy(key.default)
        assert parse_card({**CARD, key.name: value}, "card.yaml") == plain, key.name


def test_a_card_and_items_written_from_the_examples_load():
    card = parse_card({k.name: yaml.safe_load(k.example) for k in CARD_KEYS}, "card.yaml")
    assert card.form == "letter" and card.chat_template and card.origin["dataset"] == "facebook/belebele"
    for kind, keys in ITEM_FIELDS.items():
        if kind == "*":
            continue
        item = {k.name: yaml.safe_load(k.example) for k in ITEM_FIELDS["*"] + keys}
        kind_card = parse_card({**CARD, "kind": kind, "metric": {"instruction": "prompt_acc", "perplexity":
                                                                "bits_per_byte"}.get(kind, "acc"),
                                "prompt": "{text}" if kind == "perplexity" else "{passage}"}, "card.yaml")
        parse_item({**item, "passage": "p"}, "items.jsonl:1", kind_card)
    for section, keys in SPACE_KEYS.items():
        for key in keys:
            assert key.accepts(yaml.safe_load(key.example)), f"{section}.{key.name}: example {key.example!r}"


def test_the_validators_read_their_keys_from_the_tables(monkeypatch, tmp_path):
    source = str(tmp_path / "space.yaml")
    doc = _space()
    doc["search"]["brand_new"] = 1
    with pytest.raises(UserError, match="search.brand_new"):
        parse_space(doc, source)
    monkeypatch.setitem(SPACE_KEYS, "search", SPACE_KEYS["search"] + (Key("brand_new", int, "A new key.", "1"),))
    parse_space(doc, source)  # one line in the table and the key is accepted
    monkeypatch.setattr("evomerge.evalsets.CARD_KEYS",
                        tuple(k for k in CARD_KEYS if k.name != "system"))
    with pytest.raises(UserError, match="system"):
        parse_card({**CARD, "system": "be brief"}, "card.yaml")
