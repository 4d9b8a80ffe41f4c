"""`evomerge quickstart`: the miniature Merge-and-Conquer, end to end on a CPU in minutes.

1. Build the tiny models once (or reuse them): base, instruct (chat in A) and lang-xb (continued pre-training on B).
2. Score on holdout the three sources and the paper's grid: uniform language weight 0.5, 1.0, 1.5, 2.0 with
   instruct weight 1.0.
3. Run a per-layer multi-objective search (NSGA-II, search_spaces/miniature_tradeoff.yaml) on the dev split. It is
   not seeded with the grid, so what it finds it found by itself.
4. Run the same search over one uniform language weight (a generated one-gene space, the same optimizer, seed and
   number of evaluations, `RUNS/quickstart_uniform`): the baseline a sceptic asks for first, since a finer uniform
   weight than the grid's may be all the per-layer search found.
5. Re-score both searched Pareto fronts (non-dominated on dev) on holdout, print one holdout table (sources, grid,
   uniform front, per-layer front), the hypervolumes, and paired bootstrap 95% intervals (stats.py) for every
   comparison: each per-layer front point against the best grid point and the best uniform point (by mean
   objective on holdout, which favours the baselines), and the fronts' hypervolume differences. All of it goes
   to `RUNS/quickstart/tradeoff.json`.
6. Export the front point with the best mean objective on holdout (recipe, merged model, manifest) and draw the
   run's plots (with the grid and uniform points from tradeoff.json overlaid on the Pareto panels).

Holdout scoring runs on resident models, one in this process and one in a helper process when the machine has two
cores (holdout.py's `HoldoutScorer`: the same `Evaluator` a search worker uses, one thread each), so every point of
the table is scored by the same code on the same items, whichever process took it, and each item's score is kept
for the intervals. The searched points' holdout results are stored in their runs' ledgers as the search's
finalist re-check stores its own (holdout.py `record`): export's manifest, `status` and the study's dashboard note
(the whole holdout table) show them.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
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
UNIFORM_RUN = "quickstart_uniform"  # the run name of the uniform-weight search, next to the per-layer one
BASELINES = ("grid", "uniform")  # what the per-layer front is compared with


@dataclass(frozen=True)
class Point:
    """One scored merge: what it is ("source", "grid", "uniform": a point of the uniform search's front, or
    "front": a point of the per-layer search's front), its label and its holdout results."""

    kind: str
    label: str
    objectives: Mapping[str, float]
    extra: Mapping[str, float]  # metrics that are shown but are not objectives (bits per byte in B)
    trial: int | None = None  # the study's trial number, for searched points
    # "set.metric" -> each holdout item's value (the same items, in the same order, for every point): what the
    # paired bootstrap resamples
    items: Mapping[str, Sequence[float]] = field(default_factory=dict, compare=False, repr=False)


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
    from evomerge.search import SearchOptions, ensure_models
    from evomerge.space import load_space

    started = time.perf_counter()
    space = load_space(space_path)
    if space.build_miniature is not None:
        print(f"tiny models: {space.build_miniature} (built on first use: a few minutes on 2 cores)")
    ensure_models(space)
    built = time.perf_counter()
    name = "quickstart"
    run_dir = Path(runs_dir) / name
    uniform_dir = Path(runs_dir) / UNIFORM_RUN
    for previous in (run_dir, uniform_dir):
        if previous.exists():
            print(f"replacing the previous quickstart run in {previous}")
            shutil.rmtree(previous)

    from evomerge.hub import check_configs
    from evomerge.pool import local_ray
    from evomerge.search import load_objectives

    n_layers = check_configs(space).n_layers
    objs, weights, _ = load_objectives(space, allow_test_splits=False)
    scorer = _HoldoutScorer(space, n_layers, objs, weights, seed)
    try:
        print(f"scoring the sources and the paper's grid on holdout ({', '.join(scorer.sets)}) ...")
        points = scorer.score([scorer.weights_job("source", label, wi, wl) for label, (wi, wl) in SOURCES.items()]
                              + [scorer.weights_job("grid", f"w={w:g}", 1.0, w) for w in GRID])

        with local_ray():  # one Ray instance for both searches (each starting and stopping its own: ~7 s more)
            print("searching per-layer weights (NSGA-II on dev; not seeded with the grid) ...")
            options = dict(runs_dir=Path(runs_dir), seed=seed, workers=workers, generations=generations,
                           popsize=popsize, progress=False)
            summary, front = _search(scorer, space_path, SearchOptions(name=name, **options), "front",
                                     "the dev Pareto front")
            print("searching one uniform language weight with the same optimizer, seed and budget (the baseline) ...")
            uniform_dir.mkdir(parents=True)
            uniform_space = uniform_dir / "space.yaml"
            write_atomic(uniform_space, _yaml_text(uniform_space_data(space_path, space)))
            uniform_summary, uniform = _search(scorer, uniform_space, SearchOptions(name=UNIFORM_RUN, **options),
                                               "uniform", "the uniform search's dev front")
    finally:
        scorer.close()
    points += uniform + front

    names = tuple(o.name for o in objs)
    item_objectives = {o.name: {f"{t.set}.{t.metric}": t.weight for t in o.terms} for o in objs}
    result = tradeoff(points, names, AXES if set(AXES) <= set(names) else names[:2], item_objectives, seed=seed)
    write_atomic(run_dir / TRADEOFF_FILE, json.dumps(result, indent=2) + "\n")
    print()
    print(render_table(points, names))
    print(_verdict(result))
    print(render_intervals(result))
    _note(summary.run_dir, name, points, names, result)

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

    evomerge = evomerge_command()
    print(f"uniform:   {uniform_summary.run_dir} (the one-weight search)")
    print(f"status:    {evomerge} status {summary.run_dir}")
    print(f"dashboard: {evomerge} dashboard {summary.run_dir}   (or optuna-dashboard "
          f"{storage_url(summary.run_dir)})")
    return result


def _search(scorer: _HoldoutScorer, space_file: Path, options: Any, kind: str, front: str) -> tuple[Any, list[Point]]:
    """Run one search, re-score its dev Pareto front on holdout and store those scores in its ledger (export,
    status and the dashboard read them there): (the search's summary, the front's points)."""
    from evomerge.search import run_search

    summary = run_search(space_file, options)
    trials = _dev_front(summary.run_dir, options.name)
    print(f"{summary.n_complete} candidates evaluated ({summary.n_failed} failed); re-scoring the {len(trials)} "
          f"trials of {front} on holdout ...")
    points = scorer.score([scorer.trial_job(t.number, t.params, kind=kind) for t in trials])
    scorer.record(summary.run_dir, options.name, kind, points)
    return summary, points


def evomerge_command() -> str:
    """How to run the evomerge that is running now, for the follow-up commands printed at the end: `evomerge` when
    that name on PATH is this script, else this script's path, else this interpreter with `-m evomerge` (run as
    `python -m evomerge`, or called from Python)."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "evomerge" and script.is_file():
        on_path = shutil.which("evomerge")
        if on_path and Path(on_path).resolve() == script.resolve():
            return "evomerge"
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m evomerge"


def uniform_space_data(space_path: Path, space: Any) -> dict[str, Any]:
    """The quickstart space with its genes replaced by its uniform view (`Space.uniform_genes`: one global gene per
    model and parameter; the miniature's is the grid's merge, base + 1.0 (instruct - base) + w (lang - base), with w
    free), every relative path made absolute so the file can live in the run directory."""
    from evomerge.yamlfile import load_yaml

    data = load_yaml(space_path, "a search-space YAML file")
    base = space_path.resolve().parent

    def absolute(path: str) -> str:
        return str((base / path).resolve())

    for m in data["models"]:
        if "path" in m:
            m["path"] = absolute(m["path"])
    for s in data["eval"]["sets"]:
        s["path"] = absolute(s["path"])
    if isinstance(data.get("build"), dict) and "miniature" in data["build"]:
        data["build"]["miniature"] = absolute(data["build"]["miniature"])
    uniform = space.uniform_genes()
    if not any(g.parameter == "weight" and space.model(m).role == "language" for g in uniform for m in g.models):
        raise UserError(str(space_path), "no weight gene for a language model",
                        "the quickstart's uniform baseline searches the language model's weight")
    fixed = data.get("merge", {}).get("fixed") or {}
    for g in uniform:
        # a global gene covers every tensor of its model (the grid's merge): a fixed value for it would overlap
        for m in g.models:
            fixed.get(m, {}).pop(g.parameter, None)
            if m in fixed and not fixed[m]:
                del fixed[m]
    data["genes"] = [{"name": g.name, "parameter": g.parameter, **({"models": list(g.models)} if g.models else {}),
                      "granularity": "global", "low": g.low, "high": g.high, "init": g.init, "step": g.step}
                     for g in uniform]
    data.pop("seeds", None)
    return data


def _yaml_text(data: Mapping[str, Any]) -> str:
    import yaml

    return ("# generated by evomerge quickstart: the per-layer space's uniform-weight baseline\n"
            + yaml.safe_dump(dict(data), sort_keys=False))


# ---------------------------------------------------------------------------------------------------------


def weights_recipe(space: Any, template: Mapping[str, Any], instruct: float, language: float) -> dict[str, Any]:
    """`template` (a mergekit dict of `space`'s models) with one uniform weight per role: base + instruct *
    (instruct - base) + language * (each language model - base), as the sources and the paper's grid are."""
    recipe = json.loads(json.dumps(dict(template)))  # a deep copy of plain data
    roles = {str(m.ref): m.role for m in space.models}
    for entry in recipe["models"]:
        role = roles.get(entry["model"])
        if role == "instruct":
            entry.setdefault("parameters", {})["weight"] = instruct
        elif role == "language":
            entry.setdefault("parameters", {})["weight"] = language
    return recipe


@dataclass(frozen=True)
class _Job:
    """One point to score on holdout: what it is, its label, its mergekit recipe and, for searched points, the
    trial number."""

    kind: str
    label: str
    recipe: Mapping[str, Any]
    trial: int | None = None


class _HoldoutScorer:
    """The quickstart's points scored on holdout by the one holdout scorer (holdout.py's `HoldoutScorer`: a model
    in this process and, on a machine with two cores or more, one in a helper process, each taking points of a
    batch): uniform merges by weights, searched trials by their genes."""

    def __init__(self, space: Any, n_layers: int, objs: Sequence[Any], weights: Mapping[str, float],
                 seed: int) -> None:
        from evomerge.evalsets import load_evalset
        from evomerge.holdout import HoldoutScorer
        from evomerge.pool import local_cores

        self.space, self.n_layers, self.objs = space, n_layers, tuple(objs)
        self.template = space.recipe({g.name: g.init for g in space.expand(n_layers)}, n_layers).to_mergekit()
        cards = [load_evalset(ref.path).card for ref in space.eval_sets]
        self.sets = tuple(c.name for c in cards)
        used = {t.set for o in self.objs for t in o.terms}
        # sets scored but not optimized (bits per byte in B): shown next to the objectives
        self.extra_metrics = {c.name: c.metric for c in cards if c.name not in used}
        # holdout scoring runs between the searches, when their workers are gone: two processes use both cores
        self.scorer = HoldoutScorer(space, self.objs, weights, space.search.scalarize, self.template, seed,
                                    processes=min(2, local_cores()))
        self.uniform: Any = None  # the uniform baseline's space, parsed on first use
        self.results: dict[tuple[str, int], Any] = {}  # (kind, trial) -> HoldoutResult, for the ledgers

    def weights_job(self, kind: str, label: str, instruct: float, language: float) -> _Job:
        """A uniform merge: base + instruct * (instruct - base) + language * (language model - base)."""
        return _Job(kind, label, weights_recipe(self.space, self.template, instruct, language))

    def trial_job(self, number: int, params: Mapping[str, float], *, kind: str = "front",
                  label: str | None = None) -> _Job:
        """A searched genome: trial `number`'s parameters (of this space, or of the uniform space: a global
        gene's value sets every tensor of its model, as `weights_job` does)."""
        space = self.space if kind == "front" else self._uniform_space()
        recipe = space.recipe(dict(params), self.n_layers).to_mergekit()
        if label is None:  # a uniform point by its weights (trial numbers of two studies would read alike)
            label = (f"trial {number}" if kind == "front"
                     else "uniform " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(params.items())))
        return _Job(kind, label, recipe, number)

    def _uniform_space(self) -> Any:
        if self.uniform is None:
            from evomerge.space import parse_space

            self.uniform = parse_space(uniform_space_data(Path(self.space.source), self.space), str(self.space.source))
        return self.uniform

    def score(self, jobs: Sequence[_Job]) -> list[Point]:
        """The jobs' points, in order (scored side by side by the scorer's processes)."""
        points = []
        for job, result in zip(jobs, self.scorer.score_all([(j.recipe, j.label) for j in jobs])):
            if job.trial is not None:
                self.results[(job.kind, job.trial)] = result
            extra = {f"{n} {m}": result.scores[n].metric(m) for n, m in self.extra_metrics.items()}
            points.append(Point(job.kind, job.label, dict(result.objectives), extra, job.trial, result.items))
        return points

    def record(self, run_dir: Path, name: str, kind: str, points: Sequence[Point]) -> None:
        """Store the searched points' holdout results in their run's ledger (holdout.py `record`, as the search's
        finalist re-check does), so export's manifest, status and plots see them."""
        from evomerge.holdout import record
        from evomerge.ledger import Ledger

        ledger = Ledger.open(run_dir, name, (), create=False)
        for p in points:
            record(ledger, p.trial, self.results[(kind, p.trial)])

    def close(self) -> None:
        self.scorer.close()


def _note(run_dir: Path, name: str, points: Sequence[Point], names: Sequence[str], result: Mapping[str, Any]) -> None:
    """The quickstart study's note (optuna-dashboard shows it): the holdout table of sources, grid, uniform front
    and per-layer front, the hypervolumes with their intervals, and the point export takes."""
    from evomerge.dashboard import save_study_note
    from evomerge.holdout import NoteRow, markdown_table
    from evomerge.ledger import Ledger, fitness_of

    ledger = Ledger.open(run_dir, name, (), create=False)
    dev = {t.number: fitness_of(t) for t in ledger.trials() if t.values}
    hold = ledger.holdout()
    rows = [NoteRow(p.kind, p.label, p.objectives, sum(p.objectives[n] for n in names) / len(names),
                    dev.get(p.trial) if p.kind == "front" else None) for p in points]
    hv = result["hypervolume"]
    lines = ["## Quickstart: holdout against the baselines",
             "Every point scored on the same holdout items (objectives higher is better; holdout fitness is their "
             "mean; dev fitness is what the search saw, for the per-layer front's trials). Neither search was "
             "seeded with the grid.",
             markdown_table(rows, names),
             "Hypervolume: " + ", ".join(f"{what} {'-' if hv.get(k) is None else f'{hv[k]:.4f}'}" for k, what in
                                         (("grid", "grid"), ("uniform", "uniform front"), ("front", "per-layer front")))]
    for key, what in (("front_minus_grid_interval", "per-layer front - grid"),
                      ("front_minus_uniform_interval", "per-layer front - uniform front")):
        if key in hv:
            iv = hv[key]
            lines.append(f"{what}: {iv['estimate']:+.4f} (95% interval {iv['low']:+.4f} to {iv['high']:+.4f})")
    if hold:
        best = max(hold, key=lambda n: hold[n]["fitness"])
        lines.append(f"Export takes **trial {best}** (best holdout fitness {hold[best]['fitness']:.4f}).")
    save_study_note(ledger.study, "\n\n".join(lines))


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


def tradeoff(points: Sequence[Point], names: Sequence[str], axes: Sequence[str],
             item_objectives: Mapping[str, Mapping[str, float]] | None = None, *, seed: int = 0,
             resamples: int | None = None) -> dict[str, Any]:
    """The `tradeoff.json` record: objectives, axes, points, the hypervolumes of grid, uniform front and per-layer
    front, dominating labels and, when every point carries its items' values, paired bootstrap intervals.

    The hypervolume reference is every objective's minimum over all points (sources included), so it does not
    depend on which set is measured; all objectives are maximized. `item_objectives` gives each objective as
    item set ("set.metric") -> weight, how the intervals recompute it from resampled items. Each front point is
    compared with the best grid point and the best uniform point by mean objective on holdout (chosen on the same
    items, which favours the baseline)."""
    from evomerge.pareto import dominating_all, hypervolume

    def vec(p: Point) -> list[float]:
        return [float(p.objectives[n]) for n in names]

    reference = [min(p.objectives[n] for p in points) for n in names]
    by_kind = {k: [p for p in points if p.kind == k] for k in ("grid", "uniform", "front")}
    hv: dict[str, Any] = {k: hypervolume([vec(p) for p in by_kind[k]], reference) if by_kind[k] else None
                          for k in ("grid", "uniform", "front")}
    hv["reference"] = reference
    front = by_kind["front"]
    record: dict[str, Any] = {
        "objectives": list(names),
        "axes": list(axes),
        "points": [{"kind": p.kind, "label": p.label, "holdout": dict(p.objectives),
                    **({"trial": p.trial} if p.trial is not None else {})} for p in points],
        "hypervolume": hv,
        "dominating": [front[i].label for i in dominating_all([vec(p) for p in front], [vec(p) for p in by_kind["grid"]])],
        "dominating_uniform": [front[i].label for i in dominating_all([vec(p) for p in front],
                                                                      [vec(p) for p in by_kind["uniform"]])],
        "comparisons": [],
    }
    if item_objectives is None or not _has_items(points, item_objectives, names):
        record["interval_method"] = None  # no per-item values (a metric that is not a mean over items)
        return record
    from evomerge.stats import RESAMPLES, hypervolume_difference, objective_difference, paired_bootstrap

    kw = {"seed": seed, "resamples": resamples or RESAMPLES}
    objectives = [item_objectives[n] for n in names]
    record["interval_method"] = (f"paired bootstrap percentile interval, {kw['resamples']} resamples of the holdout "
                                 f"items (the same draw for both sides), seed {seed}, level 0.95")
    record["holdout_items"] = {k: len(v) for k, v in sorted(points[0].items.items()) if
                               any(k in o for o in objectives)}
    for a, b in (("front", "grid"), ("front", "uniform"), ("uniform", "grid")):
        if by_kind[a] and by_kind[b]:
            iv = hypervolume_difference([p.items for p in by_kind[a]], [p.items for p in by_kind[b]], objectives,
                                        reference, **kw)
            hv[f"{a}_minus_{b}_interval"] = iv.as_dict()

    def mean_objective(means: Mapping[str, float]) -> float:
        from evomerge.stats import objective_value

        return sum(objective_value(means, o) for o in objectives) / len(objectives)

    for baseline in BASELINES:
        if not by_kind[baseline]:
            continue
        best = max(by_kind[baseline], key=lambda q: sum(q.objectives[n] for n in names))
        for p in front:
            mean = paired_bootstrap([p.items, best.items], lambda m: mean_objective(m[0]) - mean_objective(m[1]),
                                    vectorized=True, **kw)
            record["comparisons"].append({
                "point": p.label, "against": best.label, "against_kind": baseline,
                "mean_objective_interval": mean.as_dict(),
                "objective_intervals": {n: objective_difference(p.items, best.items, item_objectives[n], **kw).as_dict()
                                        for n in names}})
    return record


def _has_items(points: Sequence[Point], item_objectives: Mapping[str, Mapping[str, float]],
               names: Sequence[str]) -> bool:
    needed = {k for n in names for k in item_objectives[n]}
    return bool(points) and all(needed <= set(p.items) for p in points)


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

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    lines = [f"hypervolume over ({', '.join(result['objectives'])}), reference "
             f"[{', '.join(f'{r:.3f}' for r in hv['reference'])}]: grid {f(hv['grid'])}, uniform front "
             f"{f(hv.get('uniform'))}, per-layer front {f(hv['front'])}"]
    for key, what in (("dominating", "grid"), ("dominating_uniform", "uniform")):
        if what == "uniform" and hv.get("uniform") is None:
            continue
        if result.get(key):
            lines.append(f"per-layer front points that dominate every {what} point: {', '.join(result[key])}")
        else:
            lines.append(f"no per-layer front point dominates every {what} point")
    lines.append("(neither search was seeded with the grid: their points were found by NSGA-II on dev)")
    return "\n".join(lines)


def render_intervals(result: Mapping[str, Any]) -> str:
    """The intervals of `tradeoff.json`, one comparison per line (difference, then its 95% interval)."""
    if not result.get("interval_method"):
        return "(no paired intervals: some objective's metric is not a mean over items)"
    from evomerge.stats import Interval

    def iv(d: Mapping[str, float]) -> str:
        return str(Interval(d["estimate"], d["low"], d["high"]))

    items = ", ".join(f"{k} {n}" for k, n in result["holdout_items"].items())
    lines = [f"paired bootstrap 95% intervals, point minus baseline on the same holdout items ({items}):"]
    hv = result["hypervolume"]
    for key, what in (("front_minus_grid_interval", "per-layer front - grid"),
                      ("front_minus_uniform_interval", "per-layer front - uniform front"),
                      ("uniform_minus_grid_interval", "uniform front - grid")):
        if key in hv:
            lines.append(f"  hypervolume, {what}: {iv(hv[key])}")
    names = result["objectives"]
    for c in result["comparisons"]:
        per = "; ".join(f"{n} {iv(c['objective_intervals'][n])}" for n in names)
        lines.append(f"  {c['point']} - {c['against_kind']} best ({c['against']}): "
                     f"mean objective {iv(c['mean_objective_interval'])}; {per}")
    told = [c for c in result["comparisons"] if Interval(**{k: c["mean_objective_interval"][k] for k in
                                                             ("estimate", "low", "high")}).excludes_zero()]
    lines.append(f"  {len(told)} of {len(result['comparisons'])} comparisons of mean objective exclude zero; the "
                 "others are within what the choice of items explains")
    return "\n".join(lines)
