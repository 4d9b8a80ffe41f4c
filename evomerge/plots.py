"""`evomerge plot RUN`: PNGs of a run from its ledger.

- `fitness.png`: each completed evaluation's fitness (dev) and the best so far, against the number of evaluations
  completed (in order of completion: trial numbers are handed out when candidates are asked, not when they finish);
  its title counts the trials not shown as `status` does: failed, interrupted (not failures), pruned;
- `per_set.png`: each eval set's score per evaluation, one panel per metric (so accuracies and bits per byte never
  share an axis), points only (a set missing from an evaluation leaves a gap, not a line across it);
- `best_genome.png`: the gene values of the exported trial (the one in RUN/export/manifest.json, else the one
  `evomerge export` would take), per decoder layer plus the embedding and output-head genes, coloured on the genes'
  bounds;
- `pareto.png` (multi-objective runs): every pair of objectives in its own panel, points only (a front of more than
  two objectives projected on two axes is no curve); dev trials and the dev front, and when the run holds the
  quickstart's `tradeoff.json` a second row on holdout with the searched front, the grid, the uniform search's
  front and the sources.
"""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping, Sequence

TRADEOFF_FILE = "tradeoff.json"  # written by the quickstart into its run directory
# how each kind of point of tradeoff.json is drawn on the holdout row
_HOLDOUT_STYLE: dict[str, dict[str, Any]] = {
    "source": dict(marker="s", color="0.45", s=28, label="sources"),
    "grid": dict(marker="o", color="tab:orange", s=30, label="grid (uniform w)"),
    "uniform": dict(marker="^", color="tab:blue", s=34, label="uniform search front"),
    "front": dict(marker="*", color="tab:red", s=80, label="per-layer front"),
}


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the PNGs (default: RUN/plots/) and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna

    from evomerge.ledger import storage_url
    from evomerge.rundir import read_run
    from evomerge.status import outcomes

    run_dir = Path(run_dir)
    info = read_run(run_dir)
    space = info.space()
    out = Path(out_dir) if out_dir else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=info.name, storage=storage_url(run_dir))
    trials = study.get_trials(deepcopy=False)
    done = completed_in_order(trials)
    written: list[Path] = []
    if not done:
        return written
    counts = outcomes(run_dir, study).counts  # as `status` counts: interrupted and pruned trials are no failures
    written.append(_save(fitness_figure(info.name, done, counts), out / "fitness.png"))
    if any(t.user_attrs.get("scores") for t in done):
        written.append(_save(per_set_figure(done, _set_metrics(space)), out / "per_set.png"))
    chosen, why = exported_trial(run_dir, info, done)
    genome = genome_figure(space, info.n_layers, chosen, why)
    if genome is not None:
        written.append(_save(genome, out / "best_genome.png"))
    if len(study.directions) > 1:
        names = list(study.metric_names or [f"objective{i}" for i in range(len(study.directions))])
        front = {t.number for t in study.best_trials}
        written.append(_save(pareto_figure(names, done, front, _read_tradeoff(run_dir)), out / "pareto.png"))
    return written


def completed_in_order(trials: Sequence[Any]) -> list[Any]:
    """The completed trials in the order they finished (ties, and trials without a finish time, by number)."""
    import datetime

    import optuna

    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    never = datetime.datetime.max
    return sorted(done, key=lambda t: (t.datetime_complete or never, t.number))


def exported_trial(run_dir: Path, info: Any, done: Sequence[Any]) -> tuple[Any, str]:
    """The trial the run exported (RUN/export/manifest.json), else the one `evomerge export` would take (the best
    finalist on holdout when finalists were re-checked, else the best dev fitness); and why it is that one."""
    manifest = Path(run_dir) / "export" / "manifest.json"
    by_number = {t.number: t for t in done}
    try:
        number = json.loads(manifest.read_text()).get("trial")
    except (OSError, ValueError, AttributeError):
        number = None
    if number in by_number:
        return by_number[number], "exported"
    from evomerge.ledger import Ledger

    ledger = Ledger.open(Path(run_dir), info.name, info.space().expand(info.n_layers), create=False)
    best = ledger.best()
    return by_number.get(best.number, best), ("best on holdout" if ledger.holdout() else "best dev fitness") + \
        ", what export would take"


# ---------------------------------------------------------------------------------------------------------


# how the fitness plot names the trials it does not show (status.py `outcomes` counts them)
_NOT_SHOWN = {"FAIL": "failed", "INTERRUPTED": "interrupted (a driver died; evaluated again, not failures)",
              "PRUNED": "pruned (stopped early by the first pass or racing)", "RUNNING": "running", "WAITING": "waiting"}


