"""What the search's no-barrier pipeline costs the optimizer: CMA-ES on test functions in the unit box, told in
three orders, best value after the same number of evaluations (median over seeds):

- barrier:  ask g, tell g, ask g+1 (a generation waits for its last candidate);
- early k:  ask g, ask k points of g+1 one by one, tell g, ask the rest of g+1 (what `search.pipeline` does: k is
            the number of workers that would otherwise wait at g's end, typically workers - 1);
- lagged:   ask g, ask all of g+1, tell g (every point one update old; the simple alternative we rejected).

Test functions, not merges: the orders' effect on CMA-ES is the question, and thousands of evaluations are needed.
Usage: .venv/bin/python bench/pipeline_quality.py [--seeds 10] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import BenchResult, Row, add_arguments, write_json  # noqa: E402


def sphere(x) -> float:
    return -sum((c - 0.3) ** 2 for c in x)


def rastrigin(x) -> float:
    return -sum((10 * (c - 0.3)) ** 2 - 10 * math.cos(20 * math.pi * (c - 0.3)) + 10 for c in x) / 100


def run(f, dim: int, popsize: int, generations: int, seed: int, order: str, early: int = 0) -> float:
    """Best value seen over `generations` generations told in `order` (barrier | early | lagged)."""
    from evomerge.optimizers import make_optimizer

    opt = make_optimizer("cmaes", x0=[0.7] * dim, stds=[0.25] * dim, popsize=popsize, seed=seed)
    best = float("-inf")
    current = opt.ask()
    for g in range(generations):
        last = g + 1 == generations
        if order == "lagged" and not last:
            ahead = opt.ask()
        elif order == "early" and not last:
            ahead = [x for _ in range(early) for x in opt.ask(1)]
        values = [(f(x),) for x in current]
        best = max(best, *(v[0] for v in values))
        opt.tell(current, values)
        if last:
            break
        if order == "barrier":
            current = opt.ask()
        elif order == "early":
            current = ahead + opt.ask(opt.popsize - len(ahead))
        else:
            current = ahead
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--generations", type=int, default=20)
    add_arguments(ap)  # --json PATH, --quick (3 seeds, 8 generations)
    args = ap.parse_args()
    seeds, gens = (3, 8) if args.quick else (args.seeds, args.generations)

    rows: list[Row] = []
    details: dict[str, dict[str, float]] = {}
    print(f"CMA-ES, median best over {seeds} seeds after {gens} generations (higher is better)")
    print(f"{'problem':<24} {'barrier':>9} {'early 1':>9} {'early 3':>9} {'lagged':>9}")
    for fname, f in (("sphere", sphere), ("rastrigin", rastrigin)):
        for dim, pop in ((6, 6), (34, 12)):
            med = {}
            for label, order, k in (("barrier", "barrier", 0), ("early 1", "early", 1), ("early 3", "early", 3),
                                    ("lagged", "lagged", 0)):
                med[label] = statistics.median(run(f, dim, pop, gens, s, order, k) for s in range(1, seeds + 1))
            name = f"{fname} {dim}-d, popsize {pop}"
            details[name] = med
            print(f"{name:<24} " + " ".join(f"{med[k]:>9.4g}" for k in med))
            # regret ratio: distance from the optimum (0) relative to the barrier's; < 1 is better than the barrier
            for label in ("early 1", "early 3", "lagged"):
                ratio = med[label] / med["barrier"] if med["barrier"] else float("nan")
                rows.append(Row(f"{name}: {label} regret / barrier regret", ratio, "x",
                                "<= 1.1" if label.startswith("early") else None,
                                ratio <= 1.1 if label.startswith("early") else None))
    write_json(args.json, BenchResult("pipeline_quality", "pipelined asks vs barrier (CMA-ES)", rows,
                                      details={"seeds": seeds, "generations": gens, "medians": details}))


if __name__ == "__main__":
    main()
