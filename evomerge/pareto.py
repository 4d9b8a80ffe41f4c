"""Pareto dominance, non-dominated subsets and hypervolume for maximized objectives. Pure Python (math only).

Points are sequences of floats, every coordinate higher-is-better. The hypervolume of a set is the volume of
the union of the boxes spanned between a reference point (worse than or equal to every point in every
coordinate) and each point: larger means the set covers more of the trade-off. It is computed exactly by slicing
along the first objective (each slab between two consecutive first coordinates is the hypervolume, one dimension
lower, of the points at or beyond it), which is fast for the tens of points a quickstart compares.
"""

from __future__ import annotations

import math
from typing import Sequence

Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """Whether `a` is at least as good as `b` in every objective and strictly better in one."""
    if len(a) != len(b):
        raise ValueError(f"points of different dimension: {len(a)} and {len(b)}")
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def non_dominated(points: Sequence[Point]) -> list[int]:
    """Indices of the points no other point dominates, in input order (equal points are all kept)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """The volume dominated by `points` and bounded below by `reference` (points not better than the reference
    in every coordinate add nothing)."""
    dim = len(reference)
    if any(len(p) != dim for p in points):
        raise ValueError("every point needs as many coordinates as the reference")
    inside = [tuple(p) for p in points if all(x > r for x, r in zip(p, reference))]
    return _hv(inside, tuple(reference))


def _hv(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return max(p[0] for p in points) - ref[0]
    # slabs along the first coordinate, from the best point down: a slab [x_next, x] is covered by every point
    # whose first coordinate is >= x, so its area is the lower-dimensional hypervolume of those points
    order = sorted(points, key=lambda p: -p[0])
    total = 0.0
    reach = -math.inf  # in two dimensions the slab's one-dimensional volume is the running maximum (no recursion)
    for k, p in enumerate(order):
        lower = order[k + 1][0] if k + 1 < len(order) else ref[0]
        reach = max(reach, p[1])
        if p[0] > lower:
            below = reach - ref[1] if len(ref) == 2 else _hv([q[1:] for q in order[: k + 1]], ref[1:])
            total += (p[0] - lower) * below
    return total


def dominating_all(candidates: Sequence[Point], others: Sequence[Point]) -> list[int]:
    """Indices of the candidates that dominate every point of `others` (none when `others` is empty)."""
    if not others:
        return []
    return [i for i, c in enumerate(candidates) if all(dominates(c, o) for o in others)]
