"""Is a per-layer search worth it on the miniature? Grid, uniform search, per-layer search, coarse to fine and
coarse to fine with the instruct weight free, at equal budgets, judged on holdout (issue 15).

Methods (every search: NSGA-II on the three objectives of search_spaces/miniature_tradeoff.yaml, popsize P x G
generations, the same seed per row, on the dev split):
  grid        the paper's four uniform language weights 0.5/1.0/1.5/2.0 with instruct 1.0 (not searched: one row)
  uniform     one uniform language weight (the quickstart's baseline space: `Space.uniform_genes`)
  per_layer   miniature_tradeoff.yaml's genes (a weight per layer, embeddings, head: 6 dimensions)
  coarse      the same genes coarse to fine (search.coarse_to_fine, a third of the generations uniform)
  instruct    miniature_tradeoff_instruct.yaml (the instruct weight free per block as well: 8 dimensions), coarse
              to fine
Each search runs in this process with the search's own scheduler and stages (stages.py `StagedSearch`, a ledger
in a temporary directory, one resident dev `Evaluator` as its pool), so no Ray time is measured. Its dev Pareto
front is re-scored on holdout by holdout.py's `HoldoutScorer` (each item kept for the intervals).

Reported per method: the holdout hypervolume of its front (reference: each objective's minimum over the sources and
the grid, fixed for every seed and method), its mean over seeds and the seeds' range; per seed, the paired bootstrap
95% interval of (method - uniform) hypervolume on the holdout items (stats.py), and how many of the method's front
points some uniform front point dominates / dominate some uniform front point. Usage:

    .venv/bin/python bench/per_layer_value.py [--seeds 5] [--popsize 8] [--generations 6] [--json PATH] [--quick]

`--quick`: 2 seeds, popsize 4 x 4 generations, 12 dev items per set, 200 bootstrap resamples (minutes on 2 cores).
There is no goal: the table goes in the README whatever it shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from report import BenchResult, Row, add_arguments, pick, write_json  # noqa: E402

SPACE = REPO / "search_spaces" / "miniature_tradeoff.yaml"
INSTRUCT_SPACE = REPO / "search_spaces" / "miniature_tradeoff_instruct.yaml"
METHODS = ("uniform", "per_layer", "coarse", "instruct")  # searched; the grid is scored once


class SerialPool:
    """The scheduler's pool (scheduler.py `Pool`) as one in-process evaluator: one candidate at a time."""

    def __init__(self, evaluator: Any, n_layers: int) -> None:
        self.evaluator, self.n_layers = evaluator, n_layers

    def run(self, next_item: Callable[[], Any], start: Callable[[Any], Any],
            should_stop: Callable[[], bool]) -> Iterator[tuple[Any, Any]]:
        while not should_stop():
            item = next_item()
            if item is None:
                return
            yield item, self.evaluator.evaluate(start(item))


