"""`evomerge quickstart`: the miniature Merge-and-Conquer, end to end on a CPU in minutes.

1. Build the tiny models once (or reuse them): base, instruct (chat in A) and lang-xb (continued pre-training on B).
2. Score on holdout the three sources and the paper's grid: uniform language weight 0.5, 1.0, 1.5, 2.0 with
   instruct weight 1.0.
3. Run a per-layer multi-objective search (NSGA-II, search_spaces/miniature_tradeoff.yaml) on the dev split. It is
   not seeded with the grid, so what it finds it found by itself.
4. Re-score the searched Pareto front (non-dominated on dev) on holdout, print one holdout table (sources, grid,
   front), the hypervolumes of grid and front, and write `RUNS/quickstart/tradeoff.json`.
5. Export the front point with the best mean objective on holdout (recipe, merged model, manifest) and draw the
   run's plots.

Holdout scoring runs in this process on one resident model (the same `Evaluator` a search worker uses), so every
point of the table is scored by the same code on the same items.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from evomerge.atomic import write_atomic
from evomerge.errors import UserError

REPO = Path(__file__).resolve().parent.parent
QUICKSTART_SPACE = REPO / "search_spaces" / "miniature_tradeoff.yaml"
GRID = (0.5, 1.0, 1.5, 2.0)  # the paper's uniform language weights, instruct weight 1.0
SOURCES = {"base": (0.0, 0.0), "instruct": (1.0, 0.0), "lang-xb": (0.0, 1.0)}  # (instruct, language) weights
AXES = ("xa_instructions", "xb_fidelity")  # the trade-off the paper describes
TRADEOFF_FILE = "tradeoff.json"


@dataclass(frozen=True)
class Point:
    """One scored merge: what it is ("source", "grid" or "front"), its label and its holdout results."""

    kind: str
    label: str
    objectives: Mapping[str, float]
    extra: Mapping[str, float]  # metrics that are shown but are not objectives (bits per byte in B)
    trial: int | None = None  # the study's trial number, for searched points


def run_quickstart(runs_dir: Path, seed: int = 0, workers: int = 2, *, space_path: Path | None = None,
                   generations: int | None = None, popsize: int | None = None, export_model: bool = True,
                   plots: bool = True) -> dict[str, Any]:
    """The README's main job, end to end on the CPU; returns what it wrote to `tradeoff.json`."""
    import torch

    space_path = Path(space_path or QUICKSTART_SPACE)
    if not space_path.is_file():
        raise UserError(str(space_path), "quickstart space not found", "run from a clone of the repository")
    # One intra-op thread for the holdout scoring, as the search's workers have: on a busy two-core machine two
    # threads per process spin against each other (the build runs on one thread for the same reason).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _quickstart(space_path, Path(runs_dir), seed, workers, generations, popsize, export_model, plots)
    finally:
        torch.set_num_threads(threads)


