"""Paired bootstrap intervals (stats.py) on cases whose answer is known: exact small cases, a large-sample normal
approximation, and the hypervolume difference reducing to a difference of means in one dimension."""

from __future__ import annotations

import math
import random

import pytest

from evomerge.stats import Interval, hypervolume_difference, mean_difference, objective_difference, paired_bootstrap


def test_a_constant_difference_has_a_zero_width_interval() -> None:
    rng = random.Random(0)
    b = [rng.random() for _ in range(50)]
    a = [x + 0.1 for x in b]  # every item 0.1 better: no draw of items can change the difference
    iv = mean_difference(a, b)
    assert iv.estimate == pytest.approx(0.1)
    assert iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1)
    assert iv.excludes_zero()
    assert mean_difference(b, b).as_dict() == {"estimate": 0.0, "low": 0.0, "high": 0.0, "level": 0.95,
                                               "resamples": 2000}


def test_two_items_give_the_exact_percentile_interval() -> None:
    # differences 1 and 0: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% quantiles of 2000 resamples are 0 and 1 (each end is drawn ~500 times)
    iv = mean_difference([1.0, 0.0], [0.0, 0.0])
    assert (iv.estimate, iv.low, iv.high) == (0.5, 0.0, 1.0)
    assert not iv.excludes_zero()


def test_matches_the_normal_approximation_on_a_large_sample() -> None:
    rng = random.Random(1)
    n = 3000
    b = [float(rng.random() < 0.5) for _ in range(n)]
    a = [float(rng.random() < 0.55) for _ in range(n)]  # independent 0/1 items, true difference 0.05
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n)
    iv = mean_difference(a, b, resamples=4000, seed=3)
    assert iv.estimate == pytest.approx(mean)
    assert iv.low == pytest.approx(mean - 1.96 * se, abs=0.15 * se)
    assert iv.high == pytest.approx(mean + 1.96 * se, abs=0.15 * se)


def test_pairing_removes_the_items_shared_difficulty() -> None:
    # item difficulty varies a lot, the two merges differ by a little on every item: paired, the difference is
    # clear; the same values compared as if unpaired (each merge's own standard error) would not tell
    rng = random.Random(2)
    difficulty = [rng.gauss(0, 1) for _ in range(40)]
    b = difficulty
    a = [x + 0.2 + rng.gauss(0, 0.05) for x in difficulty]
    iv = mean_difference(a, b)
    assert iv.excludes_zero() and iv.low > 0.15
    sd = math.sqrt(sum((x - sum(b) / 40) ** 2 for x in b) / 39)
    assert 1.96 * math.sqrt(2) * sd / math.sqrt(40) > 0.2  # an unpaired interval would include zero


def test_same_seed_same_interval_and_level() -> None:
    rng = random.Random(4)
    a, b = [rng.random() for _ in range(30)], [rng.random() for _ in range(30)]
    assert mean_difference(a, b, seed=5) == mean_difference(a, b, seed=5)
    assert mean_difference(a, b, seed=5) != mean_difference(a, b, seed=6)
    wide, narrow = mean_difference(a, b, level=0.99), mean_difference(a, b, level=0.5)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_objectives_are_weighted_means_of_item_sets_each_resampled_alike() -> None:
    a = {"s1": [1.0, 1.0, 0.0], "s2": [0.0, 0.0]}
    b = {"s1": [0.0, 1.0, 0.0], "s2": [0.0, 1.0]}
    iv = objective_difference(a, b, {"s1": 3.0, "s2": 1.0})
    assert iv.estimate == pytest.approx((3 * (2 / 3 - 1 / 3) + (0 - 0.5)) / 4)
    assert iv.low < iv.estimate < iv.high


def test_hypervolume_difference_in_one_dimension_is_the_difference_of_means() -> None:
    rng = random.Random(6)
    a = [float(rng.random() < 0.7) for _ in range(60)]
    b = [float(rng.random() < 0.5) for _ in range(60)]
    # one objective, one point per front, reference 0: each hypervolume is the point's mean
    hv = hypervolume_difference([{"items": a}], [{"items": b}], [{"items": 1.0}], [0.0], seed=7)
    md = mean_difference(a, b, seed=7)
    assert hv.estimate == pytest.approx(md.estimate)
    assert (hv.low, hv.high) == pytest.approx((md.low, md.high))