def search(space: Any, n_layers: int, pool: SerialPool, objs: tuple, weights: dict, seed: int, popsize: int,
           generations: int, workdir: Path) -> list[Any]:
    """One NSGA-II search (stages as the space says) -> the completed trials of its dev Pareto front."""
    import optuna

    from evomerge.genome import Genome
    from evomerge.ledger import Ledger
    from evomerge.pareto import non_dominated
    from evomerge.stages import StagedSearch

    genome = Genome(tuple(space.expand(n_layers)))
    workdir.mkdir(parents=True)
    ledger = Ledger.open(workdir, "bench", genome.genes, create=True, objectives=[o.name for o in objs])
    loop = StagedSearch(space, genome, ledger, pool, objs, weights, optimizer="nsga2", seed=seed, popsize=popsize,
                        multi=True, progress=False, pipeline=False)
    loop.run(generations)
    done = [t for t in ledger.trials() if t.state == optuna.trial.TrialState.COMPLETE
            and "duplicate_of" not in t.user_attrs]
    front = [done[i] for i in non_dominated([list(t.values) for t in done])]
    unique: dict[tuple, Any] = {}
    for t in front:
        unique.setdefault(tuple(t.values), t)  # equal dev values add nothing to a front
    return list(unique.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=None, help="default 5; --quick: 2")
    ap.add_argument("--popsize", type=int, default=None, help="default 8 (the quickstart's); --quick: 4")
    ap.add_argument("--generations", type=int, default=None, help="default 6 (the quickstart's); --quick: 4")
    ap.add_argument("--max-items", type=int, default=None, help="dev items per set (default: all; --quick: 12)")
    ap.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 2000; --quick: 200)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"searched methods (default {','.join(METHODS)})")
    add_arguments(ap)
    args = ap.parse_args()
    seeds = pick(args.seeds, 5, 2, args.quick)
    popsize = pick(args.popsize, 8, 4, args.quick)
    generations = pick(args.generations, 6, 4, args.quick)
    max_items = pick(args.max_items, None, 12, args.quick)
    resamples = pick(args.resamples, 2000, 200, args.quick)
    methods = [m for m in args.methods.split(",") if m]

    import torch

    from evomerge.hub import check_configs
    from evomerge.holdout import HoldoutScorer
    from evomerge.pareto import dominates, hypervolume
    from evomerge.pool import local_cores
    from evomerge.quickstart import GRID, SOURCES, uniform_space_data, weights_recipe
    from evomerge.search import ensure_models, load_objectives
    from evomerge.space import load_space, parse_space
    from evomerge.stats import hypervolume_difference
    from evomerge.worker import Evaluator, EvaluatorSpec

    torch.set_num_threads(1)  # one thread per process on a shared two-core machine, as the search's workers
    base = load_space(SPACE)
    ensure_models(base)
    n_layers = check_configs(base).n_layers
    objs, weights, _ = load_objectives(base, False)
    names = [o.name for o in objs]
    item_objectives = [{f"{t.set}.{t.metric}": t.weight for t in o.terms} for o in objs]
    coarse = dataclasses.replace(base.search, coarse_to_fine=1 / 3)
    instruct_space = load_space(INSTRUCT_SPACE)
    spaces = {"uniform": parse_space(uniform_space_data(SPACE, base), base.source),
              "per_layer": dataclasses.replace(base, search=dataclasses.replace(base.search, coarse_to_fine=None)),
              "coarse": dataclasses.replace(base, search=coarse),
              "instruct": dataclasses.replace(instruct_space, search=dataclasses.replace(
                  instruct_space.search, coarse_to_fine=instruct_space.search.coarse_to_fine or 1 / 3))}
    template = base.recipe({g.name: g.init for g in base.expand(n_layers)}, n_layers).to_mergekit()
    dev = Evaluator.start(EvaluatorSpec(template, tuple(e.path for e in base.eval_sets), "dev", max_items, 0,
                                        threads=1), worker="bench")
    pool = SerialPool(dev, n_layers)
    # holdout on two processes (this one and a helper) when two cores are free: the searches run serially here
    hold = HoldoutScorer(base, objs, weights, base.search.scalarize, template, 0, processes=min(2, local_cores()))
    started = time.perf_counter()

    fixed = dict(zip([f"source {k}" for k in SOURCES], hold.score_all(
        [(weights_recipe(base, template, *w), k) for k, w in SOURCES.items()])))
    grid = hold.score_all([(weights_recipe(base, template, 1.0, w), f"grid w={w:g}") for w in GRID])
    reference = [min(r.objectives[n] for r in [*fixed.values(), *grid]) for n in names]

    def vec(r: Any) -> list[float]:
        return [r.objectives[n] for n in names]

    hv_grid = hypervolume([vec(r) for r in grid], reference)
    print(f"{len(names)} objectives {names}; reference {[round(x, 3) for x in reference]}; grid hypervolume "
          f"{hv_grid:.4f}; {seeds} seeds x {popsize * generations} evaluations per search")
    per_seed: dict[str, list[dict]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            fronts: dict[str, list[Any]] = {}
            for m in methods:
                t0 = time.perf_counter()
                trials = search(spaces[m], n_layers, pool, objs, weights, seed, popsize, generations,
                                Path(tmp) / f"{m}_{seed}")
                fronts[m] = hold.score_all([(spaces[m].recipe(t.params, n_layers).to_mergekit(),
                                             f"{m} trial {t.number}") for t in trials])
                print(f"  seed {seed} {m:9s}: front of {len(trials)} on dev, holdout hypervolume "
                      f"{hypervolume([vec(r) for r in fronts[m]], reference):.4f} ({time.perf_counter() - t0:.0f} s)")
            for m in methods:
                row: dict[str, Any] = {"seed": seed, "front": len(fronts[m]),
                                       "hypervolume": hypervolume([vec(r) for r in fronts[m]], reference)}
                if m != "uniform" and "uniform" in fronts:
                    iv = hypervolume_difference([r.items for r in fronts[m]], [r.items for r in fronts["uniform"]],
                                                item_objectives, reference, seed=seed, resamples=resamples)
                    row["minus_uniform"] = iv.as_dict()
                    row["dominated_by_uniform"] = sum(any(dominates(vec(u), vec(p)) for u in fronts["uniform"])
                                                      for p in fronts[m])
                    row["dominating_uniform"] = sum(any(dominates(vec(p), vec(u)) for u in fronts["uniform"])
                                                    for p in fronts[m])
                per_seed[m].append(row)
    elapsed = time.perf_counter() - started
    hold.close()

    rows = [Row("grid: holdout hypervolume", hv_grid, note="the paper's 4 uniform weights; one value")]
    print(f"\nholdout hypervolume (reference {[round(x, 3) for x in reference]}), {seeds} seeds, "
          f"{popsize}x{generations} evaluations per search, {elapsed:.0f} s:")
    print(f"  {'grid':9s} {hv_grid:.4f}")
    for m in methods:
        hvs = [r["hypervolume"] for r in per_seed[m]]
        line = f"  {m:9s} mean {statistics.mean(hvs):.4f} (seeds {min(hvs):.4f}-{max(hvs):.4f})"
        note = f"{seeds} seeds, range {min(hvs):.4f}-{max(hvs):.4f}"
        if m != "uniform" and "uniform" in per_seed:
            ivs = [r["minus_uniform"] for r in per_seed[m]]
            above = sum(iv["low"] > 0 for iv in ivs)
            below = sum(iv["high"] < 0 for iv in ivs)
            dom = sum(r["dominated_by_uniform"] for r in per_seed[m])
            doming = sum(r["dominating_uniform"] for r in per_seed[m])
            total = sum(r["front"] for r in per_seed[m])
            per = "; ".join(f"{iv['estimate']:+.4f} [{iv['low']:+.4f}, {iv['high']:+.4f}]" for iv in ivs)
            line += (f"; minus uniform per seed: {per}; above in {above}, below in {below} of {seeds}; front points "
                     f"dominated by the uniform front {dom} of {total}, dominating a uniform point {doming} of {total}")
            rows.append(Row(f"{m} - uniform: seeds whose 95% interval is above zero", above, "seeds",
                            note=f"below zero: {below}; per seed {per}"))
            rows.append(Row(f"{m}: front points dominated by the uniform front", dom, "points",
                            note=f"of {total}; dominating a uniform point: {doming}"))
        print(line)
        rows.insert(1 + methods.index(m), Row(f"{m}: holdout hypervolume (mean)", statistics.mean(hvs), note=note))
    write_json(args.json, BenchResult(
        "per_layer_value", "per-layer value (miniature, holdout)", rows,
        details={"seeds": seeds, "popsize": popsize, "generations": generations, "max_items": max_items,
                 "resamples": resamples, "objectives": names, "reference": reference, "grid": hv_grid,
                 "holdout_items": {k: len(v) for k, v in grid[0].items.items()}, "per_seed": per_seed,
                 "seconds": round(elapsed, 1)}))


if __name__ == "__main__":
    main()
