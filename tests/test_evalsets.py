"""Eval-set cards and items: every shipped set validates; bad cards and items are refused with the field named;
seeded subsets and few-shot examples are the same on every call; the test-split guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evomerge.errors import UserError
from evomerge.evalsets import guard_test_splits, load_evalset, write_evalset
from evomerge.verifiers import check

from conftest import REPO

SHIPPED = sorted(p.parent for p in (REPO / "eval_sets").glob("*/card.yaml"))
INSTRUCTION_LANGS = ("eu", "ca", "gl", "es", "en")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_eval_set_validates(path):
    es = load_evalset(path)
    assert es.name == path.name
    assert es.select("dev") and es.select("holdout")
    assert not set(it.id for it in es.select("dev")) & set(it.id for it in es.select("holdout"))


@pytest.mark.parametrize("lang", INSTRUCTION_LANGS)
def test_hand_written_instruction_sets(lang):
    es = load_evalset(REPO / "eval_sets" / f"instructions_{lang}")
    assert es.card.kind == "instruction" and es.card.language == lang
    assert len(es.select("dev")) >= 30
    types = set()
    for it in es.items:
        assert it.language == lang and it.constraints and it.reference
        for c in it.constraints:
            assert check(c, it.reference), (it.id, c)  # the reference answer keeps every constraint
            types.add(c.type)
    assert len(types) >= 20  # a broad mix of constraint types per language
    assert len({it.fields["prompt"] for it in es.items}) == len(es.items)


def _write(tmp: Path, card: dict, items: list[dict]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "card.yaml").write_text(yaml.safe_dump(card))
    (tmp / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    return tmp


MC_CARD = {"name": "t", "language": "en", "kind": "multiple_choice", "metric": "acc", "prompt": "Q: {q}"}


def _mc_items(n: int = 6) -> list[dict]:
    return [{"id": f"i{k}", "split": "dev" if k % 2 else "holdout", "q": f"question {k}", "choices": ["a", "b", "c"],
             "gold": k % 3} for k in range(n)]


@pytest.mark.parametrize("card_patch,item_patch,where", [
    ({"colour": "red"}, {}, "colour"),
    ({"kind": "essay"}, {}, "kind"),
    ({"metric": "bits_per_byte"}, {}, "metric"),
    ({"form": "emoji"}, {}, "form"),
    ({"form": "letter"}, {}, "prompt: form: letter scores the letters"),
    ({"few_shot": -1}, {}, "few_shot"),
    ({"chat_template": "yes"}, {}, "chat_template"),
    ({"origin": {"datset": "x"}}, {}, "origin.datset"),
    ({}, {"gold": 3}, "gold"),
    ({}, {"choices": ["only one"]}, "choices"),
    ({}, {"split": "test"}, "split"),
    ({}, {"q": None, "question": "renamed"}, None),
])
def test_bad_cards_and_items_are_refused(tmp_path, card_patch, item_patch, where):
    items = _mc_items()
    items[0].update(item_patch)
    if item_patch.get("q", "") is None:
        del items[0]["q"]
    with pytest.raises(UserError) as e:
        load_evalset(_write(tmp_path / "s", {**MC_CARD, **card_patch}, items))
    assert (where or "needs field 'q'") in str(e.value)


@pytest.mark.parametrize("prompt,fix", [("Q: {{question}}\nA:", "write {question}"),
                                        ("Q: {{ q }}", "write {q}"),
                                        ("{q}\n{% for c in choices %}{{c}}\n{% endfor %}", "{options}")])
def test_lm_eval_jinja_prompts_are_refused_with_the_fix(tmp_path, prompt, fix):
    with pytest.raises(UserError) as e:
        load_evalset(_write(tmp_path / "s", {**MC_CARD, "prompt": prompt}, _mc_items()))
    message = str(e.value)
    assert "card.yaml: prompt" in message and "lm-eval's Jinja" in message and fix in message
    assert "\n" not in message  # one line


def test_lm_eval_label_or_answer_is_read_as_gold(tmp_path):
    items = _mc_items()
    for k, it in enumerate(items):
        it[("label", "answer", "label")[k % 3]] = str(it.pop("gold")) if k == 1 else it.pop("gold")
    es = load_evalset(_write(tmp_path / "s", MC_CARD, items))
    assert [it.gold for it in es.items] == [k % 3 for k in range(len(items))]
    del items[0]["label"]
    with pytest.raises(UserError, match=r"items.jsonl:1: gold: missing .*`label`"):
        load_evalset(_write(tmp_path / "t", MC_CARD, items))
    items[0]["label"] = "first"  # not an index: named as missing
    with pytest.raises(UserError, match="gold: missing"):
        load_evalset(_write(tmp_path / "u", MC_CARD, items))


def test_duplicate_ids_and_bad_constraints_are_refused(tmp_path):
    items = _mc_items()
    items[1]["id"] = items[0]["id"]
    with pytest.raises(UserError, match="duplicate id"):
        load_evalset(_write(tmp_path / "dup", MC_CARD, items))
    card = {"name": "i", "language": "es", "kind": "instruction", "metric": "prompt_acc", "prompt": "{prompt}"}
    bad = [{"id": 1, "split": "dev", "prompt": "Hola", "constraints": [{"type": "words", "maximum": 3}]}]
    with pytest.raises(UserError, match=r"items.jsonl:1: constraints\[0\]: maximum"):
        load_evalset(_write(tmp_path / "ins", card, bad))


def test_seeded_subset_is_stable_and_within_the_split(tmp_path):
    es = load_evalset(_write(tmp_path / "s", MC_CARD, _mc_items(40)))
    a, b = es.select("dev", 5, seed=3), es.select("dev", 5, seed=3)
    assert a == b and len(a) == 5 and all(it.split == "dev" for it in a)
    assert es.select("dev", 5, seed=4) != a
    assert len(es.select("dev", 1000)) == 20


def test_letter_form_lists_options(tmp_path):
    card = {**MC_CARD, "form": "letter", "prompt": "{q}\n{options}\nAnswer:"}
    es = load_evalset(_write(tmp_path / "s", card, _mc_items()))
    item = es.items[0]
    assert item.prompt(es.card) == "question 0\nA: a\nB: b\nC: c\nAnswer:"
    assert item.continuations(es.card) == ("A", "B", "C") and item.answer(es.card) == "A"


def test_few_shot_examples_are_seeded_and_prefer_the_fewshot_split(tmp_path):
    items = _mc_items(10) + [{"id": f"f{k}", "split": "fewshot", "q": "x", "choices": ["a", "b"], "gold": 0}
                             for k in range(4)]
    es = load_evalset(_write(tmp_path / "s", {**MC_CARD, "few_shot": 3}, items))
    item = es.items[0]
    shots = es.shots(item, seed=0)
    assert shots == es.shots(item, seed=0) and len(shots) == 3
    assert all(s.split == "fewshot" for s in shots)
    es2 = load_evalset(_write(tmp_path / "t", {**MC_CARD, "few_shot": 2}, _mc_items(10)))
    dev_item = es2.select("dev")[0]
    assert all(s.split == "dev" and s.id != dev_item.id for s in es2.shots(dev_item))
    with pytest.raises(UserError, match="few_shot is 9"):
        load_evalset(_write(tmp_path / "u", {**MC_CARD, "few_shot": 9}, _mc_items(10))).shots(dev_item)


def test_guard_refuses_a_benchmark_test_split_unless_allowed(tmp_path):
    belebele = {**MC_CARD, "name": "bb", "origin": {"dataset": "facebook/belebele", "dev_split": "test"}}
    xsc = {**MC_CARD, "name": "xsc", "origin": {"dataset": "juletxara/xstory_cloze", "dev_split": "train",
                                                 "holdout_split": "eval"}}
    marked = {**MC_CARD, "name": "own", "origin": {"test_split": True}}
    sets = {n: load_evalset(_write(tmp_path / n, c, _mc_items())) for n, c in
            (("bb", belebele), ("xsc", xsc), ("own", marked))}
    guard_test_splits([sets["xsc"]])  # a train split is fine
    for name in ("bb", "own"):
        with pytest.raises(UserError, match="allow-test-splits"):
            guard_test_splits([sets["xsc"], sets[name]])
        guard_test_splits([sets[name]], allow=True)


def test_write_evalset_validates_before_writing(tmp_path):
    with pytest.raises(UserError, match="gold"):
        write_evalset(tmp_path / "w", MC_CARD, [{"id": 1, "split": "dev", "q": "x", "choices": ["a", "b"], "gold": 5}])
    assert not (tmp_path / "w").exists()
    write_evalset(tmp_path / "w", MC_CARD, _mc_items())
    assert len(load_evalset(tmp_path / "w").items) == 6
