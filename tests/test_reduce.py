"""Reduced eval sets (reduce.py, `evomerge evalset reduce`): anchors and weights on known cases, the weighted means
of the scorers (all weights 1: lm-eval's numbers bit for bit), and the command end to end on a shipped set with
per-item records written here in `evomerge eval --per-item`'s schema (no model needed)."""

from __future__ import annotations

import json
import math
import random

import pytest

from conftest import REPO
from evomerge.cli import main
from evomerge.evalsets import load_evalset, parse_card, parse_item
from evomerge.errors import UserError
from evomerge.reduce import item_value, loo_check, pick_anchors
from evomerge.scorers import (Verdict, _argmax, choice_probs, score_instructions, score_multiple_choice,
                              score_perplexity)

FACTS = REPO / "eval_sets" / "mini_xb_facts"  # multiple choice, gold_prob, 24 dev and 40 holdout items


def test_two_blocks_of_identical_items_give_two_anchors_weighted_by_block_size_and_an_exact_estimate():
    ids = [f"i{j}" for j in range(10)]
    values = [[1.0] * 6 + [0.0] * 4, [0.2] * 6 + [0.9] * 4, [0.5] * 6 + [0.5] * 4]
    anchors = pick_anchors(values, ids, 2)
    assert anchors.ids == ("i0", "i6") and anchors.weights == (6, 4)
    new = dict(zip(ids, [0.3] * 6 + [0.8] * 4))  # a model the anchors never saw, alike within each block
    assert anchors.estimate(new) == pytest.approx(sum(new.values()) / 10, abs=1e-12)
    check = loo_check(values, 2)
    assert check.mean_error == pytest.approx(0, abs=1e-12) and check.random_error > 0.05


def test_fewer_distinct_items_than_anchors_split_the_largest_cluster():
    values = [[1.0] * 7 + [0.0] * 3] * 3  # two distinct value vectors, four anchors asked for
    anchors = pick_anchors(values, [str(j) for j in range(10)], 4)
    assert len(anchors.ids) == 4 and sum(anchors.weights) == 10 and len(set(anchors.ids)) == 4
    assert sorted(anchors.weights) == [2, 2, 3, 3]  # 7 -> 3 + 4 -> 3 + 2 + 2; the 3 alike items stay one
    assert pick_anchors(values, [str(j) for j in range(10)], 4) == anchors  # seeded: the same anchors again


def test_all_weights_1_give_lm_evals_plain_means_bit_for_bit_and_a_weight_counts_as_copies():
    rng = random.Random(0)
    n = 97
    lps = [[rng.uniform(-9, 0) for _ in range(4)] for _ in range(n)]
    golds = [rng.randrange(4) for _ in range(n)]
    choices = [[rng.choice(["a", "bb", "ccc é"]) for _ in range(4)] for _ in range(n)]
    plain = {"acc": sum(_argmax(lp) == g for lp, g in zip(lps, golds)) / n,  # the scorer before weights
             "acc_norm": sum(_argmax([x / len(c) for x, c in zip(lp, cs)]) == g
                             for lp, cs, g in zip(lps, choices, golds)) / n,
             "acc_bytes": sum(_argmax([x / len(c.encode()) for x, c in zip(lp, cs)]) == g
                              for lp, cs, g in zip(lps, choices, golds)) / n,
             "gold_prob": sum(choice_probs(lp)[g] for lp, g in zip(lps, golds)) / n}
    assert score_multiple_choice(lps, golds, choices).values == plain
    assert score_multiple_choice(lps, golds, choices, [1.0] * n).values == plain
    verdicts = [Verdict(tuple(rng.random() < 0.6 for _ in range(rng.randrange(3))),
                        tuple(rng.random() < 0.7 for _ in range(2)), rng.random() < 0.8) for _ in range(n)]
    assert score_instructions(verdicts, [1.0] * n) == score_instructions(verdicts)
    assert score_instructions(verdicts).values["prompt_acc"] == sum(all(v.strict) for v in verdicts) / n
    texts = ["ab cd", "é f", "ghi"]
    assert score_perplexity([-3.1, -2.7, -5.3], texts, [1.0] * 3) == score_perplexity([-3.1, -2.7, -5.3], texts)
    twice = score_multiple_choice(lps[:3] + lps[:1], golds[:3] + golds[:1], choices[:3] + choices[:1]).values
    for k, v in score_multiple_choice(lps[:3], golds[:3], choices[:3], [2, 1, 1]).values.items():
        assert v == pytest.approx(twice[k], abs=1e-15)
    with pytest.raises(ValueError, match="one weight per item"):
        score_multiple_choice(lps, golds, choices, [1.0] * (n - 1))


