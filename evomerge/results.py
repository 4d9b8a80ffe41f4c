"""What the driver hands a worker (`Candidate`) and what comes back (`CandidateResult`): the types the worker, the
pool, the scheduler and the ledger share, in a module that imports none of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from evomerge.racing import Race
from evomerge.scorers import SetScores


@dataclass(frozen=True)
class Candidate:
    """One point to evaluate: the trial number it is recorded under and its recipe (mergekit dict)."""

    number: int
    recipe: Mapping[str, Any]
    split: str = "dev"  # "holdout" only for the finalists' re-check
    prune_below: float | None = None  # first-pass fitness under which the candidate is pruned (None: no first pass)
    race: Race | None = None  # score the dev items in batches, stopping when it cannot reach the bar (racing.py)


@dataclass(frozen=True)
class CandidateResult:
    """Scores of one candidate, or the reason it failed (error is None on success)."""

    number: int
    scores: Mapping[str, SetScores] = field(default_factory=dict)
    error: str | None = None
    merge_seconds: float = 0.0
    score_seconds: float = 0.0
    worker: str = ""
    pruned: str | None = None  # why the first pass or racing ended it (then `scores` are those of the items scored)
    first_pass: float | None = None  # the first pass's fitness, when one ran
    started_at: float = 0.0  # wall clock (epoch seconds) on the worker when the candidate began and ended:
    finished_at: float = 0.0  # what the busy-fraction benchmark and the dashboard's timeline read
    worker_log: str = ""  # the worker's output file (runs/<name>/workers/<worker>.log), set by the pool
    race: tuple[dict, ...] = ()  # racing: each batch's `Step.as_dict()` (items, estimate, upper bound)

    @property
    def ok(self) -> bool:
        return self.error is None
