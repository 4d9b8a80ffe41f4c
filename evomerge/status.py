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

    @property
    def early_fraction(self) -> float | None:
        """Early trials / evaluated trials (None before any evaluation)."""
        return self.early / self.evaluated if self.evaluated else None


def _summary(t, holdout: Mapping[int, Any]) -> TrialSummary:
    hold = holdout.get(t.number)
    return TrialSummary(t.number, tuple(t.values or ()), hold["fitness"] if hold else None,
                        t.user_attrs.get("seed_candidate"), t.user_attrs.get("scores") or {})


def run_status(run_dir: str | Path, top: int = 5) -> RunStatus:
    """Read a run's study and summarize it."""
    import optuna

    from evomerge.ledger import fitness_of, storage_url
    from evomerge.rundir import read_run

    info = read_run(run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=info.name, storage=storage_url(Path(run_dir)))
    trials = study.get_trials(deepcopy=False)
    interrupted = set(study.user_attrs.get("interrupted", []))
    evaluated = [t for t in trials if t.state.is_finished() and "duplicate_of" not in t.user_attrs
                 and t.number not in interrupted]
    counts: dict[str, int] = {}
    for t in trials:
        key = t.user_attrs.get("pruned_reason") and "PRUNED" or t.state.name
        counts[key] = counts.get(key, 0) + 1
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    holdout = {int(k.split(":", 1)[1]): v for k, v in study.user_attrs.items() if k.startswith("holdout:")}
    objectives = tuple(study.metric_names or [f"objective{i}" for i in range(len(study.directions))])
    per_gen: dict[int, float] = {}
    for t in done:
        g = int(t.user_attrs.get("generation", 0))
        per_gen[g] = max(per_gen.get(g, float("-inf")), fitness_of(t))
    gens = tuple(per_gen.get(g) for g in range(max(per_gen) + 1)) if per_gen else ()
    best = tuple(_summary(t, holdout) for t in sorted(done, key=lambda t: -fitness_of(t))[:top])
    front = tuple(_summary(t, holdout) for t in study.best_trials) if len(study.directions) > 1 else ()
    finalists = tuple(sorted((_summary(t, holdout) for t in done if t.number in holdout), key=lambda s: -s.holdout))
    return RunStatus(info.name, objectives, counts, gens, best, front, finalists, len(evaluated),
                     sum(1 for t in evaluated if t.user_attrs.get("early")))


def render(status: RunStatus) -> str:
    """The text `evomerge status` prints."""
    lines = [f"run {status.name}: " + ", ".join(f"{n} {k.lower()}" for k, n in sorted(status.counts.items()))]
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
        lines.append("finalists re-scored on holdout (export picks the first):")
        for s in status.finalists:
            lines.append(f"  trial {s.number:4d}  holdout {s.holdout:.4f}  dev " + " ".join(f"{v:.4f}" for v in s.values))
    return "\n".join(lines)
