"""`evomerge status RUN`: what a run has done so far, read from its ledger alone (safe while the run is going)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class TrialSummary:
    """One finished trial as the status shows it."""

    number: int
    values: tuple[float, ...]
    holdout: float | None
    seed_candidate: str | None
    scores: Mapping[str, Any] = field(default_factory=dict)
    fitness: float | None = None  # the scalar dev fitness


@dataclass(frozen=True)
class RunStatus:
    """Counts, the best trials and, for multi-objective runs, the Pareto front."""

    name: str
    objectives: tuple[str, ...]
    counts: Mapping[str, int]
    best_per_generation: tuple[float | None, ...]
    best: tuple[TrialSummary, ...]
    front: tuple[TrialSummary, ...]
    finalists: tuple[TrialSummary, ...]
    evaluated: int = 0  # trials whose candidate a worker evaluated (duplicates and trials a dead driver left out)
    early: int = 0  # of those, points asked before the previous generation was told (scheduler.py's pipeline)
    exported: TrialSummary | None = None  # the trial export wrote (export/manifest.json), or would take
    export_chosen: str | None = None  # how export/manifest.json's trial was chosen (None: not exported yet)
    driver: str | None = None  # "pid N on HOST" of the process driving the run now, if one is
    dead_driver: str | None = None  # the last driver, when trials are left RUNNING and no process holds the run

    @property
    def interrupted(self) -> int:
        """Trials a dead driver left unfinished (failed on resume and evaluated again, or RUNNING till then)."""
        return self.counts.get("INTERRUPTED", 0)

    @property
    def early_fraction(self) -> float | None:
        """Early trials / evaluated trials (None before any evaluation)."""
        return self.early / self.evaluated if self.evaluated else None


def _summary(t, holdout: Mapping[int, Any]) -> TrialSummary:
    from evomerge.ledger import fitness_of

    hold = holdout.get(t.number)
    return TrialSummary(t.number, tuple(t.values or ()), hold["fitness"] if hold else None,
                        t.user_attrs.get("seed_candidate"), t.user_attrs.get("scores") or {},
                        fitness_of(t) if t.values else None)


def _driver(run_dir: Path) -> tuple[str | None, str | None]:
    """(the live driver, the last driver): who holds the run's lock now, and who wrote the lock file last."""
    from evomerge.rundir import RunLock

    live = RunLock.owner(run_dir)
    try:
        last = RunLock(run_dir).path.read_text().strip() or None
    except OSError:
        last = None
    return live, last


@dataclass(frozen=True)
class Outcomes:
    """What became of a run's trials, counted by outcome (COMPLETE, FAIL, PRUNED, INTERRUPTED, RUNNING, WAITING),
    and who drives the run. INTERRUPTED is not a failure of the candidate: a driver died while it was in flight
    (ledger.py `fail_interrupted` fails it on resume and lists it in the study attribute `interrupted`; until then it
    is RUNNING with no process holding the run), and `resume` evaluates its candidate again. PRUNED: the first pass
    or racing stopped the candidate early (user attribute `pruned_reason`). `status` and `plot` both count this way."""

    counts: Mapping[str, int]
    driver: str | None = None  # "pid N on HOST" of the process driving the run now, if one is
    dead_driver: str | None = None  # the last driver, when trials are left RUNNING and no process holds the run


def outcomes(run_dir: str | Path, study) -> Outcomes:
    """Count the outcomes of `study`'s trials (the study of the run in `run_dir`, whose lock names its driver)."""
    import optuna

    from evomerge.ledger import Ledger

    trials = study.get_trials(deepcopy=False)
    interrupted = set(Ledger(study, ()).interrupted())
    live, last = _driver(Path(run_dir))
    running = any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    dead = (last or "(unknown)") if running and live is None else None  # RUNNING, nobody driving: a driver died
    counts: dict[str, int] = {}
    for t in trials:
        if t.number in interrupted or (dead and t.state == optuna.trial.TrialState.RUNNING):
            key = "INTERRUPTED"  # not a failure of the candidate: `resume` evaluates it again
        else:
            key = t.user_attrs.get("pruned_reason") and "PRUNED" or t.state.name
        counts[key] = counts.get(key, 0) + 1
    return Outcomes(counts, live, dead)


