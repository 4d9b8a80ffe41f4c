"""Racing over items (evomerge/racing.py, issue 16): the bound on a known case and by simulation, the bar, a race
stopped early; the worker's batches against its full score on the miniature; the ledger of a raced search
(PRUNED with the bound, intermediate values, the estimate told) and its resume after the driver's death."""

from __future__ import annotations

import dataclasses
import math
import random

import optuna
import pytest

from evomerge import racing
from evomerge.fitness import Objective, Term
from evomerge.racing import Race, bar, batch_ends, beaten_by, upper_mean
from evomerge.scorers import SetScores
from evomerge.space import Racing
from evomerge.worker import Candidate, CandidateResult

from conftest import write_space
from test_scheduler import OBJS as OBJS_AB, Died, LocalPool, drive, fitness_scores, space, trials

Z95 = 1.6448536269514722  # one-sided 95%


# --- the bound ------------------------------------------------------------------------------------------------

def test_the_bound_on_known_cases():
    assert upper_mean(0.3, 200, 200, Z95) == 0.3  # all items seen: the mean itself
    assert upper_mean(0.3, 0, 200, Z95) == 1.0  # none seen: anything
    # 50 of 200 items at 0.3: Wilson on n_eff = 50 x 199 / 150 = 66.3 (worked by hand: 0.3987)
    assert upper_mean(0.3, 50, 200, Z95) == pytest.approx(0.3987, abs=2e-4)
    # all zeros so far still leaves room above (Wilson, not the normal interval's zero width)
    assert 0 < upper_mean(0.0, 50, 200, Z95) < 0.1
    # capped by what the unseen items could add: 199 of 200 at 0 -> at most 1/200
    assert upper_mean(0.0, 199, 200, Z95) <= 1 / 200
    # more items seen, tighter bound
    assert upper_mean(0.3, 150, 200, Z95) < upper_mean(0.3, 100, 200, Z95) < upper_mean(0.3, 50, 200, Z95)


def test_the_bound_covers_the_full_mean_at_its_confidence():
    """Simulated sets of 200 items (graded and 0/1 values), the first 50 seen: the full mean exceeds the bound in
    at most ~5% of the sets at z(95%)."""
    rng = random.Random(0)
    misses = trials_ = 0
    for k in range(3000):
        p = rng.random()
        if k % 2:
            values = [float(rng.random() < p) for _ in range(200)]
        else:
            values = [min(1.0, max(0.0, rng.gauss(p, 0.25))) for _ in range(200)]
        seen = values[:50]
        misses += sum(values) / 200 > upper_mean(sum(seen) / 50, 50, 200, Z95)
        trials_ += 1
    assert misses / trials_ <= 0.06, misses / trials_


def test_batches_and_the_bar():
    assert batch_ends(8, 4) == [2, 4, 6, 8]
    assert batch_ends(3, 4) == [1, 2, 2, 3]  # small sets: some batches add nothing
    assert bar([(0.5,), (0.9,), (0.7,)], keep=2, multi=False) == ((0.7,),)
    assert bar([(0.5,)], keep=2, multi=False) == ()  # fewer than `keep` told: nothing to prune against
    front = bar([(0.9, 0.1), (0.1, 0.9), (0.5, 0.5), (0.4, 0.4)], keep=1, multi=True)
    assert set(front) == {(0.9, 0.1), (0.1, 0.9), (0.5, 0.5)}
    assert beaten_by((0.45, 0.45), front) == (0.5, 0.5)
    assert beaten_by((0.45, math.inf), front) is None  # an objective not yet bounded cannot be beaten


OBJS = (Objective("a", (Term("a", "acc"),)),)


def synthetic_batches(values: list[float], batches: int):
    """What `evaluation.score_batches` yields for one set of per-item acc values."""
    done = 0
    for end in batch_ends(len(values), batches):
        if end > done:
            done = end
            seen = values[:done]
            yield done, {"a": SetScores({"acc": sum(seen) / done}, done)}, {"a": {"acc": seen}}