def test_an_item_weight_must_be_a_positive_number():
    card = parse_card({"name": "t", "language": "en", "kind": "perplexity", "metric": "bits_per_byte"}, "card")
    assert parse_item({"id": 1, "split": "dev", "text": "x", "weight": 2.5}, "i", card).weight == 2.5
    for bad in (0, -1, "2", True, float("inf")):
        with pytest.raises(UserError, match="weight"):
            parse_item({"id": 1, "split": "dev", "text": "x", "weight": bad}, "i", card)


def test_instruction_record_values_follow_the_scorer():
    rec = {"set": "s", "id": "a", "language_ok": True, "correct": False,
           "constraints": [{"type": "words", "max": 5, "strict": True, "loose": True},
                           {"type": "words", "min": 9, "strict": False, "loose": True}]}
    assert (item_value(rec, "instruction", "prompt_acc"), item_value(rec, "instruction", "prompt_acc_loose"),
            item_value(rec, "instruction", "lang_acc")) == (0.0, 1.0, 1.0)


def _records(path, set_name, probs):
    """`evomerge eval --per-item` lines of FACTS' dev items, the gold choice at probability probs[id]."""
    rows, es = [], load_evalset(FACTS)
    for it in es.select("dev"):
        p, n = probs[it.id], len(it.choices)
        lls = [math.log(p) if c == it.gold else math.log((1 - p) / (n - 1)) for c in range(n)]
        rows.append({"set": set_name, "id": it.id, "prompt": it.prompt(es.card),
                     "choices": list(it.choices), "loglikelihoods": lls, "gold": it.gold, "chosen": 0,
                     "chosen_norm": 0, "correct": False, "correct_norm": False, "gold_prob": p})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_reduce_command_writes_a_weighted_set_whose_score_is_the_full_estimate(tmp_path, capsys):
    from evomerge.evaluation import ChoiceSet, _scored, item_weights

    dev = [it.id for it in load_evalset(FACTS).select("dev")]
    group = {i: 0 if k < 12 else 1 if k < 18 else 2 for k, i in enumerate(dev)}  # three kinds of item: 12, 6, 6
    levels = [(0.9, 0.3, 0.6), (0.5, 0.8, 0.2), (0.7, 0.7, 0.1), (0.4, 0.2, 0.95)]
    files = [_records(tmp_path / f"r{r}.jsonl", "mini_xb_facts", {i: lv[group[i]] for i in dev})
             for r, lv in enumerate(levels)]
    out = tmp_path / "facts_3"
    assert main(["evalset", "reduce", str(FACTS), "--responses", *map(str, files), "--items", "3",
                 "--out", str(out)]) == 0
    assert "3 of 24 dev items" in capsys.readouterr().out
    reduced = load_evalset(out)
    anchors = reduced.select("dev")
    assert sorted(it.weight for it in anchors) == [6, 6, 12] and sorted(group[it.id] for it in anchors) == [0, 1, 2]
    assert len(reduced.select("holdout")) == len(load_evalset(FACTS).select("holdout"))
    assert reduced.card == load_evalset(FACTS).card  # the same card (metric gold_prob is the card's)
    est = json.loads((out / "estimator.json").read_text())
    assert est["metric"] == "gold_prob" and est["items"] == 24 and len(est["responders"]) == 4
    assert est["loo_mean_abs_error"] == pytest.approx(0, abs=1e-9) and est["random_subset_mean_abs_error"] > 0.01
    # scoring the reduced set (as a search does) gives a new model's full-set mean, not the anchors' plain mean
    new = {0: 0.35, 1: 0.9, 2: 0.5}
    lls, offsets = [], [0]
    for it in anchors:
        p = new[group[it.id]]
        lls += [math.log(p) if c == it.gold else math.log((1 - p) / 3) for c in range(4)]
        offsets.append(len(lls))
    prepared = ChoiceSet("mini_xb_facts", "gold_prob", (), tuple(offsets), tuple(it.gold for it in anchors),
                         tuple(it.choices for it in anchors), tuple(it.id for it in anchors), (), item_weights(anchors))
    full = sum(new[group[i]] for i in dev) / 24
    assert _scored(prepared, lls)[0].metric("gold_prob") == pytest.approx(full, abs=1e-12)
    assert sum(new.values()) / 3 != pytest.approx(full, abs=1e-3)


def test_reduce_refuses_records_of_another_set_and_too_many_anchors(tmp_path, capsys):
    dev = [it.id for it in load_evalset(FACTS).select("dev")]
    files = [str(_records(tmp_path / f"r{r}.jsonl", "mini_xa_chat", {i: 0.5 for i in dev})) for r in range(3)]
    argv = ["evalset", "reduce", str(FACTS), "--responses", *files, "--out", str(tmp_path / "o")]
    assert main([*argv, "--items", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no records of set 'mini_xb_facts' (it holds mini_xa_chat)" in err and "\n" not in err
    assert main([*argv, "--items", "24"]) == 2
    assert "24 anchors of 24 dev items" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
