"""The run's ledger: an Optuna study in SQLite (`runs/<name>/study.db`), one trial per dispatched candidate.

Rules the rest of the code relies on:
- a trial is created when its candidate is handed to a worker (RUNNING, so optuna-dashboard shows work in flight)
  and finished when the result arrives: COMPLETE with its objective values, or FAIL with the reason in user
  attribute `error`; finished trials are never changed;
- params are the gene values (FloatDistribution over each gene's bounds); user attributes hold `generation`,
  `index` (position in the optimizer's ask), `genome` (unit-box vector), `fitness` (the scalar the single-objective
  optimizers see), `objectives`, per-set `scores`, `worker`, timings (`merge_seconds`, `score_seconds`;
  `worker_started` / `worker_finished` in epoch seconds on the worker), and `seed_candidate` / `duplicate_of`
  where they apply; `stage` (uniform | per_layer) in a coarse-to-fine search (stages.py);
- a candidate ended by the cheap first pass is PRUNED, with `pruned_reason` and its first-pass scores; one ended
  by racing (racing.py) is PRUNED with the bound that decided it in `pruned_reason`, the scores of the items it
  was scored on, and `told` (the running estimate the optimizer was told; a resume tells it again); a raced
  trial keeps each batch's running values in `racing` and, with one objective, as Optuna intermediate values
  (step = items scored), which optuna-dashboard plots;
- trials a dead driver left RUNNING are failed on resume and listed in the study attribute `interrupted`; their
  candidates are evaluated again as new trials;
- holdout re-checks of finalists live in study attributes `holdout:<trial number>` (finished trials are immutable);
- the scheduling mode (`pipeline`, search.py) is the study attribute `pipeline`, fixed by the first driver.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from evomerge.results import CandidateResult
from evomerge.space import Gene

STUDY_FILE = "study.db"


def storage_url(run_dir: Path) -> str:
    """The SQLite URL of a run's study (what `optuna-dashboard` takes)."""
    return f"sqlite:///{(Path(run_dir) / STUDY_FILE).resolve()}"


def _storage(run_dir: Path):
    import optuna

    # a generous lock timeout: the dashboard may read while the driver writes
    return optuna.storages.RDBStorage(storage_url(run_dir), engine_kwargs={"connect_args": {"timeout": 60}})


