"""Coarse to fine (stages.py) over the scheduler's in-process pool (tests/test_scheduler.py's `LocalPool`) and a
real Optuna ledger: both stages in one study, the per-layer stage starts from the uniform stage's best, resume
mid-stage, and no holdout pick worse on dev than the best uniform trial."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

import test_scheduler
from test_scheduler import N_LAYERS, OBJS, WEIGHTS, Died, LocalPool, space, trials
from evomerge.errors import UserError
from evomerge.genome import Genome
from evomerge.ledger import Ledger, dev_floor, fitness_of
from evomerge.scorers import SetScores
from evomerge.space import parse_space
from evomerge.stages import PER_LAYER, UNIFORM, StagedSearch, split_generations, uniform_genome

from conftest import REPO

TARGET = {"w_xb[0]": 0.4, "w_xb[1]": 0.8, "w_xb[2]": 1.2, "w_xb[3]": 1.6, "w_xb_embed": 1.0, "w_xb_head": 1.0}


def layered_scores(values: dict[str, float]) -> dict[str, SetScores]:
    """A fitness whose optimum is not uniform (each layer wants another weight): per-layer search can gain."""
    err = sum((values[k] - t) ** 2 for k, t in TARGET.items()) / len(TARGET)
    return {"a": SetScores({"gold_prob": 1.0 - err}, 8), "b": SetScores({"gold_prob": 1.0 - err}, 8)}


@pytest.fixture(autouse=True)
def layered(monkeypatch):
    monkeypatch.setattr(test_scheduler, "fitness_scores", layered_scores)


_REFERENCE: dict[str, tuple] = {}


@pytest.fixture()
def reference(tmp_path_factory, layered):
    """An uninterrupted run per optimizer, made once per session (a loaded CPU makes each run seconds)."""
    def get(optimizer: str = "cmaes"):
        if optimizer not in _REFERENCE:
            run = tmp_path_factory.mktemp(f"ref_{optimizer}")
            _REFERENCE[optimizer] = (run, *staged(run, LocalPool(slots=2), optimizer=optimizer))
        return _REFERENCE[optimizer]
    return get


def staged(run: Path, pool: LocalPool, *, generations: int = 3, fresh: bool = True, optimizer: str = "cmaes",
           share: float = 0.5, popsize: int = 3):
    """What search._drive does, with the in-process pool; returns (StagedSearch, stop reason)."""
    sp = space(popsize, pipeline=False, coarse_to_fine=share)
    genome = Genome(tuple(sp.expand(N_LAYERS)))
    multi = optimizer == "nsga2"
    ledger = Ledger.open(run, "t", genome.genes, create=fresh, objectives=[o.name for o in OBJS] if multi
                         else ["fitness"])
    if not fresh:
        ledger.fail_interrupted()
    loop = StagedSearch(sp, genome, ledger, pool, OBJS, WEIGHTS, optimizer=optimizer, seed=5, popsize=popsize,
                        multi=multi, progress=False, pipeline=False)
    return loop, loop.run(generations)


def done(ts):
    return [t for t in ts if t.state == optuna.trial.TrialState.COMPLETE]


def test_the_budget_rule_and_the_tied_genome():
    assert split_generations(6, 8, None, 1 / 3) == 2
    assert split_generations(6, 8, 24, 1 / 3) == 1  # max_evals allows 3 generations: a third of them
    assert split_generations(2, 4, None, 0.9) == 1  # the per-layer stage keeps one
    sp = space(4)
    tied = uniform_genome(sp, sp.expand(N_LAYERS))
    assert [g.name for g in tied.groups] == ["w_xb"] and tied.dim == 1
    values = tied.decode([0.25])
    assert values == {g.name: 0.5 for g in sp.expand(N_LAYERS)}  # every per-layer gene of xb takes the value
    assert tied.encode(values) == [0.25]
    with pytest.raises(UserError, match=r"search.coarse_to_fine.uniform_share: 1.5 is not in \(0, 1\)"):
        data = __import__("yaml").safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
        data["search"]["coarse_to_fine"] = {"uniform_share": 1.5}
        parse_space(data, str(REPO / "search_spaces" / "quickstart.yaml"))


def test_both_stages_in_one_ledger_and_the_second_starts_from_the_first_best(reference):
    run, loop, stopped = reference("cmaes")
    assert stopped == "done"
    _, ts = trials(run)
    stage = {t.user_attrs["generation"]: t.user_attrs["stage"] for t in ts}
    assert stage == {0: UNIFORM, 1: UNIFORM, 2: PER_LAYER}
    for t in ts:
        if t.user_attrs["stage"] == UNIFORM:  # recorded in the space's own genes, every one equal
            assert len(set(round(v, 12) for v in t.params.values())) == 1
    seeds = [t for t in ts if t.user_attrs["stage"] == UNIFORM and "seed_candidate" in t.user_attrs]
    assert [t.user_attrs["seed_candidate"] for t in seeds] == ["paper_w0.5", "paper_w1.0"]  # uniform seeds: stage 1
    best_uniform = max(done(t for t in ts if t.user_attrs["stage"] == UNIFORM), key=fitness_of)
    first = [t for t in ts if t.user_attrs["generation"] == 2]
    # stage 2's first points are stage 1's best (a duplicate: recorded, not evaluated again)
    assert first[0].user_attrs.get("duplicate_of") == best_uniform.number
    assert first[0].params == pytest.approx(best_uniform.params)
    # CMA-ES's stage-2 mean started there: its own asks lie around the uniform best, not around the init 1.0
    assert loop.loop.optimizer.x0 == pytest.approx(Genome(loop.genome.genes).encode(best_uniform.params))
    # export (dev, no holdout) is never worse than the best uniform merge
    ledger = Ledger.open(run, "t", loop.genome.genes, create=False)
    assert fitness_of(ledger.best()) >= fitness_of(best_uniform)


@pytest.mark.parametrize("die_after, optimizer", [(2, "cmaes"), (7, "cmaes"), (4, "nsga2")])
def test_resume_mid_stage_continues_as_an_uninterrupted_run(tmp_path, reference, die_after, optimizer):
    """Killed in the uniform stage (2 results: generation 0; 4: generation 1) or in the per-layer one (7: generation 2)."""
    ref, _, _ = reference(optimizer)
    run = tmp_path
    with pytest.raises(Died):
        staged(run, LocalPool(slots=2, die_after=die_after), optimizer=optimizer)
    _, before = trials(run)
    assert sum(1 for t in done(before) if "duplicate_of" not in t.user_attrs) == die_after
    assert {t.user_attrs["stage"] for t in before} == ({UNIFORM} if die_after < 6 else {UNIFORM, PER_LAYER})
    _, stopped = staged(run, LocalPool(slots=2), fresh=False, optimizer=optimizer)
    assert stopped == "done"

    def record(ts):
        return {(t.user_attrs["generation"], t.user_attrs["index"]): (t.user_attrs["stage"],
                                                                      tuple(round(v, 10) for v in t.params.values()))
                for t in done(ts)}

    after, expected = record(trials(run)[1]), record(trials(ref)[1])
    assert len(after) == 9
    if optimizer == "cmaes":  # pycma re-asks the same points: nothing lost, repeated or asked differently
        assert after == expected
    else:  # an Optuna sampler's fresh asks after a resume are its own (tests/test_scheduler.py): same slots, stages
        assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in expected.items()}


def test_holdout_picks_never_fall_below_the_best_uniform_on_dev(tmp_path, reference):
    import shutil

    ref, loop, _ = reference("cmaes")
    shutil.copy(ref / "study.db", tmp_path / "study.db")  # the holdout values written here stay out of the reference
    ledger = Ledger.open(tmp_path, "t", loop.genome.genes, create=False)
    ts = done(ledger.trials())
    floor = dev_floor(ts)
    best_uniform = next(t for t in ts if t.user_attrs["stage"] == UNIFORM and fitness_of(t) == floor)
    worse = [t for t in ts if t.user_attrs["stage"] == PER_LAYER and fitness_of(t) < floor]
    assert worse, "the case needs a per-layer trial worse on dev than the best uniform one"
    ledger.set_holdout(worse[0].number, 10.0, {})  # great on holdout, worse on dev: never exported
    ledger.set_holdout(best_uniform.number, 0.0, {})
    assert fitness_of(ledger.best()) >= floor and ledger.best().number != worse[0].number
    loop.loop.ledger = ledger
    assert all(fitness_of(r.trial) >= floor for r in loop.loop._finalists_to_recheck(len(ts)))


def test_a_search_without_the_key_has_no_stage(tmp_path):
    sp = space(3, pipeline=False)
    assert sp.search.coarse_to_fine is None
    genome = Genome(tuple(sp.expand(N_LAYERS)))
    ledger = Ledger.open(tmp_path, "t", genome.genes, create=True)
    loop = StagedSearch(sp, genome, ledger, LocalPool(), OBJS, WEIGHTS, optimizer="cmaes", seed=5, popsize=3,
                        multi=False, progress=False, pipeline=False)
    assert loop.run(1) == "done"
    assert not any("stage" in t.user_attrs for t in ledger.trials()) and len(ledger.trials()) == 3
