"""Pure metrics."""

import math

import pytest

from evomerge.fitness import scalar_fitness
from evomerge.scorers import SetScores, choice_probs, score_multiple_choice


def test_choice_probs_are_a_softmax():
    p = choice_probs([math.log(1), math.log(3)])
    assert p == pytest.approx([0.25, 0.75])


def test_multiple_choice_scores():
    s = score_multiple_choice([[-1.0, -2.0], [-3.0, -1.0], [-5.0, -5.0 + math.log(3)]], [0, 0, 1])
    assert s.metric("acc") == pytest.approx(2 / 3)
    e = math.exp
    expected = (e(-1) / (e(-1) + e(-2)) + e(-3) / (e(-3) + e(-1)) + 0.75) / 3
    assert s.metric("gold_prob") == pytest.approx(expected)
    assert s.n == 3


def test_scalar_fitness_is_a_weighted_mean_of_each_sets_metric():
    scores = {"a": SetScores({"acc": 1.0, "gold_prob": 0.5}, 4), "b": SetScores({"acc": 0.0, "gold_prob": 0.2}, 4)}
    assert scalar_fitness(scores, {"a": "acc", "b": "gold_prob"}, {"a": 1.0, "b": 3.0}) == pytest.approx((1.0 + 0.6) / 4)
