"""The search loop: ask the optimizer -> dispatch candidates to Ray workers -> record each result -> tell.

Every candidate becomes a trial of the run's Optuna study the moment it is dispatched, and is closed the moment its
result arrives, so the study is always the up-to-date record of the run.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from evomerge.errors import UserError
from evomerge.fitness import scalar_fitness
from evomerge.genome import Genome
from evomerge.ledger import Ledger
from evomerge.optimizer import CmaEs
from evomerge.rundir import create_run, new_info
from evomerge.hub import check_configs
from evomerge.space import Space, load_space
from evomerge.worker import Candidate, CandidateResult, EvaluatorSpec


@dataclass(frozen=True)
class SearchOptions:
    """How to run a search (command-line flags)."""

    name: str
    runs_dir: Path = Path("runs")
    seed: int = 0
    workers: int = 1
    generations: int | None = None  # None: the space's search.generations
    popsize: int | None = None
    progress: bool = True


@dataclass(frozen=True)
class SearchSummary:
    """What a finished search did."""

    run_dir: Path
    n_complete: int
    n_failed: int
    best_value: float | None
    best_trial: int | None
    best_per_generation: tuple[float | None, ...]


def ensure_models(space: Space, log: Callable[[str], None] = print) -> None:
    """Build the tiny miniature models when the space asks for them and any model is absent."""
    missing = [m for m in space.models if not m.hub and not (Path(m.ref) / "config.json").is_file()]
    if not missing:
        return
    if space.build_miniature is None:
        raise UserError(missing[0].path, f"model {missing[0].name!r} not found", "fix its path in the search space")
    from evomerge.miniature.build import build_miniature

    log(f"building the tiny models in {space.build_miniature} (once; a minute or two on 2 cores) ...")
    build_miniature(Path(space.build_miniature), seed=space.build_seed)
    still = [m for m in space.models if not m.hub and not (Path(m.ref) / "config.json").is_file()]
    if still:
        raise UserError(still[0].path, f"model {still[0].name!r} is not among the built tiny models",
                        f"point it into {space.build_miniature}")


def run_search(space_path: str | Path, opts: SearchOptions) -> SearchSummary:
    """Run a whole search and return its summary; results are in `runs_dir/name/study.db`."""
    space = load_space(space_path)
    if opts.workers < 1:
        raise UserError("--workers", "must be at least 1", "e.g. --workers 2")
    ensure_models(space)
    n_layers = check_configs(space).n_layers
    genome = Genome(tuple(space.expand(n_layers)))
    generations = opts.generations or space.search.generations
    popsize = opts.popsize or space.search.popsize
    metrics, weights = _set_metrics(space)  # validates the eval sets before anything is written
    run_dir = Path(opts.runs_dir) / opts.name
    create_run(run_dir, new_info(opts.name, Path(space_path), opts.seed, opts.workers, n_layers))
    ledger = Ledger.open(run_dir, opts.name, genome.genes, create=True)
    optimizer = CmaEs(genome.initial(), genome.stds(), popsize=popsize, seed=opts.seed,
                      sigma0=space.search.sigma0 or 1.0)

    template = space.recipe({g.name: g.init for g in genome.genes}, n_layers).to_mergekit()
    spec = EvaluatorSpec(template, tuple(e.path for e in space.eval_sets), space.eval_split, space.max_items,
                         opts.seed, threads=max(1, (os.cpu_count() or 1) // opts.workers))

    import ray
    from tqdm import tqdm

    from evomerge.worker import actor_class

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=opts.workers, include_dashboard=False, log_to_driver=False, configure_logging=True,
             logging_level="ERROR")
    try:
        actor = actor_class(num_cpus=1)
        actors = [actor.remote(spec, f"worker-{i}") for i in range(opts.workers)]
        bar = tqdm(total=generations * popsize, desc=f"search {opts.name}", unit="cand", disable=not opts.progress,
                   file=sys.stderr, dynamic_ncols=True)
        best, per_gen, n_ok, n_fail = None, [], 0, 0
        # seed candidates (the paper's settings) go first: pycma returns injected points at the head of ask()
        pending = [(s.name, genome.encode(space.seed_values(s, n_layers))) for s in space.seeds]
        for gen in range(generations):
            batch, pending = pending[:popsize], pending[popsize:]
            if batch:
                optimizer.inject([x for _, x in batch])
            xs = optimizer.ask()
            fitness: dict[int, float | None] = {}
            order = []
            queue = deque()
            for i, x in enumerate(xs):
                values = genome.decode(x)
                recipe = space.recipe(values, n_layers).to_mergekit()
                attrs = {"generation": gen, "index": i, "genome": x}
                if i < len(batch) and max(abs(a - b) for a, b in zip(x, batch[i][1])) < 0.05:  # pycma nudges points on a bound
                    attrs["seed_candidate"] = batch[i][0]
                number = ledger.start(values, attrs)
                order.append(number)
                queue.append(Candidate(number, recipe))
            for result in _dispatch(ray, actors, queue):
                value = None
                if result.ok:
                    value = scalar_fitness(result.scores, metrics, weights)
                ledger.finish(result, value)
                fitness[result.number] = value if result.ok else None
                n_ok, n_fail = n_ok + result.ok, n_fail + (not result.ok)
                if value is not None and (best is None or value > best):
                    best = value
                bar.update(1)
                bar.set_postfix(best=f"{best:.4f}" if best is not None else "-", failed=n_fail)
            optimizer.tell(xs, [fitness[n] for n in order])
            gen_best = max((v for v in fitness.values() if v is not None), default=None)
            per_gen.append(gen_best)
            bar.write(f"generation {gen + 1}/{generations}: best {_fmt(gen_best)}, best so far {_fmt(best)}")
        bar.close()
    finally:
        ray.shutdown()
    best_trial = ledger.best().number if n_ok else None
    return SearchSummary(run_dir, n_ok, n_fail, best, best_trial, tuple(per_gen))


def _dispatch(ray, actors, queue: deque):
    """Hand candidates to whichever worker is free; yield results as they come back."""
    idle = list(actors)
    inflight = {}
    while queue or inflight:
        while queue and idle:
            actor, cand = idle.pop(), queue.popleft()
            inflight[actor.evaluate.remote(cand)] = (actor, cand)
        done, _ = ray.wait(list(inflight), num_returns=1)
        for ref in done:
            actor, cand = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a dead worker fails its candidate, not the run
                result = CandidateResult(cand.number, error=f"worker failed: {type(e).__name__}: {e}"[:500])
            idle.append(actor)
            yield result


def _set_metrics(space: Space) -> tuple[dict[str, str], dict[str, float]]:
    from evomerge.evalsets import load_evalset

    metrics, weights = {}, {}
    for ref in space.eval_sets:
        es = load_evalset(ref.path)
        metrics[es.name], weights[es.name] = es.card.metric, ref.weight
    return metrics, weights


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