def _quickstart(space_path: Path, runs_dir: Path, seed: int, workers: int, generations: int | None,
                popsize: int | None, export_model: bool, plots: bool) -> dict[str, Any]:
    from evomerge.search import SearchOptions, ensure_models, run_search
    from evomerge.space import load_space

    started = time.perf_counter()
    space = load_space(space_path)
    if space.build_miniature is not None:
        print(f"tiny models: {space.build_miniature} (built on first use: a few minutes on 2 cores)")
    ensure_models(space)
    built = time.perf_counter()
    name = "quickstart"
    run_dir = Path(runs_dir) / name
    if run_dir.exists():
        print(f"replacing the previous quickstart run in {run_dir}")
        shutil.rmtree(run_dir)

    from evomerge.hub import check_configs
    from evomerge.search import load_objectives

    n_layers = check_configs(space).n_layers
    objs, _, _ = load_objectives(space, allow_test_splits=False)
    scorer = _HoldoutScorer(space, n_layers, objs, seed)
    print(f"scoring the sources and the paper's grid on holdout ({', '.join(scorer.sets)}) ...")
    points = [scorer.score_weights("source", label, wi, wl) for label, (wi, wl) in SOURCES.items()]
    points += [scorer.score_weights("grid", f"w={w:g}", 1.0, w) for w in GRID]

    print("searching per-layer weights (NSGA-II on dev; not seeded with the grid) ...")
    summary = run_search(space_path, SearchOptions(name=name, runs_dir=Path(runs_dir), seed=seed, workers=workers,
                                                   generations=generations, popsize=popsize, progress=False))
    front_trials = _dev_front(summary.run_dir, name)
    print(f"{summary.n_complete} candidates evaluated ({summary.n_failed} failed); re-scoring the "
          f"{len(front_trials)} trials of the dev Pareto front on holdout ...")
    front = [scorer.score_trial(t.number, t.params) for t in front_trials]
    points += front
    scorer.close()

    names = tuple(o.name for o in objs)
    result = tradeoff(points, names, AXES if set(AXES) <= set(names) else names[:2])
    write_atomic(run_dir / TRADEOFF_FILE, json.dumps(result, indent=2) + "\n")
    print()
    print(render_table(points, names))
    print(_verdict(result))

    best = max(front, key=lambda p: sum(p.objectives.values())) if front else None
    export = None
    if best is not None:
        from evomerge.export import export_run

        export = export_run(summary.run_dir, trial=best.trial, with_model=export_model)
    plot_paths = []
    if plots:
        from evomerge.plots import plot_run

        plot_paths = plot_run(summary.run_dir)
    elapsed = time.perf_counter() - started
    print(f"\ntime: {elapsed:.0f} s in all ({built - started:.0f} s building or checking the models)")
    print(f"study:     {summary.run_dir / 'study.db'}")
    print(f"trade-off: {run_dir / TRADEOFF_FILE}")
    if export is not None:
        print(f"exported:  {best.label} (best mean objective on holdout): {export.recipe_path}"
              + (f", model {export.model_dir}" if export.model_dir else ""))
    if plot_paths:
        print(f"plots:     {plot_paths[0].parent}  ({', '.join(p.name for p in plot_paths)})")
    from evomerge.ledger import storage_url

    print(f"status:    .venv/bin/evomerge status {summary.run_dir}")
    print(f"dashboard: .venv/bin/evomerge dashboard {summary.run_dir}   (or optuna-dashboard "
          f"{storage_url(summary.run_dir)})")
    return result


# ---------------------------------------------------------------------------------------------------------


class _HoldoutScorer:
    """One resident model that scores recipes on the holdout split of the space's eval sets, in this process."""

    def __init__(self, space: Any, n_layers: int, objs: Sequence[Any], seed: int) -> None:
        from evomerge.worker import EvaluatorSpec, Evaluator

        from evomerge.evalsets import load_evalset

        self.space, self.n_layers, self.objs = space, n_layers, tuple(objs)
        template = space.recipe({g.name: g.init for g in space.expand(n_layers)}, n_layers).to_mergekit()
        self.template = template
        cards = [load_evalset(ref.path).card for ref in space.eval_sets]
        self.sets = tuple(c.name for c in cards)
        used = {t.set for o in self.objs for t in o.terms}
        # sets scored but not optimized (bits per byte in B): shown next to the objectives
        self.extra_metrics = {c.name: c.metric for c in cards if c.name not in used}
        spec = EvaluatorSpec(recipe=template, eval_sets=tuple(ref.path for ref in space.eval_sets),
                             split="holdout", seed=seed, threads=1, backend="hf")
        self.evaluator = Evaluator.start(spec, worker="quickstart")
        self.count = 0

    def score_weights(self, kind: str, label: str, instruct: float, language: float) -> Point:
        """A uniform merge: base + instruct * (instruct - base) + language * (language model - base)."""
        recipe = json.loads(json.dumps(self.template))  # a deep copy of plain data
        roles = {m.name: m.role for m in self.space.models}
        paths = {m.name: str(m.ref) for m in self.space.models}
        for entry in recipe["models"]:
            role = next((roles[n] for n, p in paths.items() if p == entry["model"]), None)
            if role == "instruct":
                entry.setdefault("parameters", {})["weight"] = instruct
            elif role == "language":
                entry.setdefault("parameters", {})["weight"] = language
        return self._score(kind, label, recipe)

    def score_trial(self, number: int, params: Mapping[str, float]) -> Point:
        """A searched genome: trial `number`'s parameters."""
        recipe = self.space.recipe(dict(params), self.n_layers).to_mergekit()
        return self._score("front", f"trial {number}", recipe, number)

    def _score(self, kind: str, label: str, recipe: Mapping[str, Any], trial: int | None = None) -> Point:
        from evomerge.fitness import objectives
        from evomerge.worker import Candidate

        self.count += 1
        result = self.evaluator.evaluate(Candidate(self.count, recipe, split="holdout"))
        if not result.ok:
            raise RuntimeError(f"scoring {label} on holdout failed: {result.error}")
        extra = {f"{n} {m}": result.scores[n].metric(m) for n, m in self.extra_metrics.items()}
        return Point(kind, label, objectives(result.scores, self.objs), extra, trial)

    def close(self) -> None:
        del self.evaluator