def fitness_figure(name: str, done: Sequence[Any], counts: Mapping[str, int] = {}):
    """Fitness (dev) of the completed evaluations `done` (in order of completion) and the best so far; the title
    names the trials not shown by outcome (`counts`: status.py `outcomes`)."""
    from evomerge.ledger import fitness_of

    plt = _pyplot()
    xs = list(range(1, len(done) + 1))
    ys = [fitness_of(t) for t in done]
    running, best = [], -math.inf
    for y in ys:
        best = max(best, y)
        running.append(best)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(xs, ys, s=12, alpha=0.6, label="evaluation")
    ax.step(xs, running, where="post", color="C3", label="best so far")
    ax.set_xlabel("evaluations completed (in order of completion)")
    ax.set_ylabel("fitness (dev)")
    rest = ", ".join(f"{counts[k]} {label}" for k, label in _NOT_SHOWN.items() if counts.get(k))
    ax.set_title(f"{name}: fitness over {len(done)} completed evaluations" + (f"\nnot shown: {rest}" if rest else ""),
                 fontsize=9)
    ax.legend()
    return fig


def per_set_figure(done: Sequence[Any], metrics: Mapping[str, str]):
    """Each set's score per completed evaluation, one panel per metric (`metrics`: set -> its card's metric)."""
    from evomerge.scorers import LOWER_IS_BETTER

    plt = _pyplot()
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}  # metric -> set -> (evaluation, value)
    for x, t in enumerate(done, start=1):
        for name, score in (t.user_attrs.get("scores") or {}).items():
            metric, value = _metric_value(score, metrics.get(name))
            if value is not None:
                series.setdefault(metric, {}).setdefault(name, []).append((x, value))
    panels = sorted(series)
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels) + 0.6), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], panels):
        for name, pts in sorted(series[metric].items()):
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, alpha=0.7, label=name)
        ax.set_ylabel(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("evaluations completed (in order of completion)")
    axes[0, 0].set_title("per eval set (dev), one panel per metric")
    return fig


def _set_metrics(space: Any) -> dict[str, str]:
    """Each eval set's card metric (what its score means), read from its card; sets whose card cannot be read are
    left out (their headline is then guessed from the stored scores)."""
    from evomerge.errors import UserError
    from evomerge.evalsets import parse_card
    from evomerge.yamlfile import load_yaml

    out = {}
    for ref in space.eval_sets:
        try:
            card = parse_card(load_yaml(Path(ref.path) / "card.yaml", "an eval-set card"), str(ref.path))
        except (UserError, OSError):
            continue
        out[card.name] = card.metric
    return out


def _metric_value(score: Any, metric: str | None) -> tuple[str, float | None]:
    """(metric, value) of one set's stored scores: the card's metric when known, else the first of value, gold_prob,
    acc, else the first stored metric."""
    if isinstance(score, dict) and isinstance(score.get("values"), dict):
        score = score["values"]
    if not isinstance(score, dict):
        return metric or "score", float(score)
    if metric is None:
        metric = next((k for k in ("value", "gold_prob", "acc") if k in score), next(iter(score), "score"))
    value = score.get(metric)
    return metric, float(value) if isinstance(value, (int, float)) else None


RowKey = tuple  # (parameter, models, module kind or None)


def genome_rows(space: Any, n_layers: int, params: Mapping[str, float]
                ) -> tuple[dict[RowKey, list[float]], dict[RowKey, tuple[float, float]]]:
    """A genome as a table: one row per (parameter, models, module kind), columns embeddings, decoder layers 0..L-1,
    output head; NaN where no gene of the row sets the tensor group. Also each row's gene bounds (low, high)."""
    rows: dict[RowKey, list[float]] = {}
    bounds: dict[RowKey, tuple[float, float]] = {}
    width = n_layers + 2  # embed, layers..., lm_head

    def row(key: tuple[str, tuple[str, ...], str | None], low: float, high: float) -> list[float]:
        lo, hi = bounds.get(key, (low, high))
        bounds[key] = (min(lo, low), max(hi, high))
        return rows.setdefault(key, [math.nan] * width)

    for g in space.genes:
        dims = g.dims(n_layers)
        if g.tensors:  # embed / lm_head: the row of layer genes of the same parameter and models, if there is one
            key = next((k for k in rows if k[:2] == (g.parameter, g.models)), (g.parameter, g.models, None))
            row(key, g.low, g.high)[0 if g.tensors == "embed" else width - 1] = params[dims[0][0]]
        elif g.granularity == "global":
            row((g.parameter, g.models, None), g.low, g.high)[:] = [params[dims[0][0]]] * width
        else:
            for kind in g.modules or (None,):
                vals = [params[name] for name, k, _ in dims if k == kind]
                row((g.parameter, g.models, kind), g.low, g.high)[1:width - 1] = g.layer_values(vals, n_layers)
    return rows, bounds


def genome_figure(space: Any, n_layers: int, trial: Any, why: str):
    """The heatmap of `genome_rows` for `trial`, one panel per parameter, coloured on the genes' bounds (None when
    the space has no genes). A blank cell follows the fixed value or the first layer: `evomerge space show`."""
    import numpy as np

    rows, bounds = genome_rows(space, n_layers, trial.params)
    width = n_layers + 2
    if not rows:
        return None
    plt = _pyplot()
    params = sorted({k[0] for k in rows})  # one panel per parameter: weights and densities have their own bounds
    fig, axes = plt.subplots(len(params), 1, figsize=(max(7.0, width * 0.5), 1.2 + 0.5 * len(rows) + 0.6 *
                                                                            len(params)), squeeze=False)
    for ax, param in zip(axes[:, 0], params):
        keys = [k for k in rows if k[0] == param]
        low, high = min(bounds[k][0] for k in keys), max(bounds[k][1] for k in keys)
        data = np.ma.masked_invalid(np.array([rows[k] for k in keys], dtype=float))
        im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=low, vmax=high)
        ax.set_yticks(range(len(keys)), [f"{'+'.join(k[1]) or 'method'} {k[0]}" + (f" {k[2]}" if k[2] else "")
                                         for k in keys])
        ax.set_xticks(range(width), ["embed", *map(str, range(n_layers)), "head"])
        for r, k in enumerate(keys):
            for c, v in enumerate(rows[k]):
                if not math.isnan(v):
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < low + 0.5 * (high - low) else "black")
        fig.colorbar(im, ax=ax, label=f"{param}: gene bounds {low:g}-{high:g}")
    axes[-1, 0].set_xlabel("decoder layer (blank: no gene; see evomerge space show)")
    axes[0, 0].set_title(f"trial {trial.number} ({why}): gene values")
    return fig


