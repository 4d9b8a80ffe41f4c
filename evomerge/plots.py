"""`evomerge plot RUN`: PNGs of a run from its ledger — fitness over evaluations, per-set curves, the best genome's
per-layer values as a heatmap, and the Pareto front of multi-objective runs."""

from __future__ import annotations

from pathlib import Path


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the PNGs (default: RUN/plots/) and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    from evomerge.ledger import storage_url
    from evomerge.rundir import read_run

    run_dir = Path(run_dir)
    info = read_run(run_dir)
    space = info.space()
    out = Path(out_dir) if out_dir else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=info.name, storage=storage_url(run_dir))
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    written: list[Path] = []
    if not done:
        return written

    xs = [t.number for t in done]
    ys = [t.values[0] for t in done]
    running, best = [], float("-inf")
    for y in ys:
        best = max(best, y)
        running.append(best)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(xs, ys, s=12, alpha=0.6, label="trial")
    ax.plot(xs, running, color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("fitness (dev)")
    ax.set_title(f"{info.name}: fitness over evaluations")
    ax.legend()
    written.append(_save(fig, out / "fitness.png"))

    sets = sorted({name for t in done for name in (t.user_attrs.get("scores") or {})})
    if sets:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in sets:
            pts = [(t.number, _headline(t.user_attrs["scores"][name])) for t in done if name in t.user_attrs.get("scores", {})]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", linestyle="-", alpha=0.7, label=name)
        ax.set_xlabel("trial")
        ax.set_ylabel("score")
        ax.set_title("per eval set")
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "per_set.png"))

    best_t = max(done, key=lambda t: t.values[0])
    rows, labels = [], []
    for g in space.genes:
        if g.granularity == "global" or g.tensors:
            continue
        for kind in g.modules or (None,):
            vals = [best_t.params[name] for name, k, _ in g.dims(info.n_layers) if k == kind]
            rows.append(g.layer_values(vals, info.n_layers))
            labels.append(g.name + (f".{kind}" if kind else ""))
    if rows:
        fig, ax = plt.subplots(figsize=(max(5, info.n_layers * 0.35), 1 + 0.5 * len(rows)))
        im = ax.imshow(rows, aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xticks(range(info.n_layers))
        ax.set_xlabel("decoder layer")
        ax.set_title(f"best trial {best_t.number}: per-layer values")
        fig.colorbar(im, ax=ax)
        written.append(_save(fig, out / "best_genome.png"))

    if len(study.directions) > 1:
        names = study.metric_names or [f"objective{i}" for i in range(len(study.directions))]
        front = {t.number for t in study.best_trials}
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter([t.values[0] for t in done], [t.values[1] for t in done], s=12, alpha=0.5, label="trial")
        pts = sorted((t.values[0], t.values[1]) for t in done if t.number in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="C3", label="Pareto front")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        ax.legend()
        written.append(_save(fig, out / "pareto.png"))
    return written


def _headline(score) -> float:
    if isinstance(score, dict) and isinstance(score.get("values"), dict):
        score = score["values"]
    if isinstance(score, dict):
        for key in ("value", "gold_prob", "acc"):
            if key in score:
                return float(score[key])
        return float(next(iter(score.values())))
    return float(score)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
