"""Pure metrics (no torch): multiple choice from per-choice log-likelihoods, bits per byte from text log-likelihoods,
instruction following from per-constraint verdicts.

Multiple choice follows lm-eval-harness exactly: `acc` is the argmax over choices of the summed log-probability of
the continuation tokens; `acc_norm` divides each by the choice's length in characters and `acc_bytes` by its length
in UTF-8 bytes (the choice text without the target delimiter); ties go to the first choice (numpy's argmax).
`gold_prob` is the gold choice's probability renormalized over the choices: smoother than 0/1 accuracy, so
candidates that differ a little are ranked apart.

Perplexity follows lm-eval-harness's `loglikelihood_rolling` aggregation: corpus-level, i.e. total negative
log-likelihood over total bytes (or words), not a mean of per-text values.

Every scorer takes optional per-item `weights`: an item of weight w counts as w items (a reduced set's anchor
stands for its cluster, reduce.py). Without weights, or with all weights 1, the numbers are exactly lm-eval's:
a weight multiplies before the sums, and 1 * x is x.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

MULTIPLE_CHOICE_METRICS = ("acc", "acc_norm", "acc_bytes", "gold_prob")
PERPLEXITY_METRICS = ("bits_per_byte", "byte_perplexity", "word_perplexity")
INSTRUCTION_METRICS = ("prompt_acc", "inst_acc", "prompt_acc_loose", "inst_acc_loose", "lang_acc")
METRICS = {"multiple_choice": MULTIPLE_CHOICE_METRICS, "perplexity": PERPLEXITY_METRICS,
           "instruction": INSTRUCTION_METRICS}
LOWER_IS_BETTER = frozenset(PERPLEXITY_METRICS)
# the metrics that are means over items, by kind (the others are ratios over constraints, bytes or words): what
# `multiple_choice_items`/`instruction_items` give item by item, and what a reduced set estimates (reduce.py)
ITEM_MEAN_METRICS = {"multiple_choice": MULTIPLE_CHOICE_METRICS,
                     "instruction": ("prompt_acc", "prompt_acc_loose", "lang_acc")}


@dataclass(frozen=True)
class SetScores:
    """Scores of one eval set: every metric of its kind by name, and the number of items scored."""

    values: dict[str, float] = field(default_factory=dict)
    n: int = 0

    def metric(self, name: str) -> float:
        """One metric's value (KeyError names the metrics there are)."""
        try:
            return float(self.values[name])
        except KeyError:
            raise KeyError(f"no metric {name!r}; have {', '.join(self.values)}") from None

    def as_dict(self) -> dict[str, float]:
        """Flat JSON-ready form: every metric, and n."""
        return {**self.values, "n": self.n}


def _argmax(xs: Sequence[float]) -> int:
    """Index of the first maximum (numpy's argmax rule, which lm-eval-harness uses)."""
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def choice_probs(logprobs: Sequence[float]) -> list[float]:
    """Softmax over the choices' log-likelihoods."""
    top = max(logprobs)
    exps = [math.exp(lp - top) for lp in logprobs]
    total = sum(exps)
    return [e / total for e in exps]


def _weights(weights: Sequence[float] | None, n: int) -> Sequence[float]:
    """Per-item weights, all 1 when none are given (checked: one per item)."""
    if weights is None:
        return [1] * n
    if len(weights) != n:
        raise ValueError(f"need one weight per item ({len(weights)} weights for {n} items)")
    return weights


def _mean(xs: Sequence[float], ws: Sequence[float]) -> float:
    """Weighted mean over items; all weights 1: sum(xs) / n, bit for bit."""
    return sum(w * x for w, x in zip(ws, xs)) / sum(ws)


def score_multiple_choice(logprobs: Sequence[Sequence[float]], golds: Sequence[int],
                          choices: Sequence[Sequence[str]] | None = None,
                          weights: Sequence[float] | None = None) -> SetScores:
    """Mean acc and gold_prob over items; with the choice texts also acc_norm and acc_bytes; with `weights`, means
    that count item i weights[i] times."""
    if len(logprobs) != len(golds) or not golds:
        raise ValueError("need one list of choice log-likelihoods per item")
    n = len(golds)
    ws = _weights(weights, n)
    values = {"acc": _mean([_argmax(lp) == g for lp, g in zip(logprobs, golds)], ws)}
    if choices is not None:
        if len(choices) != n or any(len(c) != len(lp) for c, lp in zip(choices, logprobs)):
            raise ValueError("need the choice texts of every item")
        values["acc_norm"] = _mean([_argmax([x / len(c) for x, c in zip(lp, cs)]) == g
                                    for lp, cs, g in zip(logprobs, choices, golds)], ws)
        values["acc_bytes"] = _mean([_argmax([x / len(c.encode("utf-8")) for x, c in zip(lp, cs)]) == g
                                     for lp, cs, g in zip(logprobs, choices, golds)], ws)
    values["gold_prob"] = _mean([choice_probs(lp)[g] for lp, g in zip(logprobs, golds)], ws)
    return SetScores(values, n)


