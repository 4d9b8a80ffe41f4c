"""Racing over items (issue 16): a candidate's dev items are scored in batches, and after each batch a confidence
bound says whether it can still reach what the search cares about; one that cannot stops there (PRUNED, with the
bound that decided it). Pure: no torch, no I/O; the worker feeds it scores (`run`), the scheduler sets the bar (`bar`).

The bound. An objective is a weighted mean of terms, each a metric of one eval set. Most metrics are means over the
set's items of per-item values in [0, 1] (acc, gold_prob, prompt_acc, lang_acc, ...). After n of a set's N items,
with mean m, the mean over all N is bounded above by Wilson's score bound on the effective sample size of sampling
without replacement, n_eff = n (N - 1) / (N - n) (the finite-population correction; the variance of [0, 1] values
of mean m is at most m (1 - m), so the bound holds for graded values too), capped by what the unseen items could add
at most, (n m + N - n) / N. At n = N the bound is the exact mean. A metric without per-item values (corpus
perplexity, instruction-level accuracy, acc_norm) is bounded only once its set is complete (+inf before).
An objective's bound is the weighted mean of its terms' bounds; the scalar fitness's is the scalarization of the
objectives' bounds (a weighted mean and a minimum both grow with each argument).

Error rate: each term is bounded at alpha = (1 - confidence) / (looks x terms), Bonferroni over the batches it is
tested after and the terms it sums, so a candidate that would have made the cut is pruned with probability at most
1 - confidence (within the normal approximation Wilson's bound rests on; items are in the set's fixed order, which
`EvalSet.select` has already shuffled under the run's seed).

The bar ("beat"). Single objective: the k-th best fitness among the candidates the optimizer has been told (k =
`keep`): a candidate whose bound lies below it cannot enter the top k. Several objectives: the points of the front
of those candidates; a candidate whose bound vector one of them dominates cannot join the front. Only told
generations count, so that a resume, which replays the asks and tells in their order, hands every candidate the bar
the uninterrupted run gave it. A pruned candidate's optimizer value is its running estimate (the metrics over the
items scored), which lies under its bound and so under the bar: the optimizer ranks it below the candidates it lost
to, as the full score would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Iterable, Mapping, Sequence

from evomerge.fitness import Objective, metric_value, objectives, scalarize
from evomerge.pareto import dominates, non_dominated
from evomerge.scorers import LOWER_IS_BETTER, SetScores

Vector = tuple[float, ...]
# (items scored so far over all sets, each set's scores so far, each set's per-item values so far)
Batch = tuple[int, Mapping[str, SetScores], Mapping[str, Mapping[str, Sequence[float]]]]


@dataclass(frozen=True)
class Race:
    """What a candidate races with: its batches, the confidence of the bound, and the points it must not fall
    under (empty: nothing to prune against yet, but the running values are still recorded)."""

    batches: int
    confidence: float
    beat: tuple[Vector, ...] = ()
    multi: bool = False  # beat holds objective vectors (a front) rather than one fitness bar


@dataclass(frozen=True)
class Step:
    """The candidate after one batch: items scored, its running estimate and its upper bound (fitness, or the
    objective vector with several objectives)."""

    items: int
    estimate: Vector
    upper: Vector

    def as_dict(self) -> dict:
        return {"items": self.items, "estimate": list(self.estimate),
                "upper": [u if math.isfinite(u) else None for u in self.upper]}


def batch_ends(n: int, batches: int) -> list[int]:
    """Where each of `batches` batches over n items ends (the first at least one item; later ones may be empty
    when n < batches)."""
    return [max(1, round(n * (b + 1) / batches)) for b in range(batches)]


def z_score(race: Race, terms: int) -> float:
    """The one-sided normal quantile of each term's bound (Bonferroni over looks and terms)."""
    alpha = (1.0 - race.confidence) / (max(1, race.batches - 1) * max(1, terms))
    return NormalDist().inv_cdf(1.0 - alpha)


