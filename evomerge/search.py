"""The search loop: ask the optimizer -> dispatch candidates to free Ray workers -> record each result -> tell.

One loop serves a fresh run and a resumed one. On resume the ledger is replayed: the optimizer is rebuilt under the
run's seed and each recorded generation is asked again and told its recorded results (pycma asks the same points
again; Optuna samplers get the recorded trials added), so it reaches the state it would have had; only candidates
with no finished trial (never dispatched, or left RUNNING by a dead driver) are evaluated.

Noise and cost: every candidate sees the same items (one seeded subset per run); a genome equal to an evaluated one
is recorded with that result instead of being evaluated again; at the end the top `finalists` trials are
re-scored on the holdout split and export picks by holdout.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from evomerge.backends.select import plan_for_space
from evomerge.errors import UserError
from evomerge.fitness import Objective, Term, objectives as compute_objectives, parse_objectives, scalarize
from evomerge.genome import Genome
from evomerge.hub import check_configs
from evomerge.ledger import Ledger, fitness_of
from evomerge.optimizers import CmaEs, make_optimizer
from evomerge.rundir import RunInfo, RunLock, create_run, new_info, read_run
from evomerge.space import Space, load_space
from evomerge.worker import Candidate, CandidateResult, EvaluatorSpec


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
    ensure_models(space)
    n_layers = check_configs(space).n_layers
    load_objectives(space, opts.allow_test_splits)  # validates eval sets and objectives before anything is written
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
    opts = replace(opts, name=info.name, seed=info.seed, runs_dir=run_dir.parent, workers=opts.workers or info.workers)
    return _drive(run_dir, info, space, opts, fresh=False)


def plan_search(space_path: str | Path, opts: SearchOptions) -> str:
    """What `evomerge search --dry-run` prints: dimensions, workers, backend and each worker's memory plan. Reads
    the space, its eval sets and the models' config.json files; builds, loads and starts nothing."""
    space = load_space(space_path)
    n_layers = check_configs(space).n_layers
    genome = Genome(tuple(space.expand(n_layers)))
    objs, _, _ = load_objectives(space, opts.allow_test_splits)
    choice, memory = plan_for_space(opts.backend, space, n_layers, opts.workers)
    popsize = opts.popsize or space.search.popsize
    generations = opts.generations or space.search.generations
    return "\n".join([f"{space_path}: {len(genome.genes)} dimensions, {n_layers} layers, {space.method} "
                      f"({space.dtype}); {opts.optimizer or space.search.optimizer}, {generations} generations of "
                      f"{popsize}; {opts.workers} worker(s)",
                      "objectives: " + ", ".join(o.name for o in objs),
                      str(choice), memory.describe()])


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


class _Stop(Exception):
    """Raised inside the loop to end the run early with a reason."""


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
        optimizer = make_optimizer(opt_name, x0=genome.initial(), stds=genome.stds(), popsize=popsize,
                                   seed=info.seed, n_objectives=len(names), sigma0=st.sigma0 or 1.0,
                                   restarts=st.restarts)
        pipeline = ledger.schedule(st.pipeline if opts.pipeline is None else opts.pipeline)
        pool = _Pool(space, info, opts, n_layers)
        loop = _Loop(space, genome, ledger, optimizer, pool, objs, weights, st.scalarize, multi, opts.progress,
                     pipeline)
        started = time.monotonic()
        stopped = "done"
        try:
            stopped = loop.run(generations, popsize, max_evals, max_minutes, target, started,
                               recheck=(st.recheck_every, finalists))
            if stopped != "interrupted" and finalists > 0:
                loop.recheck_finalists(finalists)
        finally:
            pool.close()
        return loop.summary(run_dir, stopped)


