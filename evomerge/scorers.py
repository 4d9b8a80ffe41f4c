"""Pure metrics over per-choice log-likelihoods (no torch): accuracy and the gold choice's renormalized probability.

`acc` is lm-eval-harness's: argmax over choices of the summed log-probability of the continuation tokens.
`gold_prob` is the probability of the gold choice renormalized over the choices: smoother than 0/1 accuracy, so
candidates that differ a little are ranked apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class SetScores:
    """Scores of one eval set: every metric, and the number of items."""

    acc: float
    gold_prob: float
    n: int

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


def choice_probs(logprobs: Sequence[float]) -> list[float]:
    """Softmax over the choices' log-likelihoods."""
    top = max(logprobs)
    exps = [math.exp(lp - top) for lp in logprobs]
    total = sum(exps)
    return [e / total for e in exps]


def score_multiple_choice(logprobs: Sequence[Sequence[float]], golds: Sequence[int]) -> SetScores:
    """Mean accuracy and mean gold probability over items."""
    if len(logprobs) != len(golds) or not golds:
        raise ValueError("need one list of choice log-likelihoods per item")
    acc = sum(int(max(range(len(lp)), key=lambda i: lp[i]) == g) for lp, g in zip(logprobs, golds)) / len(golds)
    prob = sum(choice_probs(lp)[g] for lp, g in zip(logprobs, golds)) / len(golds)
    return SetScores(acc, prob, len(golds))
