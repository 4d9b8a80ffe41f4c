"""A search run: set-up (space, models, objectives, run directory, optimizer) and the drive that hands the
scheduler (scheduler.py: ask -> dispatch -> record -> tell) a pool of Ray workers (pool.py).

One loop serves a fresh run and a resumed one. On resume the ledger is replayed: the optimizer is rebuilt under the
run's seed and each recorded generation is asked again and told its recorded results (pycma asks the same points
again; Optuna samplers get the recorded trials added), so it reaches the state it would have had; only candidates
with no finished trial (never dispatched, or left RUNNING by a dead driver) are evaluated.

Noise and cost: every candidate sees the same items (one seeded subset per run); a genome equal to an evaluated one
is recorded with that result instead of being evaluated again; at the end the top `finalists` trials are
re-scored on the holdout split and export picks by holdout.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from evomerge.backends.select import plan_for_space
from evomerge.errors import UserError
from evomerge.fitness import Objective, Term, parse_objectives
from evomerge.genome import Genome
from evomerge.holdout import which_fitness
from evomerge.hub import check_configs
from evomerge.ledger import Ledger, fitness_of
from evomerge.optimizers import check_popsize
from evomerge.pool import RayPool, check_local
from evomerge.rundir import RunInfo, RunLock, create_run, engine_for_resume, new_info, read_run
from evomerge.stages import StagedSearch, split_generations
from evomerge.space import Space, load_space


@dataclass(frozen=True)
class SearchOptions:
    """How to run a search (command-line flags; None means "as the space says")."""

    name: str
    runs_dir: Path = Path("runs")
    seed: int = 0
    workers: int = 1
    generations: int | None = None
    popsize: int | None = None
    progress: bool = True
    allow_test_splits: bool = False  # search on a known benchmark's test items (refused by default)
    backend: str = "auto"  # auto (vLLM with a GPU and vllm, else hf), hf or vllm
    optimizer: str | None = None
    max_evals: int | None = None
    max_minutes: float | None = None
    target: float | None = None
    finalists: int | None = None
    address: str | None = None  # an existing Ray cluster ("auto" or host:port); None: a local instance
    pipeline: bool | None = None  # no barrier between generations (None: the space's search.pipeline); a resume
    # keeps the mode the run started with
    tensor_parallel: int | None = None  # ranks per worker (None: the memory plan's smallest size that fits)


@dataclass(frozen=True)
class SearchSummary:
    """What a search (or a resumed stretch of it) did."""

    run_dir: Path
    n_complete: int
    n_failed: int
    best_value: float | None
    best_trial: int | None
    best_per_generation: tuple[float | None, ...]
    stopped: str = "done"  # done | max_evals | max_minutes | target | interrupted
    # best_value / best_trial are what export takes: the best on holdout when finalists were re-checked (then
    # best_value is that trial's dev fitness), else the best dev fitness; the dev leader may be another trial
    dev_best_value: float | None = None
    dev_best_trial: int | None = None
    holdout_value: float | None = None  # best_trial's holdout fitness (None: no finalist re-check)
    n_interrupted: int = 0  # trials a dead driver left running (failed on resume, evaluated again; not in n_failed)
    n_pruned: int = 0  # stopped early by the first pass or racing (not in n_failed)

    def report(self) -> str:
        """The search's last line: what completed, the best dev fitness and, when finalists were re-checked on
        holdout, the trial export takes (chosen on holdout) with both of its fitnesses, so that neither is taken
        for the other."""
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        line = f"{self.n_complete} completed" + (f", {self.n_pruned} pruned" if self.n_pruned else "") + (
            f", {self.n_failed} failed") + (
            f", {self.n_interrupted} interrupted (evaluated again)" if self.n_interrupted else "")
        line += f"; best dev fitness {f(self.dev_best_value)} (trial {self.dev_best_trial})"
        if self.holdout_value is not None:
            same = " (the dev leader)" if self.best_trial == self.dev_best_trial else ""
            line += (f"; export takes trial {self.best_trial}{same}, "
                     f"{which_fitness('holdout', self.best_value, self.holdout_value)}")
        if self.stopped != "done":
            line += f"; stopped: {self.stopped} (continue with evomerge resume {self.run_dir})"
        return line


def ensure_models(space: Space, log: Callable[[str], None] = print) -> None:
    """Build (or refresh) the tiny miniature models when the space asks for them: absent, or a cache of an older
    build format, is built; a current build is reused at once."""
    if space.build_miniature is not None:
        from evomerge.miniature.build import build_miniature, is_current

        if not is_current(Path(space.build_miniature), space.build_seed):
            log(f"building the tiny models in {space.build_miniature} (once; a few minutes on 2 cores) ...")
            build_miniature(Path(space.build_miniature), seed=space.build_seed)
    missing = [m for m in space.models if not m.hub and not (Path(m.ref) / "config.json").is_file()]
    if missing:
        hint = f"point it into {space.build_miniature}" if space.build_miniature else "fix its path in the search space"
        raise UserError(missing[0].path, f"model {missing[0].name!r} not found", hint)


def run_search(space_path: str | Path, opts: SearchOptions) -> SearchSummary:
    """Start a run and drive it; results are in `runs_dir/name/study.db`."""
    space = load_space(space_path)
    if opts.workers < 1:
        raise UserError("--workers", "must be at least 1", "e.g. --workers 2")
    check_popsize(opts.optimizer or space.search.optimizer, opts.popsize or space.search.popsize)
    ensure_models(space)
    n_layers = check_configs(space).n_layers
    load_objectives(space, opts.allow_test_splits)  # validates eval sets and objectives before anything is written
    if opts.address is None:  # a plan or a worker count this machine cannot hold is refused before the run exists
        check_local(space, n_layers, opts.workers, opts.backend, opts.tensor_parallel)
    run_dir = Path(opts.runs_dir) / opts.name
    info = new_info(opts.name, Path(space_path), opts.seed, opts.workers, n_layers)
    create_run(run_dir, info)
    return _drive(run_dir, info, space, opts, fresh=True)


def resume_search(run_dir: str | Path, opts: SearchOptions) -> SearchSummary:
    """Continue a run from its directory alone (after a crash, Ctrl-C, kill -9 or a spent budget)."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    space = info.space()
    ensure_models(space)
    check_configs(space)  # a weight file damaged since the start is named before any worker starts
    backend, tensor_parallel = engine_for_resume(info, opts.backend, opts.tensor_parallel)  # one engine per run
    opts = replace(opts, name=info.name, seed=info.seed, runs_dir=run_dir.parent, workers=opts.workers or info.workers,
                   backend=backend, tensor_parallel=tensor_parallel)
    return _drive(run_dir, info, space, opts, fresh=False)


