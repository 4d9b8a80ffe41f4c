"""Per-set scores -> named objectives -> a scalar (mean or min) or a vector."""

from __future__ import annotations

import pytest

from evomerge.errors import UserError
from evomerge.evalsets import Card
from evomerge.fitness import (
    Objective,
    Term,
    default_objectives,
    objectives,
    parse_objectives,
    scalar_fitness,
    scalarize,
    vector,
)
from evomerge.scorers import SetScores

SCORES = {
    "belebele_eu": SetScores({"acc": 0.5, "gold_prob": 0.4}, 10),
    "xsc_eu": SetScores({"acc": 0.7, "gold_prob": 0.6}, 10),
    "ins_eu": SetScores({"prompt_acc": 0.3, "inst_acc": 0.5, "lang_acc": 0.9}, 30),
    "flores_eu": SetScores({"bits_per_byte": 1.2}, 50),
    "ins_en": SetScores({"prompt_acc": 0.8, "lang_acc": 1.0}, 30),
}
CARDS = {
    "belebele_eu": Card("belebele_eu", "eu", "multiple_choice", "gold_prob"),
    "xsc_eu": Card("xsc_eu", "eu", "multiple_choice", "acc"),
    "ins_eu": Card("ins_eu", "eu", "instruction", "prompt_acc"),
    "flores_eu": Card("flores_eu", "eu", "perplexity", "bits_per_byte"),
    "ins_en": Card("ins_en", "en", "instruction", "prompt_acc"),
}


def test_objectives_are_weighted_means_and_lower_is_better_metrics_are_negated():
    spec = [Objective("eu_skill", (Term("belebele_eu", "gold_prob", 1.0), Term("xsc_eu", "gold_prob", 3.0))),
            Objective("eu_fluency", (Term("flores_eu", "bits_per_byte"),))]
    got = objectives(SCORES, spec)
    assert got["eu_skill"] == pytest.approx((0.4 + 3 * 0.6) / 4)
    assert got["eu_fluency"] == pytest.approx(-1.2)
    assert vector(got, spec) == [got["eu_skill"], got["eu_fluency"]]


def test_scalarize_mean_and_min():
    values = {"a": 0.2, "b": 0.8}
    assert scalarize(values) == pytest.approx(0.5)
    assert scalarize(values, {"a": 3.0, "b": 1.0}) == pytest.approx((0.6 + 0.8) / 4)
    assert scalarize(values, how="min") == 0.2
    with pytest.raises(ValueError):
        scalarize(values, how="median")
    with pytest.raises(ValueError):
        scalarize(values, {"a": 0.0, "b": 0.0})


def test_default_objectives_follow_the_cards():
    spec = {o.name: o for o in default_objectives(CARDS)}
    assert set(spec) == {"eu_skill", "eu_instructions", "eu_fidelity", "eu_fluency", "en_retention"}
    assert spec["eu_skill"].terms == (Term("belebele_eu", "gold_prob"), Term("xsc_eu", "acc"))
    assert spec["eu_fidelity"].terms == (Term("ins_eu", "lang_acc"),)
    values = objectives(SCORES, list(spec.values()))
    assert values["eu_skill"] == pytest.approx((0.4 + 0.7) / 2) and values["en_retention"] == pytest.approx(0.8)


def test_parse_objectives_validates_sets_metrics_and_weights():
    spec = parse_objectives({"eu_skill": [{"set": "belebele_eu"}, {"set": "xsc_eu", "metric": "acc_norm",
                                                                   "weight": 2}]}, "objectives", CARDS)
    assert spec[0].terms == (Term("belebele_eu", "gold_prob", 1.0), Term("xsc_eu", "acc_norm", 2.0))
    for raw, where in [({"x": [{"set": "nope"}]}, "objectives.x[0].set"),
                       ({"x": [{"set": "ins_eu", "metric": "acc"}]}, "objectives.x[0].metric"),
                       ({"x": [{"set": "ins_eu", "weight": -1}]}, "objectives.x[0].weight"),
                       ({"x": []}, "objectives.x"), ([], "objectives")]:
        with pytest.raises(UserError) as e:
            parse_objectives(raw, "objectives", CARDS)
        assert e.value.where == where


def test_scalar_fitness_is_the_weighted_mean_of_each_sets_metric():
    got = scalar_fitness({k: SCORES[k] for k in ("belebele_eu", "flores_eu")},
                         {"belebele_eu": "acc", "flores_eu": "bits_per_byte"}, {"belebele_eu": 1.0, "flores_eu": 1.0})
    assert got == pytest.approx((0.5 - 1.2) / 2)
