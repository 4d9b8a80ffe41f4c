"""Per-set scores -> one fitness value (higher is better). Pure.

The fitness is the weighted mean of each set's headline metric (its card's `metric`). A failed candidate has no
fitness: it is recorded as a failed trial with its reason, and the optimizer is told the worst value (optimizer.py).
"""

from __future__ import annotations

from typing import Mapping

from evomerge.scorers import SetScores


def scalar_fitness(scores: Mapping[str, SetScores], metrics: Mapping[str, str], weights: Mapping[str, float]) -> float:
    """Weighted mean over sets of `scores[set].metric(metrics[set])`."""
    total = sum(weights[name] for name in scores)
    if total <= 0:
        raise ValueError("eval-set weights must sum to a positive number")
    return sum(weights[name] * s.metric(metrics[name]) for name, s in scores.items()) / total