class Ledger:
    """Append-only record of a run's trials."""

    def __init__(self, study, genes: Sequence[Gene]) -> None:
        self.study = study
        self.genes = tuple(genes)
        self._open: dict[int, Any] = {}

    @classmethod
    def open(cls, run_dir: Path, name: str, genes: Sequence[Gene], *, create: bool,
             objectives: Sequence[str] = ("fitness",)) -> "Ledger":
        """Create (create=True) or load a run's study; `objectives` names the study's values (all maximized)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = _storage(run_dir)
        if not create:
            try:
                return cls(optuna.load_study(study_name=name, storage=storage), genes)
            except KeyError:  # the first driver died between writing run.json and creating the study
                pass
        study = optuna.create_study(study_name=name, storage=storage, directions=["maximize"] * len(objectives),
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        import warnings

        with warnings.catch_warnings():  # set_metric_names is marked experimental; its behaviour is what we need
            warnings.simplefilter("ignore")
            study.set_metric_names(list(objectives))
        return cls(study, genes)

    @property
    def multi_objective(self) -> bool:
        return len(self.study.directions) > 1

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

    def finish(self, result: CandidateResult, values: Sequence[float] | None, attrs: Mapping[str, Any] = {}) -> None:
        """Close a trial: COMPLETE with its objective values, or FAIL with the reason."""
        import optuna

        trial = self._open.pop(result.number)
        trial.set_user_attr("worker", result.worker)
        trial.set_user_attr("merge_seconds", round(result.merge_seconds, 4))
        trial.set_user_attr("score_seconds", round(result.score_seconds, 4))
        if result.started_at:
            trial.set_user_attr("worker_started", round(result.started_at, 4))
            trial.set_user_attr("worker_finished", round(result.finished_at, 4))
        trial.set_user_attr("scores", {name: asdict(s) for name, s in result.scores.items()})
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if result.first_pass is not None and math.isfinite(result.first_pass):
            trial.set_user_attr("first_pass", result.first_pass)
        if result.race:  # racing: each batch's running values, and (one objective) Optuna's intermediate values
            trial.set_user_attr("racing", list(result.race))
            if not self.multi_objective:
                for step in result.race:
                    if math.isfinite(step["estimate"][0]):
                        trial.report(step["estimate"][0], step["items"])
        if result.ok and result.pruned:
            trial.set_user_attr("pruned_reason", result.pruned)
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif result.ok and values is not None and all(math.isfinite(v) for v in values):
            self.study.tell(trial, list(values) if self.multi_objective else values[0])
        else:
            trial.set_user_attr("error", result.error or f"non-finite objective values {values}")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def record_duplicate(self, values: Mapping[str, float], attrs: Mapping[str, Any], of) -> int:
        """A candidate equal to an evaluated one: recorded with that trial's result, not evaluated again."""
        number = self.start(values, {**attrs, "duplicate_of": of.number})
        trial = self._open.pop(number)
        for key in ("fitness", "objectives", "scores"):
            if key in of.user_attrs:
                trial.set_user_attr(key, of.user_attrs[key])
        self.study.tell(trial, list(of.values) if self.multi_objective else of.values[0])
        return number

    def fail_interrupted(self) -> list[int]:
        """Fail the trials a dead driver left RUNNING (they are re-asked) and remember which they were.

        A driver killed between `start`'s enqueue and ask leaves a WAITING trial, which the next ask would take
        (shifting every later trial's params by one): it is asked here and failed with the others. The list is
        stored before any trial is failed, so a kill in between never makes them count as real failures."""
        import optuna

        state = optuna.trial.TrialState
        waiting = self.study.get_trials(deepcopy=False, states=(state.WAITING,))
        for _ in waiting:
            self.study.ask(self._distributions())  # takes the waiting trial (fixed params), now RUNNING
        running = [t.number for t in self.study.get_trials(deepcopy=False, states=(state.RUNNING,))]
        if running:
            self.study.set_user_attr("interrupted", sorted(set(self.interrupted()) | set(running)))
        for number in running:
            self.study.tell(number, state=state.FAIL)
        return running

    def schedule(self, pipeline: bool) -> bool:
        """The run's scheduling mode: recorded by the first driver (study attribute `pipeline`) and read back by
        every resume, since replaying the optimizer needs the order of asks and tells the run was made with."""
        if "pipeline" not in self.study.user_attrs:
            self.study.set_user_attr("pipeline", bool(pipeline))
        return bool(self.study.user_attrs["pipeline"])

    def interrupted(self) -> list[int]:
        return list(self.study.user_attrs.get("interrupted", []))

    def trials(self):
        """Every trial, oldest first."""
        return self.study.get_trials(deepcopy=False)

    def set_holdout(self, number: int, fitness: float, scores: Mapping[str, Any]) -> None:
        """Record a finalist's re-check on the holdout split."""
        self.study.set_user_attr(f"holdout:{number}", {"fitness": fitness, "scores": dict(scores)})

    def holdout(self) -> dict[int, dict[str, Any]]:
        """Finalists' holdout re-checks by trial number."""
        return {int(k.split(":", 1)[1]): v for k, v in self.study.user_attrs.items() if k.startswith("holdout:")}

    def best(self, by_holdout: bool = True):
        """The trial export takes: the best holdout re-check when finalists were re-scored, else the completed
        trial with the highest scalar fitness (its dev score). Raises ValueError when nothing completed."""
        import optuna

        done = [t for t in self.trials() if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            raise ValueError("no completed trial")
        hold = self.holdout() if by_holdout else {}
        floor = dev_floor(done)  # coarse to fine: never a trial worse on dev than the best uniform one
        hold = {n: h for n, h in hold.items() if any(t.number == n and fitness_of(t) >= floor for t in done)}
        if hold:
            number = max(hold, key=lambda n: hold[n]["fitness"])
            return next(t for t in done if t.number == number)
        return max(done, key=fitness_of)


def dev_floor(trials) -> float:
    """The best dev fitness of a coarse-to-fine search's uniform stage (trials with user attribute `stage` =
    uniform, stages.py); -inf without one. Holdout picks (finalists, export) stay at or above it."""
    import optuna

    return max((fitness_of(t) for t in trials if t.state == optuna.trial.TrialState.COMPLETE
                and t.user_attrs.get("stage") == "uniform"), default=float("-inf"))


def fitness_of(trial) -> float:
    """A completed trial's scalar fitness (single-objective studies store it as the value too)."""
    return float(trial.user_attrs.get("fitness", trial.values[0]))