def test_a_hopeless_candidate_stops_and_a_good_one_runs_to_the_end():
    race = Race(4, 0.95, beat=((0.8,),))
    calls = []

    def counted(values):
        for b in synthetic_batches(values, 4):
            calls.append(b[0])
            yield b

    scores, steps, why = racing.run(race, counted([0.0] * 100), {"a": 100}, OBJS, None, "mean")
    assert why is not None and why.startswith("racing: upper bound") and "after 25 of 100 items" in why
    assert calls == [25] and scores["a"].n == 25  # nothing more was scored
    assert steps[0].estimate == (0.0,) and steps[0].upper[0] < 0.8
    good = [float(i % 10 != 0) for i in range(100)]  # 0.9
    scores, steps, why = racing.run(race, synthetic_batches(good, 4), {"a": 100}, OBJS, None, "mean")
    assert why is None and [s.items for s in steps] == [25, 50, 75, 100]
    assert scores["a"].metric("acc") == pytest.approx(0.9) and steps[-1].upper == steps[-1].estimate


# --- the worker on the miniature ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def evaluator(miniature, tmp_path_factory):
    from evomerge.hub import check_configs
    from evomerge.search import load_objectives
    from evomerge.space import load_space
    from evomerge.worker import Evaluator, EvaluatorSpec

    sp = load_space(write_space(tmp_path_factory.mktemp("racing") / "space.yaml", miniature, max_items=8))
    n_layers = check_configs(sp).n_layers
    objs, weights, _ = load_objectives(sp, allow_test_splits=False)
    recipe = sp.recipe({g.name: g.init for g in sp.expand(n_layers)}, n_layers).to_mergekit()
    spec = EvaluatorSpec(recipe, tuple(r.path for r in sp.eval_sets), "dev", 8, 0, threads=1,
                         objectives=tuple(objs), objective_weights=weights, scalarize=sp.search.scalarize)
    return Evaluator.start(spec, "w"), recipe


def test_a_race_run_to_the_end_scores_as_the_full_pass(evaluator):
    ev, recipe = evaluator
    full = ev.evaluate(Candidate(0, recipe))
    raced = ev.evaluate(Candidate(1, recipe, race=Race(3, 0.95)))  # no bar yet: all batches
    assert full.ok and raced.ok and raced.pruned is None
    assert [s["items"] for s in raced.race][-1] == sum(s.n for s in full.scores.values())
    for name, s in full.scores.items():
        assert raced.scores[name].n == s.n
        assert raced.scores[name].values == pytest.approx(s.values, abs=1e-6)


def test_a_race_against_an_unreachable_bar_stops_after_the_first_batch(evaluator):
    ev, recipe = evaluator
    r = ev.evaluate(Candidate(2, recipe, race=Race(4, 0.95, beat=((10.0,),))))
    assert r.ok and r.pruned.startswith("racing: upper bound") and len(r.race) == 1
    assert sum(s.n for s in r.scores.values()) == r.race[0]["items"] < 16


# --- the ledger of a raced search, and resume -------------------------------------------------------------------

def raced_scores(values: dict[str, float], race: Race | None) -> tuple:
    """A candidate raced on synthetic items: set "a" holds 40 items whose acc is 1 with the smooth fitness's
    probability (seeded by the genome, so the same candidate gets the same items); "b" its smooth value."""
    full = fitness_scores(values)
    p = min(1.0, max(0.0, full["a"].values["gold_prob"]))
    rng = random.Random(repr(sorted(values.items())))
    items = [float(rng.random() < p) for _ in range(40)]

    def batches():
        done = 0
        for end in batch_ends(40, race.batches):
            if end > done:
                done = end
                seen = items[:done]
                yield (done + 8, {"a": SetScores({"gold_prob": sum(seen) / done}, done), "b": full["b"]},
                       {"a": {"gold_prob": seen}})

    return racing.run(race, batches(), {"a": 40, "b": 8}, RACE_OBJS, {"a": 1.0, "b": 1.0}, "mean")


RACE_OBJS = OBJS_AB  # the scheduler tests' objectives: a and b, each a set's gold_prob