class _Pool:
    """Ray workers, started on first use (a fully replayed resume needs none).

    A worker that dies (out of memory, a driver error, killed) is replaced by a fresh one from the same spec, and
    its candidates (the one it ran and the one queued behind it) are tried once more; a candidate whose second try fails too is a failed result, and the run goes
    on. A candidate that raises inside a live worker is already a failed result (worker.py) and is not retried.
    """

    TRIES = 2  # a candidate's tries before it is recorded as failed (only a worker's death costs a try)
    DEPTH = 2  # candidates handed to a worker at once: no idle gap while the driver records a result

    def __init__(self, space: Space, info: RunInfo, opts: SearchOptions, n_layers: int) -> None:
        self.space, self.info, self.opts, self.n_layers = space, info, opts, n_layers
        self.actors: list = []
        self.ray = None
        self._make: Callable[[str], Any] | None = None  # a new worker actor, by name (set by start)
        self._started = 0  # workers made so far, dead ones included (names the next one)

    def start(self) -> None:
        if self.actors:
            return
        import ray

        from evomerge.worker import actor_class

        choice, memory = plan_for_space(self.opts.backend, self.space, self.n_layers, self.opts.workers)
        print(choice if memory.fits else f"{choice}; memory plan: DOES NOT FIT: {memory.reason}")
        g0 = {g.name: g.init for g in self.space.expand(self.n_layers)}
        template = self.space.recipe(g0, self.n_layers).to_mergekit()
        objs, weights, _ = load_objectives(self.space, True)  # already guarded by the caller
        spec = EvaluatorSpec(template, tuple(e.path for e in self.space.eval_sets), self.space.eval_split,
                             self.space.max_items, self.info.seed,
                             threads=max(1, (os.cpu_count() or 1) // self.opts.workers), backend=choice.name,
                             memory=memory, first_pass_items=self.space.search.first_pass_items,
                             objectives=tuple(objs), objective_weights=dict(weights),
                             scalarize=self.space.search.scalarize)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=True,
                                      logging_level="ERROR")
        try:
            if self.opts.address:
                ray.init(address=self.opts.address, **kwargs)
            else:
                ray.init(num_cpus=self.opts.workers, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise UserError("--address", f"cannot join the Ray cluster ({e})", "check the address, or drop --address") from None
        self.ray = ray
        actor = actor_class(num_cpus=1, num_gpus=memory.tensor_parallel if memory.device == "cuda" else 0)
        self._make = lambda name: actor.remote(spec, name)
        self.actors = [self._spawn() for _ in range(self.opts.workers)]

    def _spawn(self):
        """A new worker actor (it loads the sources before its first candidate runs)."""
        self._started += 1
        return self._make(f"worker-{self._started - 1}")

    def _replace(self, dead):
        """Kill what is left of a dead worker and start another in its place."""
        try:
            self.ray.kill(dead, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        new = self._spawn()
        self.actors = [new if a is dead else a for a in self.actors]
        return new

    def run(self, next_item: Callable[[], Any], start: Callable[[Any], Candidate], should_stop: Callable[[], bool]):
        """Keep every worker fed: each holds up to DEPTH candidates (the one it runs, and the next, which it starts
        the moment the first ends, while the driver records the result), and a free slot is filled at once (a
        trial is opened at hand-over). Yields (item, result) as results come back. `next_item()` gives the next
        thing to evaluate, or None when nothing is ready (the caller's state changes between yields, so None now
        may be an item later). Stops handing out when should_stop() turns true; what was handed out still comes
        back. Workers start on the first item (a fully replayed resume starts none)."""
        free: list | None = None  # one entry per free slot of a worker
        inflight: dict = {}  # ref -> (actor, item, candidate, tries so far)
        retry: list = []  # (item, candidate, tries): trials already open whose worker died; they go first
        replaced: dict[int, Any] = {}  # id(dead worker) -> the worker started in its place
        while True:
            while (free is None or free) and (retry or not should_stop()):
                if retry:
                    item, cand, tries = retry.pop(0)
                else:
                    item = next_item()
                    if item is None:
                        break
                    if free is None:
                        self.start()
                        free = [a for _ in range(self.DEPTH) for a in self.actors]
                    cand, tries = start(item), 0
                actor = free.pop(0)
                inflight[actor.evaluate.remote(cand)] = (actor, item, cand, tries + 1)
            if not inflight:
                return
            ray = self.ray
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                actor, item, cand, tries = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a dead worker fails its candidates, not the run
                    if isinstance(e, ray.exceptions.RayActorError):
                        dead = actor
                        if id(dead) not in replaced:
                            replaced[id(dead)] = self._replace(dead)
                        actor = replaced[id(dead)]
                        free = [actor if a is dead else a for a in free]  # its free slots, and this one, move over
                    # a fresh worker goes to the back of the line, so a retry lands elsewhere when one is free
                    free.append(actor)
                    if tries < self.TRIES:
                        retry.append((item, cand, tries))
                        continue
                    result = CandidateResult(cand.number, error=f"worker failed {tries} times; last: "
                                             f"{type(e).__name__}: {e}"[:500])
                else:
                    free.append(actor)
                yield item, result

    def close(self) -> None:
        if self.ray is not None:
            self.ray.shutdown()


@dataclass(frozen=True)
class _Done:
    """What dedup needs of an evaluated candidate (the shape of an Optuna FrozenTrial's fields it reads)."""

    number: int
    values: list[float]
    user_attrs: dict


@dataclass
class _Item:
    """A candidate of a generation, to be dispatched."""

    gen: int
    index: int
    x: list[float]
    values: dict[str, float]
    seed_name: str | None
    early: bool = False  # asked before the previous generation was told (pipeline)


@dataclass(frozen=True)
class _Recheck:
    """A finalist to re-score on the holdout split."""

    trial: Any  # an Optuna FrozenTrial


@dataclass
class _Gen:
    """One generation between its first ask and its tell."""

    number: int
    items: list[tuple[int, list[float]]]  # (index, point) as asked: what the tell reports on
    told: dict[int, list[float] | None]  # index -> objective values (None: failed or pruned)
    queue: list[_Item]  # candidates not yet handed to a worker
    early: int = 0  # points asked one by one before the previous generation was told
    asked: bool = False  # the whole generation has been asked
    replayed: set[int] = field(default_factory=set)  # Optuna: indices given back from the record (not told again)

    @property
    def complete(self) -> bool:
        return self.asked and len(self.told) == len(self.items)


class _Loop:
    """Ask -> dispatch -> record -> tell, with no worker waiting at a generation's end.

    With `pipeline` on, a worker that would wait for the last candidates of generation g (all handed out, not all
    back) gets a point of generation g+1 instead, asked on the spot from the optimizer's current distribution (one
    update older than the rest of g+1, which is asked once g is told). So only those few points are sampled
    "early", and the optimizer keeps its per-generation updates (for pycma this loses nothing measurable:
    bench/search_efficiency.py). Each early point is recorded as such (trial attribute `early`), so that a resume
    replays the exact order of asks and tells: ask g, [ask 1 point of g+1] x early(g+1), tell g, ask the rest of
    g+1, ... Without `pipeline` (or when nothing would wait): ask g, tell g, ask g+1 (a barrier, as
    mergekit-evolve's pool has).
    """

    def __init__(self, space, genome, ledger, optimizer, pool, objs, weights, how, multi, progress,
                 pipeline: bool = True) -> None:
        self.space, self.genome, self.ledger, self.optimizer, self.pool = space, genome, ledger, optimizer, pool
        self.objs, self.weights, self.how, self.multi, self.progress = objs, weights, how, multi, progress
        self.pipeline = pipeline
        self.per_gen: list[float | None] = []
        self.evaluated = 0
        self.interrupted = False

    def _key(self, values) -> tuple:
        return tuple(round(float(values[g.name]), 10) for g in self.genome.genes)

    def _outcome(self, scores) -> tuple[list[float], float, dict[str, float]]:
        objs = compute_objectives(scores, self.objs)
        fit = scalarize(objs, self.weights, self.how)
        return ([objs[o.name] for o in self.objs] if self.multi else [fit]), fit, objs

    def run(self, generations, popsize, max_evals, max_minutes, target, started, recheck=(None, 0)) -> str:
        import optuna
        from tqdm import tqdm

        trials = self.ledger.trials()
        interrupted = set(self.ledger.interrupted())
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
        self.record = {(t.user_attrs.get("generation"), t.user_attrs.get("index")): t for t in trials
                       if t.state in finished and t.number not in interrupted and "generation" in t.user_attrs}
        self.cache = {self._key(t.params): t for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
        self.early_record: dict[int, int] = {}  # generation -> points of it asked early (any state: the order)
        for t in trials:
            if t.user_attrs.get("early"):
                gen = t.user_attrs["generation"]
                self.early_record[gen] = max(self.early_record.get(gen, 0), t.user_attrs["index"] + 1)
        # evaluations spent: finished before this driver, plus every candidate this driver hands out (counted at
        # hand-over: a worker holds two at a time, and the budget must not be overrun by the one queued)
        self.evaluated = sum(1 for t in trials if t.state in finished and "duplicate_of" not in t.user_attrs)
        self.best = max((fitness_of(t) for t in self.cache.values()), default=None)
        self.fp_best = max((t.user_attrs["first_pass"] for t in trials if "first_pass" in t.user_attrs), default=None)
        self.obj_best: dict[str, float] = {}  # best value seen per objective, for the progress bar
        self.replayable = isinstance(self.optimizer, CmaEs)  # pycma: re-asking under the seed gives the same points
        n_layers = self.pool.n_layers
        self.pending_seeds = [(s.name, self.genome.encode(self.space.seed_values(s, n_layers)))
                              for s in self.space.seeds]
        self.generations, self.popsize, self.recheck = generations, popsize, recheck
        self.open: list[_Gen] = []
        self.next_gen = 0
        self.rechecks: list[_Recheck] = []
        self.bar = tqdm(total=generations * popsize, desc="search", unit="cand", disable=not self.progress,
                        file=sys.stderr, dynamic_ncols=True)
        stop: dict[str, str | None] = {"why": None}

        def should_stop() -> bool:
            if self.interrupted:
                stop["why"] = "interrupted"
            elif max_evals is not None and self.evaluated >= max_evals:
                stop["why"] = "max_evals"
            elif max_minutes is not None and time.monotonic() - started > max_minutes * 60:
                stop["why"] = "max_minutes"
            elif target is not None and self.best is not None and self.best >= target:
                stop["why"] = "target"
            return stop["why"] is not None

        self.should_stop = should_stop
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame):  # first Ctrl-C: finish in-flight candidates; second: abort at once
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            self.bar.write("interrupted: recording the candidates in flight, then stopping (Ctrl-C again aborts)")

        signal.signal(signal.SIGINT, on_sigint)
        try:
            for item, result in self.pool.run(self._next_item, self._start, should_stop):
                if isinstance(item, _Recheck):
                    fit = self._record_holdout(item.trial, result)
                    self.bar.write(f"holdout re-check of trial {item.trial.number}: {_fmt(fit)}")
                else:
                    self._record(item, result)
            self._advance()  # tells what the last results completed
            if self.open or self.next_gen < generations:  # stopped early: the rest waits for `evomerge resume`
                gen = self.open[0].number if self.open else self.next_gen
                self.bar.write(f"stopped ({stop['why']}) in generation {gen + 1}; continue with `evomerge resume`")
                return stop["why"] or "interrupted"
            return "done"
        finally:
            signal.signal(signal.SIGINT, previous)
            self.bar.close()

    # -- scheduling: what to hand out next, and the optimizer's asks and tells in their one order ---------------

    def _next_item(self) -> _Item | _Recheck | None:
        self._advance()
        if self.rechecks:
            return self.rechecks.pop(0)
        for g in self.open:
            if g.queue:
                return g.queue.pop(0)
        return self._ask_early()  # a worker is free and nothing is queued

    def _advance(self) -> None:
        """Start, replay and tell generations as far as the results allow (early points are asked live only by
        `_ask_early`, for a free worker)."""
        while True:
            if not self.open:
                if self.next_gen >= self.generations or self.should_stop():
                    return
                self.open.append(self._new_gen())
                self._ask_rest(self.open[0])
            elif self._replay_early():
                continue
            elif self.open[0].complete:
                self._close(self.open.pop(0))
                if self.open:  # the next generation was started early: the rest of it comes from the update
                    self._ask_rest(self.open[0])
            else:
                return

    def _new_gen(self) -> _Gen:
        """The next generation; an Optuna sampler is given back its recorded trials first."""
        g = _Gen(self.next_gen, [], {}, [])
        self.next_gen += 1
        if not self.replayable:
            recorded = sorted((t for (n, _), t in self.record.items() if n == g.number),
                              key=lambda t: t.user_attrs["index"])
            if recorded:
                self.optimizer.replay([t.user_attrs["genome"] for t in recorded], [self._told(t) for t in recorded])
                for t in recorded:
                    i = t.user_attrs["index"]
                    g.items.append((i, t.user_attrs["genome"]))
                    g.told[i] = self._told(t)
                    g.replayed.add(i)
                self.bar.update(len(recorded))
        return g

    def _ask_early(self) -> _Item | None:
        """A point of the next generation for a free worker, or None: only while generation g is all handed out
        and not yet told, and the next generation is not yet full."""
        while self.pipeline and self.open and not self.should_stop():
            g = self.open[0]
            if not g.asked or g.queue or g.complete:
                return None
            if len(self.open) == 1:
                if self.next_gen >= self.generations:
                    return None
                self.open.append(self._new_gen())
            nxt = self.open[1]
            if len(nxt.items) >= self.optimizer.popsize:
                return None
            self._ask_one(nxt)
            if nxt.queue:
                return nxt.queue.pop(0)
        return None

    def _replay_early(self) -> bool:
        """On resume (pycma): ask the next generation's recorded early points where the original run asked them in
        the order of calls, i.e. once generation g is all handed out and before g is told."""
        if not self.replayable or not self.open:
            return False
        g = self.open[0]
        nxt_early = self.open[1].early if len(self.open) == 2 else 0
        if not g.asked or g.queue or self.early_record.get(g.number + 1, 0) <= nxt_early:
            return False
        if len(self.open) == 1:
            self.open.append(self._new_gen())
        self._ask_one(self.open[1])
        return True

    def _ask_one(self, g: _Gen) -> None:
        g.early += 1
        self._take(g, self.optimizer.ask(1), early=True)

    def _ask_rest(self, g: _Gen) -> None:
        """Ask the rest of generation g (all of it when none was asked early)."""
        n = self.optimizer.popsize - len(g.items)
        batch, self.pending_seeds = self.pending_seeds[:max(0, n)], self.pending_seeds[max(0, n):]
        if batch:
            self.optimizer.inject([x for _, x in batch])
        self._take(g, self.optimizer.ask(n) if n > 0 else [], early=False, batch=batch)
        g.asked = True

    def _take(self, g: _Gen, xs: list[list[float]], *, early: bool, batch: list = ()) -> None:
        """Index the asked points; each is found in the record (pycma replay), recorded as a duplicate of an
        evaluated genome, or queued for a worker."""
        for j, x in enumerate(xs):
            i = max((k for k, _ in g.items), default=-1) + 1
            g.items.append((i, x))
            t = self.record.get((g.number, i)) if self.replayable else None
            if t is not None:
                if max(abs(a - b) for a, b in zip(x, t.user_attrs["genome"])) > 1e-9:
                    raise RuntimeError(f"replay diverged at generation {g.number} (trial {t.number}): the "
                                       "optimizer asked another point than the recorded one")
                g.told[i] = self._told(t)
                self.bar.update(1)
                continue
            values = self.genome.decode(x)
            seed_name = None
            if j < len(batch) and max(abs(a - b) for a, b in zip(x, batch[j][1])) < 0.05:
                seed_name = batch[j][0]  # pycma nudges points lying on a bound
            dup = self.cache.get(self._key(values))
            if dup is not None:
                attrs = {"generation": g.number, "index": i, "genome": x, **({"early": True} if early else {})}
                self.ledger.record_duplicate(values, attrs, dup)
                g.told[i] = list(dup.values)
                self.bar.update(1)
                continue
            g.queue.append(_Item(g.number, i, x, values, seed_name, early))

    def _close(self, g: _Gen) -> None:
        """Tell generation g's results (an Optuna sampler already holds the replayed ones)."""
        live = [(i, x) for i, x in g.items if i not in g.replayed]
        if live:
            self.optimizer.tell([x for _, x in live], [g.told[i] for i, _ in live])
        done = [v for v in g.told.values() if v is not None]
        gen_best = max((scalarize(dict(zip([o.name for o in self.objs], v)), self.weights, self.how)
                        if self.multi else v[0]) for v in done) if done else None
        self.per_gen.append(gen_best)
        self.bar.write(f"generation {g.number + 1}/{self.generations}: best {_fmt(gen_best)}, "
                       f"best so far {_fmt(self.best)}")
        every, k = self.recheck
        if every and k and (g.number + 1) % every == 0 and g.number + 1 < self.generations:
            self.rechecks += self._finalists_to_recheck(k)  # the holdout view of the leaders as the run goes

    # -- recording results ----------------------------------------------------------------------------------

    def _start(self, item: _Item | _Recheck) -> Candidate:
        n_layers = self.pool.n_layers
        if isinstance(item, _Recheck):
            return Candidate(item.trial.number, self.space.recipe(item.trial.params, n_layers).to_mergekit(),
                             split="holdout")
        attrs = {"generation": item.gen, "index": item.index, "genome": item.x}
        if item.seed_name:
            attrs["seed_candidate"] = item.seed_name
        if item.early:
            attrs["early"] = True
        number = self.ledger.start(item.values, attrs)
        self.evaluated += 1
        prune_below = None
        fp_frac = self.space.search.first_pass_min_fraction if self.space.search.first_pass_items else None
        if fp_frac is not None:  # no bar before a first pass has been seen; a fraction needs a positive best
            prune_below = fp_frac * self.fp_best if self.fp_best is not None and self.fp_best > 0 else float("-inf")
        return Candidate(number, self.space.recipe(item.values, n_layers).to_mergekit(), prune_below=prune_below)

    def _record(self, item: _Item, result: CandidateResult) -> None:
        g = next(g for g in self.open if g.number == item.gen)
        if result.first_pass is not None and math.isfinite(result.first_pass):
            self.fp_best = result.first_pass if self.fp_best is None else max(self.fp_best, result.first_pass)
        if result.ok and result.pruned:
            self.ledger.finish(result, None)
            g.told[item.index] = None  # the optimizer sees a pruned candidate as the worst
        elif result.ok:
            vals, fit, objs = self._outcome(result.scores)
            for k, v in objs.items():
                self.obj_best[k] = max(self.obj_best.get(k, v), v)
            self.ledger.finish(result, vals, {"fitness": fit, "objectives": objs})
            g.told[item.index] = vals
            self.cache[self._key(item.values)] = _Done(result.number, vals, {
                "fitness": fit, "objectives": objs, "scores": {n: asdict(sc) for n, sc in result.scores.items()}})
            self.best = fit if self.best is None or fit > self.best else self.best
        else:
            self.ledger.finish(result, None)
            g.told[item.index] = None
        self.bar.update(1)
        self.bar.set_postfix(best=_fmt(self.best),
                             **({k: f"{v:.3f}" for k, v in self.obj_best.items()} if len(self.obj_best) > 1 else {}))

    def _told(self, trial) -> list[float] | None:
        import optuna

        if trial.state != optuna.trial.TrialState.COMPLETE:
            return None
        return list(trial.values)

    def _finalists_to_recheck(self, k: int) -> list[_Recheck]:
        """The top-k trials by dev fitness that have no holdout score yet."""
        import optuna

        done = [t for t in self.ledger.trials()
                if t.state == optuna.trial.TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
        have = self.ledger.holdout()
        return [_Recheck(t) for t in sorted(done, key=lambda t: -fitness_of(t))[:k] if t.number not in have]

    def _record_holdout(self, trial, result: CandidateResult) -> float | None:
        """Store a finalist's holdout fitness (a failed re-check stores nothing); returns it."""
        if not result.ok:
            return None
        _, fit, _ = self._outcome(result.scores)
        self.ledger.set_holdout(trial.number, fit, {n: asdict(s) for n, s in result.scores.items()})
        return fit

    def recheck_finalists(self, k: int) -> None:
        """Re-score the top-k trials (by dev fitness) on the holdout split; export then picks by holdout."""
        queue = self._finalists_to_recheck(k)
        if not queue:
            return
        for item, result in self.pool.run(lambda: queue.pop(0) if queue else None, self._start, lambda: False):
            self._record_holdout(item.trial, result)
        hold = self.ledger.holdout()
        line = ", ".join(f"trial {n}: {hold[n]['fitness']:.4f}" for n in sorted(hold, key=lambda n: -hold[n]["fitness"]))
        print(f"finalists on holdout: {line}")

    def summary(self, run_dir: Path, stopped: str) -> SearchSummary:
        import optuna

        trials = self.ledger.trials()
        ok = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
        best = self.ledger.best() if ok else None
        return SearchSummary(run_dir, len(ok), len(failed), fitness_of(best) if best else None,
                             best.number if best else None, tuple(self.per_gen), stopped)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