def _dev_front(run_dir: Path, name: str) -> list[Any]:
    """The completed trials no other completed trial dominates on dev (the study's Pareto front)."""
    import optuna

    from evomerge.ledger import storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage_url(run_dir))
    front = study.best_trials if len(study.directions) > 1 else [study.best_trial]
    unique: dict[tuple[float, ...], Any] = {}
    for t in sorted(front, key=lambda t: t.number):
        unique.setdefault(tuple(t.values), t)  # equal dev values: keep the first (duplicates add nothing)
    return list(unique.values())


def tradeoff(points: Sequence[Point], names: Sequence[str], axes: Sequence[str]) -> dict[str, Any]:
    """The `tradeoff.json` record: objectives, axes, points, grid and front hypervolumes, dominating labels.

    The hypervolume reference is every objective's minimum over all points (sources included), so it does not
    depend on which set is measured; all objectives are maximized."""
    from evomerge.pareto import dominating_all, hypervolume

    def vec(p: Point) -> list[float]:
        return [float(p.objectives[n]) for n in names]

    reference = [min(p.objectives[n] for p in points) for n in names]
    grid = [vec(p) for p in points if p.kind == "grid"]
    front = [p for p in points if p.kind == "front"]
    return {
        "objectives": list(names),
        "axes": list(axes),
        "points": [{"kind": p.kind, "label": p.label, "holdout": dict(p.objectives)} for p in points],
        "hypervolume": {"grid": hypervolume(grid, reference), "front": hypervolume([vec(p) for p in front], reference),
                        "reference": reference},
        "dominating": [front[i].label for i in dominating_all([vec(p) for p in front], grid)],
    }


def render_table(points: Sequence[Point], names: Sequence[str]) -> str:
    """The holdout table: one row per point, one column per objective (and per extra metric)."""
    extras = sorted({k for p in points for k in p.extra})
    header = ["kind", "label", *names, *extras]
    rows = [[p.kind, p.label, *(f"{p.objectives[n]:.3f}" for n in names), *(f"{p.extra.get(k, float('nan')):.3f}"
                                                                            for k in extras)] for p in points]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["holdout scores (objectives: higher is better)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    return "\n".join(lines)


def _verdict(result: Mapping[str, Any]) -> str:
    hv = result["hypervolume"]
    ratio = hv["front"] / hv["grid"] if hv["grid"] > 0 else float("inf")
    lines = [f"hypervolume over ({', '.join(result['objectives'])}), reference {hv['reference']}: "
             f"grid {hv['grid']:.4f}, searched front {hv['front']:.4f} ({ratio:.2f}x)"]
    if result["dominating"]:
        lines.append(f"front points that dominate every grid point: {', '.join(result['dominating'])}")
    else:
        lines.append("no front point dominates every grid point")
    lines.append("(the search was not seeded with the grid: the front's points were found by NSGA-II on dev)")
    return "\n".join(lines)
