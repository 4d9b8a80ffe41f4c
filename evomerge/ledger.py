"""The run's ledger: an Optuna study in SQLite (`runs/<name>/study.db`), one trial per evaluated candidate.

Trials are created when a candidate is dispatched (state RUNNING, so optuna-dashboard shows work in flight) and
finished when its result arrives: COMPLETE with the fitness as value, or FAIL with the reason in user attribute
`error`. Params are the gene values (FloatDistribution over each gene's bounds); user attributes hold the per-set
scores, the unit-box vector, the generation, the worker and timings.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from evomerge.space import Gene
from evomerge.worker import CandidateResult

STUDY_FILE = "study.db"


def storage_url(run_dir: Path) -> str:
    """The SQLite URL of a run's study (what `optuna-dashboard` takes)."""
    return f"sqlite:///{(Path(run_dir) / STUDY_FILE).resolve()}"


class Ledger:
    """Append-only record of a run's trials."""

    def __init__(self, study, genes: Sequence[Gene]) -> None:
        self.study = study
        self.genes = tuple(genes)
        self._open: dict[int, Any] = {}

    @classmethod
    def open(cls, run_dir: Path, name: str, genes: Sequence[Gene], *, create: bool) -> "Ledger":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = storage_url(run_dir)
        if create:
            study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                        sampler=optuna.samplers.RandomSampler(seed=0))
        else:
            study = optuna.load_study(study_name=name, storage=storage)
        return cls(study, genes)

    def _distributions(self) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution

        return {g.name: FloatDistribution(g.low, g.high) for g in self.genes}

    def start(self, values: Mapping[str, float], attrs: Mapping[str, Any]) -> int:
        """Open a RUNNING trial with these gene values; returns its number."""
        # enqueue + ask fixes the params to the optimizer's values; the driver is single-threaded, so the trial
        # asked is the one just enqueued.
        self.study.enqueue_trial(dict(values), skip_if_exists=False)
        trial = self.study.ask(self._distributions())
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        self._open[trial.number] = trial
        return trial.number

    def finish(self, result: CandidateResult, fitness: float | None) -> None:
        """Close a trial: COMPLETE with its fitness, or FAIL with the reason."""
        import optuna

        trial = self._open.pop(result.number)
        trial.set_user_attr("worker", result.worker)
        trial.set_user_attr("merge_seconds", round(result.merge_seconds, 4))
        trial.set_user_attr("score_seconds", round(result.score_seconds, 4))
        trial.set_user_attr("scores", {name: asdict(s) for name, s in result.scores.items()})
        if result.ok and fitness is not None and math.isfinite(fitness):
            self.study.tell(trial, fitness)
        else:
            trial.set_user_attr("error", result.error or f"non-finite fitness {fitness}")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def best(self):
        """The completed trial with the highest fitness."""
        return self.study.best_trial