class RacingPool(LocalPool):
    """LocalPool whose candidates race (racing.run over synthetic items) when the scheduler gives them a Race."""

    def run(self, next_item, start, should_stop):
        def racing_start(item):
            cand = start(item)
            self.races[cand.number] = cand.race
            return cand

        self.races = {}
        for item, result in super().run(next_item, racing_start, should_stop):
            race = self.races.pop(result.number)
            if race is None or not result.ok:
                yield item, result
                continue
            scores, steps, why = raced_scores(item.values, race)
            yield item, CandidateResult(result.number, scores, worker="local", pruned=why,
                                        race=tuple(s.as_dict() for s in steps))


def raced_space(**kw):
    return space(6, pipeline=False, racing=Racing(batches=4, confidence=0.95, keep=2), finalists=2, **kw)


def told_of(ts) -> dict:
    out = {}
    for t in ts:
        key = (t.user_attrs.get("generation"), t.user_attrs.get("index"))
        if t.state == optuna.trial.TrialState.PRUNED:
            out[key] = ("pruned", tuple(t.user_attrs["genome"]), tuple(t.user_attrs["told"]))
        elif t.state == optuna.trial.TrialState.COMPLETE:
            out[key] = ("complete", tuple(t.user_attrs["genome"]), tuple(t.values))
    return out


def test_a_raced_search_records_prunes_bounds_and_intermediate_values(tmp_path):
    drive(tmp_path, raced_space(), RacingPool(slots=2), generations=5)
    study, ts = trials(tmp_path)
    pruned = [t for t in ts if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in ts if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and complete, "the synthetic search should prune some candidates and complete others"
    best = sorted((t.values[0] for t in complete), reverse=True)
    for t in pruned:
        assert t.user_attrs["pruned_reason"].startswith("racing: upper bound")
        steps = t.user_attrs["racing"]
        assert steps[-1]["items"] < 48 and t.user_attrs["told"] == steps[-1]["estimate"]
        assert t.user_attrs["told"][0] <= steps[-1]["upper"][0] < best[0]  # told under its bound, under the leaders
        assert t.intermediate_values == {s["items"]: s["estimate"][0] for s in steps}
        assert t.user_attrs["scores"]["a"]["n"] == steps[-1]["items"] - 8  # the items it was scored on
    for t in complete:
        assert max(t.intermediate_values) == 48  # every item, step by step
    # the first generation has no bar (nothing told yet): none of it is pruned
    assert all(t.user_attrs["generation"] > 0 for t in pruned)


@pytest.mark.parametrize("die_after", [8, 17])
def test_a_raced_search_resumes_as_an_uninterrupted_run(tmp_path, die_after):
    """The driver dies mid-run; the resume tells every pruned candidate the estimate it was told before and
    hands out the same candidates with the same bars: the same trials, pruned or complete, as a run that never
    died."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir()
    run.mkdir()
    drive(ref, raced_space(), RacingPool(slots=2), generations=5)
    with pytest.raises(Died):
        drive(run, raced_space(), RacingPool(slots=2, die_after=die_after), generations=5)
    _, stopped = drive(run, raced_space(), RacingPool(slots=2), generations=5, fresh=False)
    assert stopped == "done"
    want, got = told_of(trials(ref)[1]), told_of(trials(run)[1])
    assert any(v[0] == "pruned" for v in want.values())
    assert got == want


def test_the_first_pass_racing_generalizes_still_prunes_in_the_worker(evaluator):
    """`search.first_pass` (one look at a few items, a fraction of the best first pass) is still served."""
    ev, recipe = evaluator
    spec = ev.spec
    ev.spec = dataclasses.replace(spec, first_pass_items=3)
    try:
        r = ev.evaluate(Candidate(3, recipe, prune_below=10.0))
        kept = ev.evaluate(Candidate(4, recipe, prune_below=-10.0))
    finally:
        ev.spec = spec
    assert r.ok and r.pruned.startswith("first pass") and all(s.n == 3 for s in r.scores.values())
    assert kept.ok and kept.pruned is None and kept.first_pass == pytest.approx(r.first_pass)