def _exported(run_dir: Path, ledger, done, holdout) -> tuple[TrialSummary | None, str | None]:
    """The trial of export/manifest.json and how it was chosen when an export exists, else the trial export would
    take (and None)."""
    import json

    by_number = {t.number: t for t in done}
    manifest = run_dir / "export" / "manifest.json"
    if manifest.is_file():
        try:
            record = json.loads(manifest.read_text())
            number, chosen = record.get("trial"), record.get("chosen") or "unrecorded"
        except (OSError, ValueError, AttributeError):
            number = chosen = None
        if number in by_number:
            return _summary(by_number[number], holdout), chosen
    try:
        return _summary(ledger.best(), holdout), None
    except ValueError:  # nothing completed yet
        return None, None


def run_status(run_dir: str | Path, top: int = 5) -> RunStatus:
    """Read a run's study and summarize it."""
    import optuna

    from evomerge.ledger import Ledger, fitness_of, storage_url
    from evomerge.rundir import read_run

    info = read_run(run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=info.name, storage=storage_url(Path(run_dir)))
    trials = study.get_trials(deepcopy=False)
    interrupted = set(study.user_attrs.get("interrupted", []))
    evaluated = [t for t in trials if t.state.is_finished() and "duplicate_of" not in t.user_attrs
                 and t.number not in interrupted]
    seen = outcomes(run_dir, study)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    ledger = Ledger(study, ())
    holdout = ledger.holdout()
    objectives = tuple(study.metric_names or [f"objective{i}" for i in range(len(study.directions))])
    per_gen: dict[int, float] = {}
    for t in done:
        g = int(t.user_attrs.get("generation", 0))
        per_gen[g] = max(per_gen.get(g, float("-inf")), fitness_of(t))
    gens = tuple(per_gen.get(g) for g in range(max(per_gen) + 1)) if per_gen else ()
    best = tuple(_summary(t, holdout) for t in sorted(done, key=lambda t: -fitness_of(t))[:top])
    front = tuple(_summary(t, holdout) for t in study.best_trials) if len(study.directions) > 1 else ()
    finalists = tuple(sorted((_summary(t, holdout) for t in done if t.number in holdout), key=lambda s: -s.holdout))
    exported, chosen = _exported(Path(run_dir), ledger, done, holdout)
    return RunStatus(info.name, objectives, seen.counts, gens, best, front, finalists, len(evaluated),
                     sum(1 for t in evaluated if t.user_attrs.get("early")), exported, chosen, seen.driver,
                     seen.dead_driver)


def render(status: RunStatus) -> str:
    """The text `evomerge status` prints."""
    from evomerge.holdout import which_fitness

    lines = [f"run {status.name}: " + ", ".join(f"{n} {k.lower()}" for k, n in sorted(status.counts.items()))]
    if status.driver:
        lines.append(f"driver: {status.driver} (running)")
    if status.dead_driver:
        lines.append(f"driver {status.dead_driver} is gone (no process holds the run): the trials it left running "
                     f"are interrupted; `evomerge resume` evaluates them again")
    elif status.interrupted:
        lines.append(f"{status.interrupted} trial(s) interrupted by a driver that died were evaluated again as new "
                     "trials (not failures)")
    if status.early_fraction is not None:
        lines.append(f"early points: {status.early} of {status.evaluated} evaluated trials "
                     f"({status.early_fraction:.0%}) were asked before the previous generation was told")
    if status.best_per_generation:
        lines.append("best per generation: " + " ".join("-" if v is None else f"{v:.4f}" for v in status.best_per_generation))
    if status.best:
        lines.append(f"top trials by dev fitness (values: {', '.join(status.objectives)}):")
        for s in status.best:
            tag = f"  [{s.seed_candidate}]" if s.seed_candidate else ""
            hold = f"  holdout {s.holdout:.4f}" if s.holdout is not None else ""
            lines.append(f"  trial {s.number:4d}  " + " ".join(f"{v:.4f}" for v in s.values) + hold + tag)
    if status.front:
        lines.append(f"Pareto front ({len(status.front)} trials; {', '.join(status.objectives)}):")
        for s in sorted(status.front, key=lambda s: s.values):
            lines.append(f"  trial {s.number:4d}  " + "  ".join(f"{v:.4f}" for v in s.values))
    if status.finalists:
        lines.append("trials re-scored on holdout (best holdout fitness first):")
        for s in status.finalists:
            lines.append(f"  trial {s.number:4d}  holdout {s.holdout:.4f}  dev " + " ".join(f"{v:.4f}" for v in s.values))
    if status.exported is not None:
        e = status.exported
        what = f"exported trial {e.number}" if status.export_chosen else f"export takes trial {e.number}"
        chosen = status.export_chosen or ("holdout" if e.holdout is not None else "dev")
        lines.append(f"{what}, {which_fitness(chosen, e.fitness, e.holdout)}")
    return "\n".join(lines)