def upper_mean(mean: float, n: int, total: int, z: float) -> float:
    """Upper bound on the mean of `total` values in [0, 1] after seeing `n` of them (mean `mean`)."""
    if n >= total:
        return mean
    if n <= 0:
        return 1.0
    m = min(1.0, max(0.0, mean))
    n_eff = n * (total - 1) / (total - n)
    z2 = z * z
    wilson = (m + z2 / (2 * n_eff) + z * math.sqrt(m * (1 - m) / n_eff + z2 / (4 * n_eff * n_eff))) / (1 + z2 / n_eff)
    return min(wilson, (n * m + total - n) / total)


def _term_upper(scores: SetScores, items: Mapping[str, Sequence[float]], total: int, metric: str, z: float) -> float:
    if scores.n >= total:
        return metric_value(scores, metric)
    values = items.get(metric)
    if values is None or metric in LOWER_IS_BETTER:
        return math.inf
    # the set's own mean (weighted on a reduced set, whose anchors the bound then counts as equal items)
    return upper_mean(metric_value(scores, metric), len(values), total, z)


def bounds(scores: Mapping[str, SetScores], items: Mapping[str, Mapping[str, Sequence[float]]],
           totals: Mapping[str, int], objs: Sequence[Objective], weights: Mapping[str, float] | None, how: str,
           multi: bool, z: float) -> tuple[Vector, Vector]:
    """(running estimate, upper bound): the fitness (or objective vector) on the items scored, and its bound."""
    est = objectives(scores, objs)
    up = {}
    for o in objs:
        total = sum(t.weight for t in o.terms)
        up[o.name] = sum(t.weight * _term_upper(scores[t.set], items.get(t.set, {}), totals[t.set], t.metric, z)
                         for t in o.terms) / total
    if multi:
        return tuple(est[o.name] for o in objs), tuple(up[o.name] for o in objs)
    return (scalarize(est, weights, how),), (scalarize(up, weights, how),)


def beaten_by(upper: Vector, beat: Sequence[Vector]) -> Vector | None:
    """A point of `beat` that the bound cannot reach (one that dominates it), or None."""
    return next((p for p in beat if dominates(p, upper)), None)


def run(race: Race, batches: Iterable[Batch], totals: Mapping[str, int], objs: Sequence[Objective],
        weights: Mapping[str, float] | None, how: str) -> tuple[Mapping[str, SetScores], list[Step], str | None]:
    """Consume `batches` (lazily: nothing more is scored once the candidate is out) and return its scores so far,
    the steps, and why it was pruned (None: it ran to the end, its scores are the full ones)."""
    z = z_score(race, sum(len(o.terms) for o in objs))
    everything = sum(totals.values())
    steps: list[Step] = []
    scores: Mapping[str, SetScores] = {}
    for done, scores, items in batches:
        est, up = bounds(scores, items, totals, objs, weights, how, race.multi, z)
        steps.append(Step(done, est, up))
        if done >= everything:
            break
        p = beaten_by(up, race.beat)
        if p is not None:
            what = "a front point" if race.multi else "the bar"
            return scores, steps, (f"racing: upper bound {_fmt(up)} under {what} {_fmt(p)} after {done} of "
                                   f"{everything} items ({race.confidence:.0%} confidence)")
    return scores, steps, None


def bar(told: Sequence[Vector], keep: int, multi: bool) -> tuple[Vector, ...]:
    """The points a new candidate must not fall under: the front of `told` (several objectives), or the `keep`-th
    best fitness once there are `keep` (one objective)."""
    if multi:
        return tuple(told[i] for i in non_dominated(list(told)))
    ranked = sorted((v[0] for v in told), reverse=True)
    return ((ranked[keep - 1],),) if len(ranked) >= keep else ()


def _fmt(v: Vector) -> str:
    return ", ".join(f"{x:.4f}" for x in v) if len(v) > 1 else f"{v[0]:.4f}"