def _read_tradeoff(run_dir: Path) -> Mapping[str, Any] | None:
    try:
        data = json.loads((Path(run_dir) / TRADEOFF_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("points"), list) else None


def pareto_figure(names: Sequence[str], done: Sequence[Any], front: set[int], tradeoff: Mapping[str, Any] | None):
    """A panel per pair of objectives: dev trials and the dev front (trial numbers in `front`); with the
    quickstart's `tradeoff` (same objectives) a holdout row with its kinds of points. Points only."""
    plt = _pyplot()
    pairs = list(combinations(range(len(names)), 2))
    holdout = tradeoff is not None and list(tradeoff.get("objectives", [])) == list(names)
    n_rows = 2 if holdout else 1
    fig, axes = plt.subplots(n_rows, len(pairs), figsize=(4.2 * len(pairs), 4.0 * n_rows), squeeze=False)
    for c, (i, j) in enumerate(pairs):
        ax = axes[0, c]
        rest = [t for t in done if t.number not in front]
        ax.scatter([t.values[i] for t in rest], [t.values[j] for t in rest], s=10, color="0.6", alpha=0.6,
                   label="trials")
        on = [t for t in done if t.number in front]
        ax.scatter([t.values[i] for t in on], [t.values[j] for t in on], s=60, marker="*", color="tab:red",
                   label="front (non-dominated on all objectives)")
        ax.set_xlabel(f"{names[i]} (dev)")
        ax.set_ylabel(f"{names[j]} (dev)")
        if holdout:
            ax = axes[1, c]
            for kind, style in _HOLDOUT_STYLE.items():
                pts = [p["holdout"] for p in tradeoff["points"] if p.get("kind") == kind]
                if pts:
                    ax.scatter([p[names[i]] for p in pts], [p[names[j]] for p in pts], zorder=3, **style)
            ax.set_xlabel(f"{names[i]} (holdout)")
            ax.set_ylabel(f"{names[j]} (holdout)")
    axes[0, 0].legend(fontsize=7)
    axes[0, 0].set_title("dev: every trial", fontsize=9, loc="left")
    if holdout:
        axes[1, 0].legend(fontsize=7)
        axes[1, 0].set_title("holdout: the quickstart's points (tradeoff.json)", fontsize=9, loc="left")
    fig.suptitle(f"Pareto front over {len(names)} objectives: each pair of objectives, points only")
    return fig


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