def plan_search(space_path: str | Path, opts: SearchOptions) -> str:
    """What `evomerge search --dry-run` prints: dimensions, workers, backend and each worker's memory plan. Reads
    the space, its eval sets and the models' config.json files; builds, loads and starts nothing."""
    space = load_space(space_path)
    n_layers = check_configs(space).n_layers
    genome = Genome(tuple(space.expand(n_layers)))
    objs, _, _ = load_objectives(space, opts.allow_test_splits)
    choice, memory = plan_for_space(opts.backend, space, n_layers, opts.workers,
                                    tensor_parallel=opts.tensor_parallel)
    popsize = opts.popsize or space.search.popsize
    generations = opts.generations or space.search.generations
    stages = []
    if space.search.coarse_to_fine is not None:
        g1 = split_generations(generations, popsize, opts.max_evals or space.search.max_evals,
                               space.search.coarse_to_fine)
        stages = [f"coarse to fine: generations 1-{g1} search the uniform view ("
                  + ", ".join(g.name for g in space.uniform_genes()) + f"), {g1 + 1}-{generations} the "
                  "space's genes, started from the uniform stage's best"]
    return "\n".join([f"{space_path}: {len(genome.genes)} dimensions, {n_layers} layers, {space.method} "
                      f"({space.dtype}); {opts.optimizer or space.search.optimizer}, {generations} generations of "
                      f"{popsize}; {opts.workers} worker(s)", *stages,
                      "objectives: " + ", ".join(o.name for o in objs),
                      budget_line(space, generations, popsize, opts), str(choice), memory.describe()])


def budget_line(space: Space, generations: int, popsize: int, opts: SearchOptions) -> str:
    """What `--dry-run` says of the budget: the evaluations in all and whether the seed candidates count toward
    them (they do: the scheduler hands them out in the first generation's slots, scheduler.py `_ask_rest`)."""
    st = space.search
    total = generations * popsize
    max_evals = opts.max_evals or st.max_evals
    line = f"budget: at most {total} evaluations ({generations} generations x {popsize})"
    if max_evals is not None and max_evals < total:
        line += f", capped at {max_evals} by max_evals"
    n = len(space.seeds)
    line += (f"; the {n} seed candidate(s) take slots of the first generation(s) and count toward them" if n else
             "; no seed candidates")
    line += "; a genome equal to an evaluated one is recorded without an evaluation and does not count"
    finalists = opts.finalists if opts.finalists is not None else st.finalists
    if finalists:
        again = f", also every {st.recheck_every} generations" if st.recheck_every else ""
        line += f"; plus {finalists} finalist re-check(s) on holdout at the end{again} (not counted)"
    return line


