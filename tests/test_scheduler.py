"""The scheduler without Ray: an in-process pool evaluates candidates (fitness computed from the genome, in order or
out of order), a real Optuna study in tmp_path is the ledger, the real optimizers ask and tell."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import pytest

from evomerge.fitness import Objective, Term
from evomerge.genome import Genome
from evomerge.ledger import Ledger
from evomerge.optimizers import make_optimizer
from evomerge.scheduler import Recheck, Scheduler, max_early
from evomerge.scorers import SetScores
from evomerge.space import SeedCandidate, load_space
from evomerge.worker import Candidate, CandidateResult

from conftest import REPO

N_LAYERS = 4  # the quickstart space's models have 4 layers: 6 genes
OBJS = (Objective("a", (Term("a", "gold_prob"),)), Objective("b", (Term("b", "gold_prob"),)))
WEIGHTS = {"a": 1.0, "b": 1.0}


def fitness_scores(values: dict[str, float]) -> dict[str, SetScores]:
    """A cheap real evaluation: two smooth functions of the gene values (optimum inside the box)."""
    v = list(values.values())
    a = 1.0 - sum((x - 0.7) ** 2 for x in v) / len(v)
    b = 1.0 - sum((x - 1.3) ** 2 for x in v) / len(v)
    return {"a": SetScores({"gold_prob": a}, 8), "b": SetScores({"gold_prob": b}, 8)}


class Died(Exception):
    """The driver 'dies' (as kill -9 would): the pool stops mid-run, trials in flight stay RUNNING."""


class LocalPool:
    """An in-process pool: `slots` candidates in flight (workers x depth); when every slot is taken (or nothing is
    ready) one in-flight candidate finishes: the oldest (order "fifo") or a seeded random one ("random", out of
    order). `die_after` results: raise Died (the driver's death); `fail` trial numbers come back as failures."""

    def __init__(self, slots: int = 2, order: str = "fifo", seed: int = 0, die_after: int | None = None,
                 fail: set[int] = frozenset()) -> None:
        self.n_layers = N_LAYERS
        self.slots, self.order, self.rng = slots, order, random.Random(seed)
        self.die_after, self.fail = die_after, set(fail)
        self.results = 0
        self.handed: list[Any] = []  # every item handed out, in order

    def run(self, next_item: Callable[[], Any], start: Callable[[Any], Candidate],
            should_stop: Callable[[], bool]) -> Iterator[tuple[Any, CandidateResult]]:
        inflight: list[tuple[Any, Candidate]] = []
        while True:
            while len(inflight) < self.slots and not should_stop():
                item = next_item()
                if item is None:
                    break
                self.handed.append(item)
                inflight.append((item, start(item)))
            if not inflight:
                return
            k = 0 if self.order == "fifo" else self.rng.randrange(len(inflight))
            item, cand = inflight.pop(k)
            if self.die_after is not None and self.results >= self.die_after:
                raise Died
            self.results += 1
            values = item.trial.params if isinstance(item, Recheck) else item.values
            if cand.number in self.fail:
                yield item, CandidateResult(cand.number, error="boom", worker="local")
            else:
                yield item, CandidateResult(cand.number, fitness_scores(values), worker="local")


def space(popsize: int = 4, *, pipeline: bool = True, seeds: tuple[SeedCandidate, ...] | None = None,
          **search: Any):
    sp = load_space(REPO / "search_spaces" / "quickstart.yaml")  # reads no model: recipes only name paths
    sp = dataclasses.replace(sp, search=dataclasses.replace(sp.search, popsize=popsize, pipeline=pipeline,
                                                            **search))
    return sp if seeds is None else dataclasses.replace(sp, seeds=seeds)


def record_calls(opt):
    """The real optimizer, its ask and tell logged in `opt.calls` (to check their order)."""
    opt.calls = []
    ask, tell = opt.ask, opt.tell

    def logged_ask(n=None):
        xs = ask(n)
        opt.calls.append(("ask", len(xs)))
        return xs

    def logged_tell(xs, values):
        opt.calls.append(("tell", len(xs)))
        return tell(xs, values)

    opt.ask, opt.tell = logged_ask, logged_tell
    return opt


def drive(run: Path, sp, pool: LocalPool, *, generations: int, fresh: bool = True, optimizer: str = "cmaes",
          seed: int = 5, max_evals: int | None = None, target: float | None = None, finalists: int = 0,
          recheck: tuple = (None, 0)):
    """What search._drive does, with the in-process pool; returns (scheduler, stop reason)."""
    genome = Genome(tuple(sp.expand(N_LAYERS)))
    multi = optimizer == "nsga2"
    names = [o.name for o in OBJS] if multi else ["fitness"]
    ledger = Ledger.open(run, "t", genome.genes, create=fresh, objectives=names)
    if not fresh:
        ledger.fail_interrupted()
    opt = record_calls(make_optimizer(optimizer, x0=genome.initial(), stds=genome.stds(),
                                      popsize=sp.search.popsize, seed=seed, n_objectives=len(names)))
    loop = Scheduler(sp, genome, ledger, opt, pool, OBJS, WEIGHTS, "mean", multi, False,
                     ledger.schedule(sp.search.pipeline))
    stopped = loop.run(generations, sp.search.popsize, max_evals, target=target, recheck=recheck)
    if finalists and stopped == "done":
        loop.recheck_finalists(finalists)
    return loop, stopped


def trials(run: Path):
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{run / 'study.db'}")
    return study, study.get_trials(deepcopy=False)


def genomes(ts) -> dict:
    return {(t.user_attrs["generation"], t.user_attrs["index"]): tuple(round(v, 12) for v in t.user_attrs["genome"])
            for t in ts if t.state == optuna.trial.TrialState.COMPLETE}


def evaluated(ts) -> list:
    return [t for t in ts if t.state.is_finished() and "duplicate_of" not in t.user_attrs]


# --- order of asks and tells, early points ---------------------------------------------------------------------

def test_barrier_order_one_generation_at_a_time(tmp_path):
    pool = LocalPool(slots=3, order="random")
    loop, stopped = drive(tmp_path, space(4, pipeline=False), pool, generations=3)
    assert stopped == "done"
    assert loop.optimizer.calls == [("ask", 4), ("tell", 4)] * 3
    _, ts = trials(tmp_path)
    assert [(t.user_attrs["generation"], t.user_attrs["index"]) for t in ts] == [(g, i) for g in range(3)
                                                                                 for i in range(4)]
    assert not any(t.user_attrs.get("early") for t in ts)
    # the space's two seed candidates are the first two points
    assert [t.user_attrs.get("seed_candidate") for t in ts[:3]] == ["paper_w0.5", "paper_w1.0", None]
    assert len(loop.per_gen) == 3 and all(v is not None for v in loop.per_gen)


@pytest.mark.parametrize("order", ["fifo", "random"])
def test_pipeline_asks_a_few_points_early_in_one_fixed_order(tmp_path, order):
    pop = 8
    pool = LocalPool(slots=6, order=order, seed=1)
    loop, stopped = drive(tmp_path, space(pop), pool, generations=4)
    assert stopped == "done"
    _, ts = trials(tmp_path)
    assert len(evaluated(ts)) == 4 * pop
    cap = max_early(pop)
    # the calls: ask g0; then for each next generation g: [ask 1] x early(g), tell g-1, ask the rest of g
    calls = loop.optimizer.calls
    assert calls[0] == ("ask", pop)
    i, early_per_gen = 1, []
    for g in range(1, 4):
        e = 0
        while calls[i] == ("ask", 1):
            i, e = i + 1, e + 1
        assert calls[i:i + 2] == [("tell", pop), ("ask", pop - e)]
        i += 2
        early_per_gen.append(e)
        early = sorted(t.user_attrs["index"] for t in ts if t.user_attrs.get("early")
                       and t.user_attrs["generation"] == g)
        assert early == list(range(e))  # recorded as early, and they are the first indices of their generation
    assert calls[i:] == [("tell", pop)]
    assert max(early_per_gen) <= cap and sum(early_per_gen) > 0  # six slots for 8 points: some are asked early
    assert not any(t.user_attrs.get("early") for t in ts if t.user_attrs["generation"] == 0)


def test_early_points_are_capped_per_generation(tmp_path):
    """Fast candidates, many slots: uncapped, most of each generation would be asked from a stale distribution."""
    pop = 6
    pool = LocalPool(slots=6, order="fifo")
    loop, _ = drive(tmp_path, space(pop), pool, generations=5)
    _, ts = trials(tmp_path)
    per_gen = {g: sum(1 for t in ts if t.user_attrs.get("early") and t.user_attrs["generation"] == g)
               for g in range(5)}
    assert max_early(pop) == 1 and max(per_gen.values()) == 1
    assert sum(per_gen.values()) == 4  # each of generations 1-4 got its one early point


def test_max_early_follows_the_measured_cases():
    # bench/pipeline_quality.py measured 1 and 3 early points of popsize 6 and 12 (regret 0.59-1.02x the
    # barrier's); a whole generation late cost 1.12-1.54x. The cap stays inside what was measured.
    assert [max_early(p) for p in (2, 4, 6, 8, 12, 24)] == [1, 1, 1, 2, 3, 6]


# --- resume: replay the recorded asks and tells ------------------------------------------------------------------

@pytest.mark.parametrize("die_after", [1, 5, 9, 14])
def test_barrier_resume_gives_the_candidates_of_an_uninterrupted_run(tmp_path, die_after):
    ref = tmp_path / "ref"
    ref.mkdir()
    drive(ref, space(4, pipeline=False), LocalPool(slots=2, order="random", seed=3), generations=4)
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(Died):
        drive(run, space(4, pipeline=False), LocalPool(slots=2, order="random", seed=3, die_after=die_after),
              generations=4)
    _, before = trials(run)
    done_before = {t.number: t.user_attrs["genome"] for t in before if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(done_before) == die_after
    _, stopped = drive(run, space(4, pipeline=False), LocalPool(slots=2, order="fifo"), generations=4, fresh=False)
    assert stopped == "done"
    study, after = trials(run)
    for t in after:  # nothing recorded before the death changed
        if t.number in done_before:
            assert t.user_attrs["genome"] == done_before[t.number]
    assert genomes(after) == genomes(trials(ref)[1])  # nothing lost or repeated, and the same points
    failed = {t.number for t in after if t.state == optuna.trial.TrialState.FAIL}
    assert failed == set(study.user_attrs.get("interrupted", []))


@pytest.mark.parametrize("die_after", [5, 9, 13, 18])
def test_pipelined_resume_replays_the_early_points(tmp_path, die_after):
    """Out-of-order results with early points; the driver dies; resume replays the exact order of asks and tells
    (a divergence raises) and loses and repeats nothing; a resume with one more generation replays the whole run."""
    pop, gens = 6, 4
    sp = space(pop)
    with pytest.raises(Died):
        drive(tmp_path, sp, LocalPool(slots=5, order="random", seed=die_after, die_after=die_after),
              generations=gens)
    _, before = trials(tmp_path)
    done_before = {t.number: t.user_attrs["genome"] for t in before if t.state == optuna.trial.TrialState.COMPLETE}
    loop, stopped = drive(tmp_path, sp, LocalPool(slots=5, order="random", seed=99), generations=gens, fresh=False)
    assert stopped == "done"
    loop, stopped = drive(tmp_path, sp, LocalPool(slots=5, order="random", seed=7), generations=gens + 1,
                          fresh=False)
    assert stopped == "done"
    _, after = trials(tmp_path)
    for t in after:
        if t.number in done_before:
            assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["genome"] == done_before[t.number]
    keys = [(t.user_attrs["generation"], t.user_attrs["index"]) for t in after
            if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(keys) == [(g, i) for g in range(gens + 1) for i in range(pop)]
    for g in range(gens + 1):
        early = sorted({t.user_attrs["index"] for t in after if t.user_attrs.get("early")
                        and t.user_attrs["generation"] == g})
        assert early == list(range(len(early))) and len(early) <= max_early(pop)


def test_a_replay_that_diverges_is_an_error(tmp_path):
    drive(tmp_path, space(4, pipeline=False), LocalPool(), generations=2)
    with pytest.raises(RuntimeError, match="replay diverged"):  # another seed asks other points
        drive(tmp_path, space(4, pipeline=False), LocalPool(), generations=3, fresh=False, seed=6)


def test_optuna_sampler_resume_replays_recorded_trials(tmp_path):
    sp = space(4, pipeline=False)
    with pytest.raises(Died):
        drive(tmp_path, sp, LocalPool(die_after=6), generations=3, optimizer="tpe")
    _, stopped = drive(tmp_path, sp, LocalPool(), generations=3, optimizer="tpe", fresh=False)
    assert stopped == "done"
    _, ts = trials(tmp_path)
    keys = sorted((t.user_attrs["generation"], t.user_attrs["index"]) for t in ts
                  if t.state == optuna.trial.TrialState.COMPLETE)
    assert keys == [(g, i) for g in range(3) for i in range(4)]


# --- duplicates, failures, budgets, finalists -------------------------------------------------------------------

def test_a_genome_equal_to_an_evaluated_one_is_recorded_as_a_duplicate(tmp_path):
    a = SeedCandidate("a", {"w_xb": 0.5, "w_xb_embed": 0.5, "w_xb_head": 0.5})
    b = SeedCandidate("b", {"w_xb": 1.5, "w_xb_embed": 1.5, "w_xb_head": 1.5})
    c = SeedCandidate("c", {"w_xb": 0.2, "w_xb_embed": 1.0, "w_xb_head": 1.0})
    again = SeedCandidate("a_again", {"w_xb": 0.5, "w_xb_embed": 0.5, "w_xb_head": 0.5})
    pool = LocalPool(slots=1)
    drive(tmp_path, space(3, pipeline=False, seeds=(a, b, c, again)), pool, generations=2)  # `again` in gen 1
    _, ts = trials(tmp_path)
    assert len(ts) == 6
    dup = [t for t in ts if "duplicate_of" in t.user_attrs]
    assert len(dup) == 1 and dup[0].user_attrs["duplicate_of"] == ts[0].number
    assert dup[0].state == optuna.trial.TrialState.COMPLETE and dup[0].value == ts[0].value
    assert len(pool.handed) == 5  # the duplicate never reached a worker


def test_a_failed_candidate_is_recorded_and_the_run_goes_on(tmp_path):
    loop, stopped = drive(tmp_path, space(4, pipeline=False), LocalPool(fail={2, 5}), generations=2)
    assert stopped == "done"
    _, ts = trials(tmp_path)
    states = {t.number: t.state for t in ts}
    assert states[2] == states[5] == optuna.trial.TrialState.FAIL and len(ts) == 8
    assert ts[2].user_attrs["error"] == "boom"
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in states.values()) == 6


def test_max_evals_stops_the_hand_out_and_resume_finishes(tmp_path):
    sp = space(4)
    loop, stopped = drive(tmp_path, sp, LocalPool(slots=3, order="random"), generations=3, max_evals=6)
    assert stopped == "max_evals"
    _, ts = trials(tmp_path)
    assert len(evaluated(ts)) == 6 and all(t.state.is_finished() for t in ts)  # what was handed out is recorded
    _, stopped = drive(tmp_path, sp, LocalPool(slots=3, order="random"), generations=3, fresh=False)
    assert stopped == "done"
    _, ts = trials(tmp_path)
    assert sorted(genomes(ts)) == [(g, i) for g in range(3) for i in range(4)]


def test_target_stops_the_run(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    loop, _ = drive(ref, space(4, pipeline=False), LocalPool(), generations=4)
    target = loop.per_gen[1]  # reached in generation 2 by the same seed
    loop, stopped = drive(tmp_path, space(4, pipeline=False), LocalPool(), generations=4, target=target)
    _, ts = trials(tmp_path)
    assert stopped == "target" and loop.best >= target
    assert len(ts) <= 2 * 4 + 2  # the hand-out stopped in generation 2 (plus what a pool of 2 slots held)


def test_interrupt_records_what_is_in_flight(tmp_path):
    pool = LocalPool(slots=3)
    genome = Genome(tuple(space(4).expand(N_LAYERS)))
    ledger = Ledger.open(tmp_path, "t", genome.genes, create=True)
    opt = make_optimizer("cmaes", x0=genome.initial(), stds=genome.stds(), popsize=4, seed=5)
    loop = Scheduler(space(4), genome, ledger, opt, pool, OBJS, WEIGHTS, "mean", False, False, True)
    original = pool.run

    def run_then_interrupt(*args):
        for n, pair in enumerate(original(*args)):
            if n == 1:
                loop.interrupt()  # what the first Ctrl-C does
            yield pair

    pool.run = run_then_interrupt
    assert loop.run(3, 4) == "interrupted"
    ts = ledger.trials()
    assert len(ts) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in ts)  # 3 in flight + 1


def test_multi_objective_and_finalists_rechecked_on_holdout(tmp_path):
    loop, stopped = drive(tmp_path, space(4, pipeline=False), LocalPool(slots=2, order="random"), generations=2,
                          optimizer="nsga2", finalists=2, recheck=(1, 2))
    assert stopped == "done"
    study, ts = trials(tmp_path)
    assert all(len(t.values) == 2 for t in ts if t.state == optuna.trial.TrialState.COMPLETE)
    hold = {int(k.split(":")[1]) for k in study.user_attrs if k.startswith("holdout:")}
    assert 2 <= len(hold) <= 4  # after generation 1, and at the end (the leaders may have changed)


def test_status_reports_the_early_fraction(tmp_path):
    from evomerge.rundir import create_run, new_info
    from evomerge.status import render, run_status

    run = tmp_path / "t"
    create_run(run, new_info("t", REPO / "search_spaces" / "quickstart.yaml", 5, 3, N_LAYERS))
    drive(run, space(8), LocalPool(slots=6), generations=3)
    _, ts = trials(run)
    early = sum(1 for t in ts if t.user_attrs.get("early"))
    st = run_status(run)
    assert st.evaluated == 24 and st.early == early > 0 and st.early_fraction == early / 24
    assert f"early points: {early} of 24 evaluated trials ({early / 24:.0%})" in render(st)
