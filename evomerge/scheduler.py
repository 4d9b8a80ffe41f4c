"""The event-driven scheduler: ask the optimizer -> hand candidates to a pool -> record each result -> tell.

Pure logic over a ledger (the Optuna study), an optimizer and a pool: it imports nothing from Ray, so it is tested
with an in-process pool (tests/test_scheduler.py). The pool (pool.py's `RayPool` in a search) only runs candidates;
everything about order lives here:

- generations are asked and told in one fixed order, which a resume replays from the ledger (pycma asks the same
  points again under the run's seed; Optuna samplers get the recorded trials added);
- with `pipeline` on, a worker that would wait at a generation's end takes a point of the next generation asked
  early (recorded as trial attribute `early`, so replay reproduces the order);
- a genome equal to an evaluated one is recorded as a duplicate with that result, not evaluated again;
- budgets (evaluations, minutes, target) stop the hand-out; what was handed out is still recorded;
- finalists are re-scored on the holdout split every few generations and at the end;
- one scheduler runs one stage of a search (stages.py): generations [first_gen, generations) of the run, each
  trial tagged with the stage's name (user attribute `stage`) when the search has stages.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Protocol

from evomerge import holdout, racing
from evomerge.fitness import Objective, objectives as compute_objectives, scalarize
from evomerge.genome import Genome
from evomerge.ledger import Ledger, dev_floor, fitness_of
from evomerge.optimizers import CmaEs
from evomerge.results import Candidate, CandidateResult
from evomerge.space import Space


def max_early(popsize: int) -> int:
    """The most points of a generation asked early (from the distribution before the previous generation's tell).

    bench/pipeline_quality.py measured CMA-ES with 1 and 3 early points at popsize 6 and 12 (median regret over 10
    seeds 0.59-1.02x the barrier's) and with a whole generation one update late (1.12-1.54x). A quarter of the
    population (at least one) keeps every run inside the measured cases: 1 of 6 and 3 of 12. Uncapped, fast
    candidates on many workers had 3 to 6 of every 6 points asked early, close to the costly whole-generation lag.
    The price: with more workers than the cap allows, some wait at a generation's end."""
    return max(1, popsize // 4)


class Pool(Protocol):
    """What the scheduler needs of a pool of workers (pool.py's `RayPool`, or an in-process one in tests)."""

    n_layers: int

    def run(self, next_item: Callable[[], Any], start: Callable[[Any], Candidate],
            should_stop: Callable[[], bool]) -> Iterator[tuple[Any, CandidateResult]]:
        """Hand out `next_item()` (None: nothing ready now) after `start(item)` opens its trial, while
        `should_stop()` is false; yield (item, result) as results come back, until nothing is in flight."""
        ...


@dataclass(frozen=True)
class _Done:
    """What dedup needs of an evaluated candidate (the shape of an Optuna FrozenTrial's fields it reads)."""

    number: int
    values: list[float]
    user_attrs: dict


@dataclass
class Item:
    """A candidate of a generation, to be dispatched."""

    gen: int
    index: int
    x: list[float]
    values: dict[str, float]
    seed_name: str | None
    early: bool = False  # asked before the previous generation was told (pipeline)


@dataclass(frozen=True)
class Recheck:
    """A finalist to re-score on the holdout split."""

    trial: Any  # an Optuna FrozenTrial


@dataclass
class _Gen:
    """One generation between its first ask and its tell."""

    number: int
    items: list[tuple[int, list[float]]]  # (index, point) as asked: what the tell reports on
    told: dict[int, list[float] | None]  # index -> objective values (None: failed, or pruned by the first pass)
    queue: list[Item]  # candidates not yet handed to a worker
    early: int = 0  # points asked one by one before the previous generation was told
    asked: bool = False  # the whole generation has been asked
    replayed: set[int] = field(default_factory=set)  # Optuna: indices given back from the record (not told again)
    off_bar: set[int] = field(default_factory=set)  # told values that set no racing bar (estimates, duplicates)

    @property
    def complete(self) -> bool:
        return self.asked and len(self.told) == len(self.items)


class Scheduler:
    """Ask -> dispatch -> record -> tell; a worker free at a generation's end takes an early point, within a cap.

    With `pipeline` on, a worker that would wait for the last candidates of generation g (all handed out, not all
    back) gets a point of generation g+1 instead, asked on the spot from the optimizer's current distribution (one
    update older than the rest of g+1, which is asked once g is told). At most `max_early(popsize)` points of a
    generation are sampled "early", and the optimizer keeps its per-generation updates (for pycma this loses
    nothing measurable: bench/pipeline_quality.py). Each early point is recorded as such (trial attribute
    `early`), so that a resume replays the exact order of asks and tells: ask g, [ask 1 point of g+1] x
    early(g+1), tell g, ask the rest of g+1, ... Without `pipeline` (or when nothing would wait): ask g, tell g,
    ask g+1 (a barrier, as mergekit-evolve's pool has).
    """

    def __init__(self, space: Space, genome: Genome, ledger: Ledger, optimizer: Any, pool: Pool,
                 objs: tuple[Objective, ...], weights: dict[str, float], how: str, multi: bool, progress: bool,
                 pipeline: bool = True, *, stage: str | None = None, first_gen: int = 0,
                 seeds: list[tuple[str, list[float]]] | None = None) -> None:
        self.space, self.genome, self.ledger, self.optimizer, self.pool = space, genome, ledger, optimizer, pool
        # the stage this scheduler runs (stages.py): its name (recorded on each trial), its first generation, its
        # seed candidates as (name, unit vector of `genome`) (None: the space's `seeds:`)
        self.stage, self.first_gen, self.seeds = stage, first_gen, seeds
        self.objs, self.weights, self.how, self.multi, self.progress = objs, weights, how, multi, progress
        self.pipeline = pipeline
        self.per_gen: list[float | None] = []  # best fitness of each generation told by this driver
        self.evaluated = 0
        self.interrupted = False
        self.bar: Any = None  # the progress bar while `run` runs

    def interrupt(self) -> None:
        """Stop handing out candidates; those in flight are still recorded (what the first Ctrl-C does)."""
        self.interrupted = True
        self._say("interrupted: recording the candidates in flight, then stopping (Ctrl-C again aborts)")

    def _say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, file=sys.stderr)

    def _key(self, values) -> tuple:
        return tuple(round(float(values[g.name]), 10) for g in self.genome.genes)

    def _outcome(self, scores) -> tuple[list[float], float, dict[str, float]]:
        objs = compute_objectives(scores, self.objs)
        fit = scalarize(objs, self.weights, self.how)
        return ([objs[o.name] for o in self.objs] if self.multi else [fit]), fit, objs

    def run(self, generations: int, popsize: int, max_evals: int | None = None, max_minutes: float | None = None,
            target: float | None = None, started: float | None = None,
            recheck: tuple[int | None, int] = (None, 0)) -> str:
        """Run generations [0, generations) (a resume replays what the ledger holds) until done or a budget
        stops the hand-out: max_evals evaluations in all, max_minutes since `started` (time.monotonic()), a
        fitness of `target`. `recheck` = (every, k): re-score the top k on holdout every `every` generations.
        Returns why it stopped: done | max_evals | max_minutes | target | interrupted."""
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
        # racing's bar comes from the told generations only (racing.py): a resume replays them in the same order;
        # an earlier stage's complete trials count from the start
        self.told_points: list[tuple[float, ...]] = [
            tuple(t.values) for t in trials if t.state == optuna.trial.TrialState.COMPLETE
            and t.user_attrs.get("generation", self.first_gen) < self.first_gen and "duplicate_of" not in t.user_attrs]
        self.obj_best: dict[str, float] = {}  # best value seen per objective, for the progress bar
        self.replayable = isinstance(self.optimizer, CmaEs)  # pycma: re-asking under the seed gives the same points
        n_layers = self.pool.n_layers
        self.pending_seeds = list(self.seeds) if self.seeds is not None else [
            (s.name, self.genome.encode(self.space.seed_values(s, n_layers))) for s in self.space.seeds]
        if not self.replayable:  # an Optuna sampler replays recorded seeds as trials: injecting them again would
            # evaluate them again in the first generation not yet recorded (pycma must re-inject to re-ask them)
            seen = {t.user_attrs.get("seed_candidate") for t in self.record.values()}
            self.pending_seeds = [(n, x) for n, x in self.pending_seeds if n not in seen]
        self.generations, self.popsize, self.recheck = generations, popsize, recheck
        self.open: list[_Gen] = []
        self.next_gen = self.first_gen
        self.rechecks: list[Recheck] = []
        self.bar = tqdm(total=(generations - self.first_gen) * popsize, desc=self.stage or "search", unit="cand", disable=not self.progress,
                        file=sys.stderr, dynamic_ncols=True)
        stop: dict[str, str | None] = {"why": None}
        started = time.monotonic() if started is None else started

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
        try:
            for item, result in self.pool.run(self._next_item, self._start, should_stop):
                if isinstance(item, Recheck):
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
            self.bar.close()
            self.bar = None

    # -- scheduling: what to hand out next, and the optimizer's asks and tells in their one order ---------------

    def _next_item(self) -> Item | Recheck | None:
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
                g.early = sum(1 for t in recorded if t.user_attrs.get("early"))  # they count against the cap
                for t in recorded:
                    i = t.user_attrs["index"]
                    g.items.append((i, t.user_attrs["genome"]))
                    self._replayed(g, i, t)
                    g.replayed.add(i)
                self.bar.update(len(recorded))
        return g

    def _ask_early(self) -> Item | None:
        """A point of the next generation for a free worker, or None: only while generation g is all handed out
        and not yet told, and the next generation has fewer than `max_early(popsize)` early points."""
        while self.pipeline and self.open and not self.should_stop():
            g = self.open[0]
            if not g.asked or g.queue or g.complete:
                return None
            if len(self.open) == 1:
                if self.next_gen >= self.generations:
                    return None
                self.open.append(self._new_gen())
            nxt = self.open[1]
            if len(nxt.items) >= self.optimizer.popsize or nxt.early >= max_early(self.optimizer.popsize):
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
                self._replayed(g, i, t)
                self.bar.update(1)
                continue
            values = self.genome.decode(x)
            seed_name = None
            if j < len(batch) and max(abs(a - b) for a, b in zip(x, batch[j][1])) < 0.05:
                seed_name = batch[j][0]  # pycma nudges points lying on a bound
            dup = self.cache.get(self._key(values))
            if dup is not None:
                attrs = {"generation": g.number, "index": i, "genome": x, **({"early": True} if early else {}),
                         **({"stage": self.stage} if self.stage else {})}
                self.ledger.record_duplicate(values, attrs, dup)
                g.told[i] = list(dup.values)
                g.off_bar.add(i)
                self.bar.update(1)
                continue
            g.queue.append(Item(g.number, i, x, values, seed_name, early))

    def _close(self, g: _Gen) -> None:
        """Tell generation g's results (an Optuna sampler already holds the replayed ones)."""
        live = [(i, x) for i, x in g.items if i not in g.replayed]
        if live:
            self.optimizer.tell([x for _, x in live], [g.told[i] for i, _ in live])
        done = [v for v in g.told.values() if v is not None]
        self.told_points += [tuple(v) for i, v in g.told.items() if v is not None and i not in g.off_bar]
        gen_best = max((scalarize(dict(zip([o.name for o in self.objs], v)), self.weights, self.how)
                        if self.multi else v[0]) for v in done) if done else None
        self.per_gen.append(gen_best)
        stage = f" ({self.stage} stage)" if self.stage else ""
        self.bar.write(f"generation {g.number + 1}/{self.generations}{stage}: best {_fmt(gen_best)}, "
                       f"best so far {_fmt(self.best)}")
        every, k = self.recheck
        if every and k and (g.number + 1) % every == 0 and g.number + 1 < self.generations:
            self.rechecks += self._finalists_to_recheck(k)  # the holdout view of the leaders as the run goes

    # -- recording results ----------------------------------------------------------------------------------

    def _start(self, item: Item | Recheck) -> Candidate:
        n_layers = self.pool.n_layers
        if isinstance(item, Recheck):
            return Candidate(item.trial.number, self.space.recipe(item.trial.params, n_layers).to_mergekit(),
                             split="holdout")
        attrs = {"generation": item.gen, "index": item.index, "genome": item.x,
                 **({"stage": self.stage} if self.stage else {})}
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
        rs = self.space.search.racing
        race = None if rs is None else racing.Race(rs.batches, rs.confidence, racing.bar(
            self.told_points, rs.keep_for(self.space.search.finalists), self.multi), self.multi)
        return Candidate(number, self.space.recipe(item.values, n_layers).to_mergekit(), prune_below=prune_below,
                         race=race)

    def _record(self, item: Item, result: CandidateResult) -> None:
        g = next(g for g in self.open if g.number == item.gen)
        log = {"worker_log": result.worker_log} if result.worker_log else {}  # where the worker's output went
        if result.first_pass is not None and math.isfinite(result.first_pass):
            self.fp_best = result.first_pass if self.fp_best is None else max(self.fp_best, result.first_pass)
        if result.ok and result.pruned:
            # racing: the optimizer is told the running estimate (under the bar); the first pass: the worst
            told = list(result.race[-1]["estimate"]) if result.race else None
            self.ledger.finish(result, None, {**log, **({"told": told} if told else {})})
            g.told[item.index] = told
            g.off_bar.add(item.index)
        elif result.ok:
            vals, fit, objs = self._outcome(result.scores)
            for k, v in objs.items():
                self.obj_best[k] = max(self.obj_best.get(k, v), v)
            self.ledger.finish(result, vals, {"fitness": fit, "objectives": objs, **log})
            g.told[item.index] = vals
            self.cache[self._key(item.values)] = _Done(result.number, vals, {
                "fitness": fit, "objectives": objs, "scores": {n: asdict(sc) for n, sc in result.scores.items()}})
            self.best = fit if self.best is None or fit > self.best else self.best
        else:
            self.ledger.finish(result, None, log)
            g.told[item.index] = None
        self.bar.update(1)
        self.bar.set_postfix(best=_fmt(self.best),
                             **({k: f"{v:.3f}" for k, v in self.obj_best.items()} if len(self.obj_best) > 1 else {}))

    def _told(self, trial) -> list[float] | None:
        """What the optimizer was told of a recorded trial: its values, a racing estimate, or None (the worst)."""
        import optuna

        if trial.state == optuna.trial.TrialState.PRUNED and "told" in trial.user_attrs:
            return list(trial.user_attrs["told"])
        if trial.state != optuna.trial.TrialState.COMPLETE:
            return None
        return list(trial.values)

    def _replayed(self, g: _Gen, i: int, trial) -> None:
        """Generation g's point i is a recorded trial: tell what it was told."""
        import optuna

        g.told[i] = self._told(trial)
        if trial.state != optuna.trial.TrialState.COMPLETE or "duplicate_of" in trial.user_attrs:
            g.off_bar.add(i)

    def _finalists_to_recheck(self, k: int) -> list[Recheck]:
        """The top-k trials by dev fitness that have no holdout score yet (with stages, none below the uniform
        stage's best on dev: export picks among these, and must never be worse on dev than that uniform merge)."""
        import optuna

        floor = dev_floor(self.ledger.trials())
        done = [t for t in self.ledger.trials() if t.state == optuna.trial.TrialState.COMPLETE
                and "duplicate_of" not in t.user_attrs and fitness_of(t) >= floor]
        have = self.ledger.holdout()
        return [Recheck(t) for t in sorted(done, key=lambda t: -fitness_of(t))[:k] if t.number not in have]

    def _record_holdout(self, trial, result: CandidateResult) -> float | None:
        """Store a finalist's holdout result (holdout.py, as the quickstart stores its own; a failed re-check
        stores nothing), refresh the study's note; returns the holdout fitness."""
        if not result.ok:
            return None
        scored = holdout.holdout_result(result.scores, self.objs, self.weights, self.how)
        holdout.record(self.ledger, trial.number, scored)
        self._note_holdout()
        return scored.fitness

    def _note_holdout(self) -> None:
        """The study's note (optuna-dashboard shows it): the holdout table of the re-checked trials."""
        from evomerge.dashboard import save_study_note

        body = holdout.finalists_note(self.ledger, self.objs)
        if body:
            save_study_note(self.ledger.study, body)

    def recheck_finalists(self, k: int) -> None:
        """Re-score the top-k trials (by dev fitness) on the holdout split; export then picks by holdout."""
        queue = self._finalists_to_recheck(k)
        if not queue:
            return
        for item, result in self.pool.run(lambda: queue.pop(0) if queue else None, self._start, lambda: False):
            self._record_holdout(item.trial, result)
        hold = self.ledger.holdout()
        line = ", ".join(f"trial {n}: {hold[n]['fitness']:.4f}"
                         for n in sorted(hold, key=lambda n: -hold[n]["fitness"]))
        print(f"finalists on holdout: {line}")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