def load_objectives(space: Space, allow_test_splits: bool) -> tuple[tuple[Objective, ...], dict[str, float], Any]:
    """Load the eval sets (guarding test splits) and build the objectives: declared ones, or one per eval set
    (its card's metric) weighted as the space says."""
    from evomerge.evalsets import guard_test_splits, load_evalset

    sets = [load_evalset(ref.path) for ref in space.eval_sets]
    if space.eval_split == "dev":
        guard_test_splits(sets, allow_test_splits)
    for es in sets:  # an empty split would fail inside every worker: say so before the run starts
        es.select(space.eval_split)
        if space.search.finalists > 0 and space.eval_split == "dev":
            es.select("holdout")
    cards = {es.name: es.card for es in sets}
    if space.search.objectives:
        objs = parse_objectives(space.search.objectives, f"{space.source}: search.objectives", cards)
        weights = dict(space.search.objective_weights or {o.name: 1.0 for o in objs})
    else:
        objs = tuple(Objective(es.name, (Term(es.name, es.card.metric),)) for es in sets)
        weights = {es.name: ref.weight for es, ref in zip(sets, space.eval_sets)}
    return objs, weights, cards


def _drive(run_dir: Path, info: RunInfo, space: Space, opts: SearchOptions, *, fresh: bool) -> SearchSummary:
    n_layers = info.n_layers
    genome = Genome(tuple(space.expand(n_layers)))
    st = space.search
    generations = opts.generations or st.generations
    popsize = opts.popsize or st.popsize
    opt_name = opts.optimizer or st.optimizer
    max_evals = opts.max_evals or st.max_evals
    max_minutes = opts.max_minutes or st.max_minutes
    target = opts.target if opts.target is not None else st.target
    finalists = opts.finalists if opts.finalists is not None else st.finalists
    objs, weights, _ = load_objectives(space, opts.allow_test_splits)
    multi = opt_name == "nsga2"
    names = [o.name for o in objs] if multi else ["fitness"]

    with RunLock(run_dir):
        ledger = Ledger.open(run_dir, info.name, genome.genes, create=fresh, objectives=names)
        if not fresh:
            left = ledger.fail_interrupted()
            if left:
                print(f"{len(left)} trial(s) left running by the previous driver were failed and will be re-asked")
        pipeline = ledger.schedule(st.pipeline if opts.pipeline is None else opts.pipeline)
        pool = RayPool(space, n_layers, run_dir, workers=opts.workers, seed=info.seed, backend=opts.backend,
                       tensor_parallel=opts.tensor_parallel, address=opts.address, objectives=objs, weights=weights,
                       recorded_device=info.device)
        loop = StagedSearch(space, genome, ledger, pool, objs, weights, optimizer=opt_name, seed=info.seed,
                            popsize=popsize, multi=multi, progress=opts.progress, pipeline=pipeline,
                            sigma0=st.sigma0 or 1.0, restarts=st.restarts)
        started = time.monotonic()
        stopped = "done"
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame):  # first Ctrl-C: finish in-flight candidates; second: abort at once
            if loop.interrupted:
                raise KeyboardInterrupt
            loop.interrupt()

        signal.signal(signal.SIGINT, on_sigint)
        try:
            stopped = loop.run(generations, max_evals, max_minutes, target, started,
                               recheck=(st.recheck_every, finalists))
            if stopped != "interrupted" and finalists > 0:
                loop.recheck_finalists(finalists)
        finally:
            signal.signal(signal.SIGINT, previous)
            pool.close()
        return _summary(ledger, run_dir, tuple(loop.per_gen), stopped)


def _summary(ledger: Ledger, run_dir: Path, per_gen: tuple[float | None, ...], stopped: str) -> SearchSummary:
    import optuna

    from evomerge.status import outcomes

    trials = ledger.trials()
    counts = outcomes(run_dir, ledger.study).counts  # as `status` counts them: interrupted and pruned apart
    ok = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = ledger.best() if ok else None
    dev_best = ledger.best(by_holdout=False) if ok else None
    hold = ledger.holdout().get(best.number) if best else None
    return SearchSummary(run_dir, len(ok), counts.get("FAIL", 0), fitness_of(best) if best else None,
                         best.number if best else None, per_gen, stopped,
                         fitness_of(dev_best) if dev_best else None, dev_best.number if dev_best else None,
                         hold["fitness"] if hold else None, counts.get("INTERRUPTED", 0), counts.get("PRUNED", 0))
