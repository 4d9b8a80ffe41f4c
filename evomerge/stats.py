"""Paired bootstrap intervals for comparing merges scored on the same items. Pure (numpy only, imported lazily).

Two merges scored on the same holdout items differ partly because one is better and partly because of which items
happened to be drawn. A paired bootstrap estimates the second part: draw the items again with replacement (one
draw shared by every merge compared, so each item's difficulty cancels out of the difference), recompute the
statistic, repeat; the middle 95% of the recomputed statistics is the interval (the percentile interval). If it
excludes zero, the difference is larger than the item draw explains.

Items are grouped in "item sets" (an eval set's values of one metric, say `mini_xb_answers.prompt_acc`): each item
set is resampled on its own, with the same draw for every merge. A merge is described by a mapping item set ->
each item's value (the same items in the same order for every merge), and an objective by a mapping item set ->
weight: its value is the weighted mean of the item sets' means, as `fitness.objectives` computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

from evomerge.pareto import hypervolume

ItemScores = Mapping[str, Sequence[float]]  # item set -> each item's value, for one merge
Objective = Mapping[str, float]  # item set -> weight
RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A statistic on the full sample and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    level: float = LEVEL
    resamples: int = RESAMPLES

    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or wholly below zero (the difference is not item noise)."""
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level,
                "resamples": self.resamples}

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_bootstrap(merges: Sequence[ItemScores], statistic: Callable[[list[dict[str, Any]]], Any], *,
                     resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL,
                     vectorized: bool = False) -> Interval:
    """The interval of `statistic(means)`, where `means[k][s]` is merge k's mean over item set s.

    Every resample draws each item set's items with replacement once and uses that draw for every merge (the
    pairing); the draws depend only on `seed` and the item sets' sizes, so the same call gives the same interval.
    With `vectorized`, `statistic` is called once for all resamples, each mean an array over them (for statistics
    made of arithmetic that numpy applies elementwise, such as differences of weighted means), and returns an
    array; the interval is the same as calling it once per resample, only faster.
    """
    import numpy as np

    if not merges:
        raise ValueError("nothing to compare")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples} and {level}")
    names = sorted(merges[0])
    for k, m in enumerate(merges):
        if sorted(m) != names:
            raise ValueError(f"merge {k} has item sets {sorted(m)}, merge 0 has {names}: they must be scored alike")
        for s in names:
            if len(m[s]) != len(merges[0][s]) or not len(m[s]):
                raise ValueError(f"item set {s!r}: merge {k} has {len(m[s])} items, merge 0 {len(merges[0][s])}; "
                                 "a paired comparison needs the same (non-empty) items")
    draws = _draws(seed, resamples, tuple(len(merges[0][s]) for s in names))
    boot: dict[str, np.ndarray] = {}  # item set -> (merges, resamples) means over the resampled items
    for s, counts in zip(names, draws):
        values = np.array([m[s] for m in merges], dtype=np.float64)  # (merges, items)
        boot[s] = values @ counts / values.shape[1]
    full = [{s: float(np.mean(m[s])) for s in names} for m in merges]
    if vectorized:
        stats = np.asarray(statistic([{s: boot[s][k] for s in names} for k in range(len(merges))]), dtype=np.float64)
        if stats.shape != (resamples,):
            raise ValueError(f"a vectorized statistic must return one value per resample, got shape {stats.shape}")
    else:
        stats = np.array([statistic([{s: float(boot[s][k, r]) for s in names} for k in range(len(merges))])
                          for r in range(resamples)])
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return Interval(float(statistic(full)), float(low), float(high), level, resamples)


@lru_cache(maxsize=4)
def _draws(seed: int, resamples: int, sizes: tuple[int, ...]) -> tuple[Any, ...]:
    """Each item set's resampling counts, (items, resamples) as floats: column r says how often resample r drew
    each item. One generator per seed, item sets in order, so a comparison's draws depend only on the seed and the
    sizes; kept for the next comparison of the same shape (a quickstart makes about a hundred), since drawing them
    costs more than the comparison. Read-only: they are shared."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    out = []
    for n in sizes:
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).T.astype(np.float64)  # one draw per column
        counts.flags.writeable = False
        out.append(counts)
    return tuple(out)


def mean_difference(a: Sequence[float], b: Sequence[float], **kw) -> Interval:
    """mean(a) - mean(b) for two merges' values on the same items (item i of `a` and of `b` is the same item)."""
    return paired_bootstrap([{"items": a}, {"items": b}], lambda m: m[0]["items"] - m[1]["items"], vectorized=True,
                            **kw)


def objective_value(means: Mapping[str, float], objective: Objective) -> float:
    """An objective's value from item-set means: their weighted mean."""
    total = sum(objective.values())
    if total <= 0:
        raise ValueError("objective weights must sum to a positive number")
    return sum(w * means[s] for s, w in objective.items()) / total


def objective_difference(a: ItemScores, b: ItemScores, objective: Objective, **kw) -> Interval:
    """One objective of merge `a` minus the same objective of merge `b`, on the same items."""
    return paired_bootstrap([a, b], lambda m: objective_value(m[0], objective) - objective_value(m[1], objective),
                            vectorized=True, **kw)


def hypervolume_difference(front_a: Sequence[ItemScores], front_b: Sequence[ItemScores],
                           objectives: Sequence[Objective], reference: Sequence[float], **kw) -> Interval:
    """hypervolume(front_a) - hypervolume(front_b) over `objectives`, every merge of both fronts scored on the same
    items; the reference point stays fixed across resamples (so only the item draw varies)."""
    if len(reference) != len(objectives):
        raise ValueError(f"{len(objectives)} objectives but a reference of {len(reference)} coordinates")
    import numpy as np

    n_a = len(front_a)

    def hv_diff(means: list[dict[str, Any]]) -> Any:
        # every merge's objectives at once (arrays over the resamples), then the hypervolumes resample by resample
        pts = np.array([[objective_value(m, o) for o in objectives] for m in means], dtype=np.float64)
        if pts.ndim == 2:  # the full sample: one value per merge and objective
            return hypervolume(pts[:n_a].tolist(), reference) - hypervolume(pts[n_a:].tolist(), reference)
        per_resample = pts.transpose(2, 0, 1).tolist()  # (resamples, merges, objectives)
        return np.array([hypervolume(p[:n_a], reference) - hypervolume(p[n_a:], reference) for p in per_resample])

    return paired_bootstrap([*front_a, *front_b], hv_diff, vectorized=True, **kw)
