"""PNG plots of benchmark results, where a picture reads better than the table (matplotlib, Agg backend):

- `search_efficiency.png`: best fitness so far over evaluations, per optimizer (median over seeds, min-max band),
  with the 95%-of-best line the efficiency figure counts to;
- `resident_throughput.png`: resident-merge bandwidth next to the copy bandwidth measured beside it, per method;
- `quickstart_tradeoff.png`: the quickstart's holdout trade-off: sources, the paper's grid and the searched front
  on the two axes `runs/quickstart/tradeoff.json` names (written by `evomerge quickstart`).

Each function takes parsed data and a path, writes the PNG and returns its path; none reads anything else.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Mapping

from report import BenchResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def search_efficiency(result: BenchResult, path: Path) -> Path:
    """Median best-so-far curve per optimizer with a min-max band over seeds."""
    plt = _pyplot()
    curves: Mapping[str, list[list[float | None]]] = result.details["curves"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, runs in curves.items():
        n = min(len(c) for c in runs)
        cols = [[c[i] for c in runs if c[i] is not None] for i in range(n)]  # None: no successful candidate yet
        xs = [i + 1 for i in range(n) if cols[i]]
        med = [statistics.median(col) for col in cols if col]
        (line,) = ax.plot(xs, med, label=f"{method} (median of {len(runs)})")
        ax.fill_between(xs, [min(col) for col in cols if col], [max(col) for col in cols if col], alpha=0.15,
                        color=line.get_color())
    goal = result.details.get("goal")
    if goal is not None:
        ax.axhline(goal, color="grey", linestyle="--", linewidth=1, label="95% of the best found")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best fitness so far")
    ax.set_title("search efficiency on the quickstart space")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def resident_throughput(result: BenchResult, path: Path) -> Path:
    """Grouped bars: the merge's GB/s and the copy's GB/s for each (dtype, method, variant), ratio on top."""
    plt = _pyplot()
    rows = result.details["rows"]
    labels = [f"{r['method']}\n{r['dtype']}" + ("\nnaive" if r["variant"] == "naive" else "") for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(rows)), 4.2))
    merge = ax.bar([x - 0.2 for x in xs], [r["merge_gbps"] for r in rows], 0.4, label="resident merge")
    ax.bar([x + 0.2 for x in xs], [r["copy_gbps"] for r in rows], 0.4, label="torch copy (same run)", color="grey")
    for bar, r in zip(merge, rows):
        ax.annotate(f"{r['ratio']:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("GB/s (bytes read + written)")
    ax.set_title("resident merge vs copy bandwidth (number: ratio)")
    ax.legend()
    return _save(fig, path)


def tradeoff(data: Mapping[str, Any], path: Path) -> Path:
    """The quickstart's holdout trade-off on its two axes: sources, grid points (joined in order of weight) and the
    searched front (joined only when there are just these two objectives: a projected front of more is no curve);
    a third objective's value is written beside each grid and front point, and the hypervolumes in the title."""
    plt = _pyplot()
    x_key, y_key = data["axes"]
    others = [o for o in data.get("objectives", []) if o not in (x_key, y_key)]
    fig, ax = plt.subplots(figsize=(7.2, 5.4))
    style = {"source": dict(marker="s", color="black"), "grid": dict(marker="o", color="tab:orange"),
             "front": dict(marker="*", color="tab:blue", s=90)}
    for kind, kw in style.items():
        pts = [p for p in data["points"] if p["kind"] == kind]
        if not pts:
            continue
        xs, ys = [p["holdout"][x_key] for p in pts], [p["holdout"][y_key] for p in pts]
        ax.scatter(xs, ys, label=kind, zorder=3, **kw)
        if kind == "grid" or (kind == "front" and not others):
            order = sorted(range(len(pts)), key=lambda i: xs[i]) if kind == "front" else range(len(pts))
            ax.plot([xs[i] for i in order], [ys[i] for i in order], color=kw["color"], alpha=0.5)
        for k, (p, x, y) in enumerate(zip(pts, xs, ys)):
            text = p["label"]
            if others and kind != "source" and others[0] in p["holdout"]:
                text += f" ({others[0]} {p['holdout'][others[0]]:.2f})"
            # alternate offsets: points of a collapsed grid often coincide
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 5 - 9 * (k % 3)), fontsize=7,
                        color=kw["color"])
    hv = data.get("hypervolume") or {}
    title = "quickstart trade-off on holdout"
    if "grid" in hv and "front" in hv:
        n = len(data.get("objectives", [])) or 2
        title += f"\nhypervolume over the {n} objectives: grid {hv['grid']:.3g}, searched front {hv['front']:.3g}"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"{x_key} (holdout)")
    ax.set_ylabel(f"{y_key} (holdout)")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# which plot reads which benchmark's result
BENCH_PLOTS = {"search_efficiency": search_efficiency, "resident_throughput": resident_throughput}