def test_hypervolume_difference_of_a_front_with_itself_is_zero_and_a_dominating_front_wins() -> None:
    rng = random.Random(8)

    def merge(p: float, q: float) -> dict[str, list[float]]:
        return {"x": [float(rng.random() < p) for _ in range(100)], "y": [float(rng.random() < q) for _ in range(100)]}

    front = [merge(0.8, 0.3), merge(0.4, 0.7)]
    objectives = [{"x": 1.0}, {"y": 1.0}]
    same = hypervolume_difference(front, front, objectives, [0.0, 0.0])
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    better = [{"x": [1.0] * 100, "y": [1.0] * 100}]  # (1, 1) dominates everything
    iv = hypervolume_difference(better, front, objectives, [0.0, 0.0])
    assert iv.excludes_zero() and iv.low > 0


def test_unpaired_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="same"):
        mean_difference([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="item sets"):
        paired_bootstrap([{"a": [1.0]}, {"b": [1.0]}], lambda m: 0.0)
    with pytest.raises(ValueError):
        mean_difference([], [])
    with pytest.raises(ValueError, match="reference"):
        hypervolume_difference([{"x": [1.0]}], [], [{"x": 1.0}], [0.0, 0.0])
    assert str(Interval(0.1, -0.05, 0.25)) == "+0.100 [-0.050, +0.250]"


def test_item_values_average_to_the_set_scores() -> None:
    from evomerge.scorers import (Verdict, instruction_items, multiple_choice_items, score_instructions,
                                  score_multiple_choice)

    logprobs, golds = [[-1.0, -2.0], [-3.0, -1.0], [-5.0, -5.0 + math.log(3)]], [0, 0, 1]
    per, agg = multiple_choice_items(logprobs, golds), score_multiple_choice(logprobs, golds)
    for metric in ("acc", "gold_prob"):
        assert sum(per[metric]) / len(golds) == pytest.approx(agg.metric(metric))
    assert per["acc"] == [1.0, 0.0, 1.0]
    verdicts = [Verdict((True, True), (True, True), True), Verdict((True, False), (True, True), False)]
    per, agg = instruction_items(verdicts), score_instructions(verdicts)
    assert per == {"prompt_acc": [1.0, 0.0], "prompt_acc_loose": [1.0, 1.0], "lang_acc": [1.0, 0.0]}
    for metric, values in per.items():
        assert sum(values) / 2 == pytest.approx(agg.metric(metric))


def test_vectorized_statistics_give_the_interval_of_one_call_per_resample() -> None:
    # the shipped comparisons pass vectorized=True; the per-resample path is the definition they must agree with
    from evomerge.pareto import hypervolume
    from evomerge.stats import objective_value

    rng = random.Random(9)

    def merge() -> dict[str, list[float]]:  # real-valued items in two item sets of different sizes
        return {"x": [rng.random() for _ in range(40)], "y": [rng.gauss(0.5, 0.2) for _ in range(70)]}

    a, b, c = merge(), merge(), merge()
    objective = {"x": 2.0, "y": 1.0}
    by_resample = paired_bootstrap(
        [a, b], lambda m: objective_value(m[0], objective) - objective_value(m[1], objective), seed=4, resamples=300)
    assert objective_difference(a, b, objective, seed=4, resamples=300) == by_resample
    objectives, reference = [{"x": 1.0}, {"y": 1.0}, objective], [0.0, 0.0, 0.0]

    def hv_diff(means):
        pts = [[objective_value(m, o) for o in objectives] for m in means]
        return hypervolume(pts[:2], reference) - hypervolume(pts[2:], reference)

    assert (hypervolume_difference([a, b], [c], objectives, reference, seed=4, resamples=300)
            == paired_bootstrap([a, b, c], hv_diff, seed=4, resamples=300))
    with pytest.raises(ValueError, match="one value per resample"):
        paired_bootstrap([a, b], lambda m: 0.0, vectorized=True)
