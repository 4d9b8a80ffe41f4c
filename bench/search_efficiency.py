"""Search efficiency on the quickstart problem: evaluations needed to reach 95% of the best fitness any method found,
median over seeds, for CMA-ES, TPE, NSGA-II and random search.

Candidates are scored in-process by one `Evaluator` (the worker's own code: resident merge + HF scoring) so the
comparison measures the optimizers, not Ray. Usage:
    .venv/bin/python bench/search_efficiency.py [--seeds 5] [--evals 48] [--popsize 6]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--evals", type=int, default=48)
    ap.add_argument("--popsize", type=int, default=6)
    ap.add_argument("--methods", default="cmaes,tpe,nsga2,random")
    args = ap.parse_args()

    from evomerge.fitness import objectives, scalarize
    from evomerge.genome import Genome
    from evomerge.hub import check_configs
    from evomerge.optimizers import make_optimizer
    from evomerge.search import _objectives, ensure_models
    from evomerge.space import load_space
    from evomerge.worker import Candidate, Evaluator, EvaluatorSpec

    space = load_space(REPO / "search_spaces" / "quickstart.yaml")
    ensure_models(space)
    n = check_configs(space).n_layers
    genome = Genome(tuple(space.expand(n)))
    objs, weights, _ = _objectives(space, False)
    template = space.recipe({g.name: g.init for g in genome.genes}, n).to_mergekit()
    ev = Evaluator.start(EvaluatorSpec(template, tuple(e.path for e in space.eval_sets), "dev", None, 0, threads=2))

    def fitness(x) -> tuple[float, list[float]]:
        res = ev.evaluate(Candidate(0, space.recipe(genome.decode(x), n).to_mergekit()))
        o = objectives(res.scores, objs)
        return scalarize(o, weights), [o[k.name] for k in objs]

    curves: dict[str, list[list[float]]] = {}
    start = time.perf_counter()
    for method in args.methods.split(","):
        for seed in range(args.seeds):
            opt = make_optimizer(method, x0=genome.initial(), stds=genome.stds(), popsize=args.popsize, seed=seed,
                                 n_objectives=len(objs) if method == "nsga2" else 1)
            best, curve = float("-inf"), []
            while len(curve) < args.evals:
                xs = opt.ask()
                vals = []
                for x in xs:
                    f, vec = fitness(x)
                    vals.append(vec if method == "nsga2" else [f])
                    best = max(best, f)
                    curve.append(best)
                opt.tell(xs, vals)
            curves.setdefault(method, []).append(curve[: args.evals])
    top = max(c[-1] for cs in curves.values() for c in cs)
    goal = 0.95 * top
    print(f"best fitness found by any method: {top:.4f}; 95% of it: {goal:.4f}; {args.evals} evaluations per run, "
          f"popsize {args.popsize}, {args.seeds} seeds ({time.perf_counter() - start:.0f} s)")
    med = {}
    for method, cs in curves.items():
        need = [next((i + 1 for i, v in enumerate(c) if v >= goal), args.evals + 1) for c in cs]
        med[method] = statistics.median(need)
        print(f"  {method:8s} evaluations to 95%: median {med[method]:5.1f}  (per seed {need}; "
              f"{args.evals + 1} = not reached)  final best median {statistics.median(c[-1] for c in cs):.4f}")
    if "random" in med and "cmaes" in med:
        print(f"cmaes / random evaluations: {med['cmaes'] / med['random']:.2f} (goal <= 0.33)")


if __name__ == "__main__":
    main()
