"""Search efficiency on the quickstart problem: evaluations needed to reach 95% of the best fitness any method found,
median over seeds, for CMA-ES, TPE, NSGA-II and random search.

Candidates are scored in-process by one `Evaluator` (the worker's own code: resident merge + HF scoring) so the
comparison measures the optimizers, not Ray. The fitness is whatever the space declares: its objectives (declared,
or one per eval set) scalarized the way its `search.scalarize` says (weighted mean or min); NSGA-II is told the
objective vector and its curve is the scalar fitness of what it found. A candidate that fails counts as no progress
and the optimizer is told None (the worst), as in a search. Usage:

    .venv/bin/python bench/search_efficiency.py [--seeds 5] [--evals 48] [--popsize 6] [--json PATH] [--quick]

`--quick`: cmaes and random only, 3 seeds of 12 evaluations, popsize 4, 6 dev items per set. Goal (issue 7):
CMA-ES needs at most a third of random search's evaluations.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from report import BenchResult, Row, add_arguments, pick, write_json  # noqa: E402

GOAL = 0.33  # issue 7: cmaes evaluations / random's


def evals_to(curve: list[float], goal: float, budget: int) -> int:
    """Evaluations until the best-so-far curve reaches `goal` (budget + 1 when it never does)."""
    return next((i + 1 for i, v in enumerate(curve) if v >= goal), budget + 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", type=Path, default=REPO / "search_spaces" / "quickstart.yaml")
    ap.add_argument("--seeds", type=int, default=None, help="default 5; --quick: 3")
    ap.add_argument("--evals", type=int, default=None, help="evaluations per run (default 48; --quick: 12)")
    ap.add_argument("--popsize", type=int, default=None, help="default 6; --quick: 4")
    ap.add_argument("--methods", default=None, help="default cmaes,tpe,nsga2,random; --quick: cmaes,random")
    ap.add_argument("--max-items", type=int, default=None,
                    help="items per eval set (default: the space's eval.max_items; --quick: 6)")
    add_arguments(ap)
    args = ap.parse_args()
    args.seeds = pick(args.seeds, 5, 3, args.quick)
    args.evals = pick(args.evals, 48, 12, args.quick)
    args.popsize = pick(args.popsize, 6, 4, args.quick)
    args.methods = pick(args.methods, "cmaes,tpe,nsga2,random", "cmaes,random", args.quick)

    from evomerge.fitness import objectives, scalarize
    from evomerge.genome import Genome
    from evomerge.hub import check_configs
    from evomerge.optimizers import make_optimizer
    from evomerge.search import ensure_models, load_objectives
    from evomerge.space import load_space
    from evomerge.worker import Candidate, Evaluator, EvaluatorSpec

    space = load_space(args.space)
    ensure_models(space)
    n = check_configs(space).n_layers
    genome = Genome(tuple(space.expand(n)))
    objs, weights, _ = load_objectives(space, False)
    how = space.search.scalarize
    max_items = pick(args.max_items, space.max_items, 6, args.quick)
    template = space.recipe({g.name: g.init for g in genome.genes}, n).to_mergekit()
    ev = Evaluator.start(EvaluatorSpec(template, tuple(e.path for e in space.eval_sets), space.eval_split,
                                       max_items, 0, threads=2))
    print(f"{args.space.name}: {genome.dim} dimensions, objectives {[o.name for o in objs]} ({how}), "
          f"{max_items or 'all'} items per set")

    def fitness(x) -> tuple[float, list[float] | None]:
        """(scalar fitness, objective vector); (-inf, None) for a failed candidate."""
        res = ev.evaluate(Candidate(0, space.recipe(genome.decode(x), n).to_mergekit()))
        if res.error is not None:
            print(f"  candidate failed: {res.error.splitlines()[0][:200]}")
            return float("-inf"), None
        o = objectives(res.scores, objs)
        f = scalarize(o, weights, how)
        return (f, [o[k.name] for k in objs]) if math.isfinite(f) else (float("-inf"), None)

    curves: dict[str, list[list[float]]] = {}
    start = time.perf_counter()
    for method in args.methods.split(","):
        multi = method == "nsga2" and len(objs) > 1
        for seed in range(args.seeds):
            opt = make_optimizer(method, x0=genome.initial(), stds=genome.stds(), popsize=args.popsize, seed=seed,
                                 n_objectives=len(objs) if multi else 1)
            best, curve = float("-inf"), []
            while len(curve) < args.evals:
                xs = opt.ask()
                vals = []
                for x in xs:
                    f, vec = fitness(x)
                    vals.append(None if vec is None else (vec if multi else [f]))
                    best = max(best, f)
                    curve.append(best)
                opt.tell(xs, vals)
            curves.setdefault(method, []).append(curve[: args.evals])
    top = max(c[-1] for cs in curves.values() for c in cs)
    goal = 0.95 * top if top >= 0 else 1.05 * top  # 95% of the way for negative fitness (e.g. -bits per byte)
    print(f"best fitness found by any method: {top:.4f}; 95% of it: {goal:.4f}; {args.evals} evaluations per run, "
          f"popsize {args.popsize}, {args.seeds} seeds ({time.perf_counter() - start:.0f} s)")
    med, needs = {}, {}
    rows = []
    for method, cs in curves.items():
        need = [evals_to(c, goal, args.evals) for c in cs]
        med[method], needs[method] = statistics.median(need), need
        final = statistics.median(c[-1] for c in cs)
        print(f"  {method:8s} evaluations to 95%: median {med[method]:5.1f}  (per seed {need}; "
              f"{args.evals + 1} = not reached)  final best median {final:.4f}")
        rows.append(Row(f"{method}: evaluations to 95% of the best (median)", med[method], "evals",
                        note=f"{args.seeds} seeds of {args.evals}; final best {final:.4f}"))
    if "random" in med and "cmaes" in med:
        ratio = med["cmaes"] / med["random"]
        print(f"cmaes / random evaluations: {ratio:.2f} (goal <= {GOAL})")
        rows.append(Row("cmaes / random evaluations", ratio, "", f"<= {GOAL}", ratio <= GOAL))
    # -inf (no candidate succeeded yet) is not JSON: None instead
    finite = {m: [[v if math.isfinite(v) else None for v in c] for c in cs] for m, cs in curves.items()}
    write_json(args.json, BenchResult(
        "search_efficiency", "search efficiency", rows,
        details={"space": str(args.space), "objectives": [o.name for o in objs], "scalarize": how,
                 "evals": args.evals, "popsize": args.popsize, "seeds": args.seeds, "max_items": max_items,
                 "best": top, "goal": goal, "evals_to_goal": needs,
                 "curves": finite}))


if __name__ == "__main__":
    main()
