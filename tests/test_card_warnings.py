"""Eval sets that load but are probably not what their author meant are warned about, once per set: item fields
the card's prompt never reads (evalsets.py), and items the model's tokenizer cannot read, mostly its unknown token
(text.py, on the miniature's word-level tokenizer)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from evomerge.evalsets import EvalSetWarning, load_evalset

from conftest import REPO

CARD = {"name": "t", "language": "en", "kind": "multiple_choice", "metric": "acc", "prompt": "Q: {question}"}


def _write(root: Path, card: dict, items: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "card.yaml").write_text(yaml.safe_dump(card))
    (root / "items.jsonl").write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
    return root


def _items(n: int, **extra) -> list[dict]:
    return [{"id": k, "split": "dev" if k % 2 else "holdout", "question": f"question {k}", "choices": ["a", "b"],
             "gold": k % 2, **extra} for k in range(n)]


def _load(path: Path) -> tuple[object, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning counted, not only the first per location
        es = load_evalset(path)
    return es, [w for w in caught if issubclass(w.category, EvalSetWarning)]


def test_item_fields_the_prompt_never_reads_are_warned_once_per_set(tmp_path):
    root = _write(tmp_path / "extra", CARD, _items(20, passage="a story", source_url="http://x"))
    _, caught = _load(root)
    assert len(caught) == 1  # one line for the set, not one per item
    text = str(caught[0].message)
    assert str(root) in text and "passage, source_url" in text and "{passage}" in text


def test_fields_the_prompt_reads_and_gold_aliases_are_not_warned_about(tmp_path):
    items = [{k: v for k, v in it.items() if k != "gold"} | {"label": it["gold"]} for it in _items(6)]
    _, caught = _load(_write(tmp_path / "label", CARD, items))  # lm-eval's label read as gold
    assert caught == []
    card = {**CARD, "prompt": "{passage}\n{question}\n{options}", "form": "letter"}
    _, caught = _load(_write(tmp_path / "letter", card, _items(6, passage="p")))
    assert caught == []


@pytest.mark.parametrize("path", sorted(p.parent for p in (REPO / "eval_sets").glob("*/card.yaml")),
                         ids=lambda p: p.name)
def test_shipped_sets_load_without_warnings(path):
    assert _load(path)[1] == []


def test_a_set_in_a_script_the_tokenizer_cannot_read_is_warned_once(miniature, tmp_path):
    from evomerge.backends.hf import HFBackend
    from evomerge.evaluation import prepare

    backend = HFBackend.load(miniature.instruct)
    # Cyrillic text: every word is the miniature tokenizer's <unk>
    items = [{"id": k, "split": "dev", "question": f"какая столица страны номер {k} ?",
              "choices": ["город один", "город два"], "gold": 0} for k in range(10)]
    odd = load_evalset(_write(tmp_path / "cyrillic", {**CARD, "name": "cyrillic"}, items))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare(backend, odd, "dev", None, 0)
        prepare(backend, load_evalset(REPO / "eval_sets" / "mini_xb_facts"), "dev", 8, 0)  # B's own words
    unknown = [str(w.message) for w in caught if "unknown tokens" in str(w.message)]
    assert len(unknown) == 1, unknown  # one for the Cyrillic set, none for B's
    assert "eval set cyrillic: 10 of 10 items" in unknown[0] and str(miniature.instruct) in unknown[0]
    assert backend.text.unknown_share("какая столица") == 1.0
    assert backend.text.unknown_share(odd.items[0].text(odd.card).replace("какая", "Pisk")) < 1.0