def multiple_choice_items(logprobs: Sequence[Sequence[float]], golds: Sequence[int]) -> dict[str, list[float]]:
    """Each item's `acc` (0 or 1) and `gold_prob`: the values `score_multiple_choice` averages, item by item, for
    paired comparisons of two models on the same items (stats.py)."""
    if len(logprobs) != len(golds) or not golds:
        raise ValueError("need one list of choice log-likelihoods per item")
    return {"acc": [float(_argmax(lp) == g) for lp, g in zip(logprobs, golds)],
            "gold_prob": [choice_probs(lp)[g] for lp, g in zip(logprobs, golds)]}


def multiple_choice_picks(logprobs: Sequence[Sequence[float]],
                          choices: Sequence[Sequence[str]]) -> list[tuple[int, int]]:
    """Each item's picked choice under `acc` (highest log-likelihood) and under `acc_norm` (highest log-likelihood
    per character), with `score_multiple_choice`'s rules (ties to the first)."""
    return [(_argmax(lp), _argmax([x / len(c) for x, c in zip(lp, cs)])) for lp, cs in zip(logprobs, choices)]


def count_words_whitespace(text: str) -> int:
    """Words as lm-eval-harness counts them for word perplexity: pieces between runs of whitespace."""
    return len(re.split(r"\s+", text))


def score_perplexity(logprobs: Sequence[float], texts: Sequence[str],
                     weights: Sequence[float] | None = None) -> SetScores:
    """Corpus bits per byte, byte perplexity and word perplexity from each text's total log-likelihood (nats);
    with `weights`, text i's log-likelihood, bytes and words count weights[i] times."""
    if len(logprobs) != len(texts) or not texts:
        raise ValueError("need one log-likelihood per text")
    ws = _weights(weights, len(texts))
    nll = -sum(w * lp for w, lp in zip(ws, logprobs))
    n_bytes = sum(w * len(t.encode("utf-8")) for w, t in zip(ws, texts))
    n_words = sum(w * count_words_whitespace(t) for w, t in zip(ws, texts))
    values = {"bits_per_byte": nll / n_bytes / math.log(2), "byte_perplexity": math.exp(nll / n_bytes),
              "word_perplexity": math.exp(nll / n_words)}
    return SetScores(values, len(texts))


@dataclass(frozen=True)
class Verdict:
    """One response's checks: per constraint strict and loose (IFEval's rules), and whether its language is right."""

    strict: tuple[bool, ...]
    loose: tuple[bool, ...]
    language_ok: bool


def score_instructions(verdicts: Sequence[Verdict], weights: Sequence[float] | None = None) -> SetScores:
    """IFEval's four accuracies (prompt level: every constraint kept; instruction level: each constraint) and
    the share of responses in the expected language; with `weights`, response i (and its constraints) counts
    weights[i] times."""
    if not verdicts:
        raise ValueError("need at least one verdict")
    n = len(verdicts)
    ws = _weights(weights, n)
    n_inst = sum(w * len(v.strict) for w, v in zip(ws, verdicts))
    values = {
        "prompt_acc": _mean([all(v.strict) for v in verdicts], ws),
        "inst_acc": sum(w * sum(v.strict) for w, v in zip(ws, verdicts)) / n_inst if n_inst else 1.0,
        "prompt_acc_loose": _mean([all(v.loose) for v in verdicts], ws),
        "inst_acc_loose": sum(w * sum(v.loose) for w, v in zip(ws, verdicts)) / n_inst if n_inst else 1.0,
        "lang_acc": _mean([v.language_ok for v in verdicts], ws),
    }
    return SetScores(values, n)


def instruction_items(verdicts: Sequence[Verdict]) -> dict[str, list[float]]:
    """Each response's `prompt_acc`, `prompt_acc_loose` and `lang_acc` (0 or 1): the item-level values
    `score_instructions` averages (the instruction-level accuracies are means over constraints, not items)."""
    if not verdicts:
        raise ValueError("need at least one verdict")
    return {"prompt_acc": [float(all(v.strict)) for v in verdicts],
            "prompt_acc_loose": [float(all(v.loose)) for v in verdicts],
            "lang_acc": [float(v.language_ok) for v in verdicts]}
