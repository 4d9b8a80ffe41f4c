"""Eval sets tokenized once for a backend, then scored as often as the weights change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from evomerge.backends.hf import HFBackend, Request
from evomerge.evalsets import EvalSet
from evomerge.scorers import SetScores, score_multiple_choice


@dataclass(frozen=True)
class PreparedSet:
    """One eval set's chosen items as token-id requests: item i owns requests[offsets[i]:offsets[i + 1]]."""

    name: str
    metric: str
    requests: tuple[Request, ...]
    offsets: tuple[int, ...]
    golds: tuple[int, ...]


def prepare(backend: HFBackend, evalset: EvalSet, split: str, max_items: int | None, seed: int) -> PreparedSet:
    """Select the items (same for every candidate under one seed) and tokenize them."""
    card = evalset.card
    requests: list[Request] = []
    offsets, golds = [0], []
    for item in evalset.select(split, max_items, seed):
        text = item.prompt(card)
        context = backend.chat_prompt(text) if card.chat_template else text
        for choice in item.choices:
            requests.append(backend.encode(context, card.target_delimiter + choice))
        offsets.append(len(requests))
        golds.append(item.gold)
    return PreparedSet(evalset.name, card.metric, tuple(requests), tuple(offsets), tuple(golds))


def score(backend: HFBackend, prepared: Sequence[PreparedSet]) -> dict[str, SetScores]:
    """Score every prepared set with the backend's current weights."""
    out: dict[str, SetScores] = {}
    for p in prepared:
        lls = backend.loglikelihoods(p.requests)
        per_item = [lls[a:b] for a, b in zip(p.offsets[:-1], p.offsets[1:])]
        out[p.name] = score_multiple_choice(per_item, p.golds)
    return out


def score_model_dir(model_dir: str, eval_sets: Sequence[str], split: str = "dev", max_items: int | None = None,
                    seed: int = 0) -> dict[str, SetScores]:
    """Score a model directory on eval sets (what `evomerge eval` runs), the same way a worker scores."""
    from evomerge.evalsets import load_evalset

    backend = HFBackend.load(model_dir)
    prepared = [prepare(backend, load_evalset(p), split, max_items, seed) for p in eval_sets]
    return score(backend, prepared)
