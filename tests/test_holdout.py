"""Holdout scores (evomerge/holdout.py): one scorer for the quickstart and the search's finalist re-check, recorded
where users look (export's manifest, status, the dashboard's study note); and what a user reads about a run is
true: which fitness is which, interrupted trials and the dead driver, the dry run's budget."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from evomerge.holdout import HoldoutResult, finalists_note, holdout_result, record, recorded_objectives
from evomerge.ledger import Ledger
from evomerge.rundir import RunLock, create_run, new_info
from evomerge.scorers import SetScores
from evomerge.worker import CandidateResult

from conftest import REPO, write_space

QUICKSTART_YAML = REPO / "search_spaces" / "quickstart.yaml"  # sets mini_xb_facts, mini_xa_chat; 2 seeds


@pytest.fixture(scope="module")
def world(miniature, tmp_path_factory):
    """The miniature space, its objectives, and the quickstart's holdout scorer on it (one resident model)."""
    from evomerge.hub import check_configs
    from evomerge.quickstart import _HoldoutScorer
    from evomerge.search import load_objectives
    from evomerge.space import load_space

    path = write_space(tmp_path_factory.mktemp("holdout") / "space.yaml", miniature, popsize=4, generations=2)
    space = load_space(path)
    n_layers = check_configs(space).n_layers
    objs, weights, _ = load_objectives(space, allow_test_splits=False)
    scorer = _HoldoutScorer(space, n_layers, objs, weights, seed=0)
    yield path, space, n_layers, objs, weights, scorer
    scorer.close()


def _params(space, n_layers: int, value: float) -> dict[str, float]:
    return {g.name: value for g in space.expand(n_layers)}


def test_the_quickstart_and_the_finalist_recheck_score_holdout_alike(world):
    """The quickstart's point (in-process scorer, per-item values kept) and a search worker's finalist re-check
    (Evaluator.evaluate on split holdout, then holdout_result) give the same scores, objectives and fitness."""
    from evomerge.worker import Candidate, Evaluator, EvaluatorSpec

    path, space, n_layers, objs, weights, scorer = world
    params = _params(space, n_layers, 0.7)
    point, = scorer.score([scorer.trial_job(7, params)])
    quick = scorer.results[("front", 7)]

    recipe = space.recipe(params, n_layers).to_mergekit()
    worker = Evaluator.start(EvaluatorSpec(recipe=scorer.template, eval_sets=tuple(r.path for r in space.eval_sets),
                                           split="dev", seed=0, threads=1), worker="w")
    result = worker.evaluate(Candidate(7, recipe, split="holdout"))
    assert result.ok, result.error
    finalist = holdout_result(result.scores, objs, weights, space.search.scalarize)

    def flat(r: HoldoutResult) -> dict[str, float]:
        return {f"{n}.{m}": v for n, s in r.scores.items() for m, v in s.values.items()}

    assert flat(quick) == pytest.approx(flat(finalist), abs=1e-9)
    assert dict(point.objectives) == pytest.approx(dict(finalist.objectives), abs=1e-9)
    assert quick.fitness == pytest.approx(finalist.fitness, abs=1e-9)
    # the holdout split, all of it, and each item's value averages to the set's score (what the bootstrap resamples)
    for name, s in quick.scores.items():
        assert s.n == 300 and len(point.items[f"{name}.gold_prob"]) == 300
        assert sum(point.items[f"{name}.gold_prob"]) / 300 == pytest.approx(s.values["gold_prob"], abs=1e-9)
    assert finalist.fitness != pytest.approx(holdout_result(  # the dev scores of the same merge differ
        worker.evaluate(Candidate(7, recipe)).scores, objs, weights, "mean").fitness, abs=1e-6)


def test_two_scoring_processes_score_as_one_and_a_dead_helper_hands_its_work_back(world):
    """holdout.py's helper process: the same scores as this process's model, and when it dies its points are
    scored here (a lost helper never loses a point)."""
    import os
    import signal

    from evomerge.holdout import HoldoutScorer

    path, space, n_layers, objs, weights, scorer = world
    jobs = [(space.recipe(_params(space, n_layers, v), n_layers).to_mergekit(), f"w={v}") for v in (0.3, 0.7, 1.1)]
    alone = HoldoutScorer(space, objs, weights, space.search.scalarize, scorer.template, 0)
    expected = [alone.score(*job) for job in jobs]
    alone.close()
    pair = HoldoutScorer(space, objs, weights, space.search.scalarize, scorer.template, 0, processes=2)
    try:
        assert pair.score_all(jobs) == expected and pair.count == 3
        for pid in list(pair._pool._processes):  # the helper dies between calls
            os.kill(pid, signal.SIGKILL)
        assert pair.score_all(jobs) == expected and pair.count == 6
        assert pair._pool is None  # this process scored them
    finally:
        pair.close()


def _run_with_two_trials(run: Path, space_path: Path, space, n_layers: int) -> Ledger:
    """A run whose trial 0 leads on dev (gold_prob 0.9) ahead of trial 1 (0.6), with the space's params."""
    create_run(run, new_info(run.name, space_path, 0, 1, n_layers))
    genes = space.expand(n_layers)
    ledger = Ledger.open(run, run.name, genes, create=True)
    for index, (value, dev) in enumerate(((0.4, 0.9), (1.3, 0.6))):
        number = ledger.start({g.name: value for g in genes}, {"generation": 0, "index": index})
        scores = {"mini_xb_facts": SetScores({"gold_prob": dev}, 24), "mini_xa_chat": SetScores({"gold_prob": dev}, 24)}
        ledger.finish(CandidateResult(number, scores, worker="w"), [dev],
                      {"fitness": dev, "objectives": {"mini_xb_facts": dev, "mini_xa_chat": dev}})
    return ledger


def test_quickstart_holdout_reaches_the_manifest_status_and_the_dashboard_note(world, tmp_path):
    from evomerge.export import export_run
    from evomerge.quickstart import _note, tradeoff
    from evomerge.status import render, run_status

    path, space, n_layers, objs, weights, scorer = world
    run = tmp_path / "q"
    ledger = _run_with_two_trials(run, path, space, n_layers)
    trials = ledger.trials()
    points = scorer.score([scorer.trial_job(t.number, t.params) for t in trials])
    scorer.record(run, "q", "front", points)  # what the quickstart does with its front

    hold = Ledger.open(run, "q", (), create=False).holdout()
    assert set(hold) == {0, 1}
    best = max(hold, key=lambda n: hold[n]["fitness"])
    assert hold[best]["fitness"] == pytest.approx(scorer.results[("front", best)].fitness)

    export = export_run(run, trial=best, with_model=False)
    manifest = json.loads((export.recipe_path.parent / "manifest.json").read_text())
    assert manifest["trial"] == best and manifest["chosen"] == "holdout"
    assert manifest["holdout_fitness"] == pytest.approx(hold[best]["fitness"])
    assert manifest["holdout_objectives"] == pytest.approx(dict(points[best].objectives))
    assert set(manifest["holdout_scores"]) == {"mini_xb_facts", "mini_xa_chat"}
    assert manifest["dev_fitness"] == pytest.approx((0.9, 0.6)[best])
    assert "re-scored on holdout" in export.recipe_path.read_text().splitlines()[0]

    text = render(run_status(run))
    assert (f"exported trial {best}, chosen on holdout: holdout {hold[best]['fitness']:.4f}, "
            f"dev {(0.9, 0.6)[best]:.4f}") in text, text

    # the dashboard's study note: the search's finalist table, then the quickstart's whole holdout table
    get_note = pytest.importorskip("optuna_dashboard").get_note
    names = [o.name for o in objs]
    assert f"| finalist | trial {best} |" in finalists_note(Ledger.open(run, "q", (), create=False), objs)
    grid, = scorer.score([scorer.weights_job("grid", "w=1", 1.0, 1.0)])
    _note(run, "q", [grid, *points], names, tradeoff([grid, *points], names, names))
    note = get_note(optuna.load_study(study_name="q", storage=f"sqlite:///{run / 'study.db'}"))
    assert "holdout against the baselines" in note and "| grid | w=1 |" in note
    assert f"| front | trial {best} |" in note and f"Export takes **trial {best}**" in note


def test_a_finalist_recheck_stores_the_holdout_and_writes_the_note(tmp_path, capsys, monkeypatch):
    """holdout.record + finalists_note (what the scheduler's re-check runs); without optuna-dashboard the note is
    skipped with one line, once."""
    import sys

    from evomerge import dashboard
    from evomerge.fitness import Objective, Term

    ledger = Ledger.open(tmp_path, "n", (), create=True)
    objs = (Objective("a", (Term("a", "gold_prob"),)),)
    result = holdout_result({"a": SetScores({"gold_prob": 0.25}, 4)}, objs, None, "mean", {"a.gold_prob": [0, 1, 0, 0]})
    assert isinstance(result, HoldoutResult) and result.fitness == 0.25 and result.items["a.gold_prob"] == (0, 1, 0, 0)
    record(ledger, 3, result)
    assert ledger.holdout()[3]["fitness"] == 0.25
    assert recorded_objectives(ledger.holdout()[3], objs) == {"a": 0.25}
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # as if not installed
    monkeypatch.setattr(dashboard, "_NOTE_WARNED", False)
    assert not dashboard.save_study_note(ledger.study, "x") and not dashboard.save_study_note(ledger.study, "x")
    err = capsys.readouterr().err
    assert err.count("optuna-dashboard is not installed") == 1 and len(err.strip().splitlines()) == 1


def test_the_search_report_says_which_fitness_is_which(tmp_path):
    """The last line names the dev leader and, apart from it, the trial chosen on holdout with both fitnesses."""
    from evomerge.search import _summary

    ledger = Ledger.open(tmp_path, "s", (), create=True)
    for number, dev in enumerate((0.8190, 0.8139, 0.5)):
        ledger.start({}, {})
        ledger.finish(CandidateResult(number, worker="w"), [dev], {"fitness": dev})
    ledger.start({}, {})  # a raced candidate pruned: neither completed nor failed
    ledger.finish(CandidateResult(3, worker="w", pruned="racing: upper bound 0.3 under the bar 0.8"), None,
                  {"told": [0.2]})
    ledger.set_holdout(1, 0.80, {})
    ledger.set_holdout(0, 0.75, {})
    s = _summary(ledger, tmp_path, (), "done")
    assert (s.best_trial, s.dev_best_trial, s.holdout_value) == (1, 0, 0.80)
    assert s.report() == ("3 completed, 1 pruned, 0 failed; best dev fitness 0.8190 (trial 0); export takes trial 1, "
                          "chosen on holdout: holdout 0.8000, dev 0.8139")


def test_export_says_which_fitness_is_which(tmp_path, capsys):
    """`evomerge export` (recipe only, no model needed) names the dev and the holdout fitness as status does: the
    trial chosen on holdout with both, a run without a holdout re-check on dev; the recipe's header alike."""
    from evomerge.cli import main
    from evomerge.rundir import read_run
    from evomerge.status import render, run_status

    run = tmp_path / "x"
    create_run(run, new_info("x", QUICKSTART_YAML, 0, 1, 4))
    genes = read_run(run).space().expand(4)
    ledger = Ledger.open(run, "x", genes, create=True)
    for number, dev in enumerate((0.8190, 0.8139)):
        ledger.start({g.name: g.low for g in genes}, {})
        ledger.finish(CandidateResult(number, worker="w"), [dev], {"fitness": dev})
    assert main(["export", str(run), "--recipe-only"]) == 0  # no holdout re-check: the dev leader, on dev
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("exported trial 0 (chosen on dev fitness (no holdout re-check): dev 0.8190): recipe "), out
    ledger.set_holdout(1, 0.80, {})
    ledger.set_holdout(0, 0.75, {})
    assert main(["export", str(run), "--recipe-only"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("exported trial 1 (chosen on holdout: holdout 0.8000, dev 0.8139): recipe "), line
    assert "fitness 0.8139" not in line  # the dev figure never stands unnamed
    header = (run / "export" / "recipe.yaml").read_text().splitlines()[0]
    assert header.endswith("trial 1, chosen on holdout (best of the 2 trials re-scored on holdout): holdout 0.800000, "
                           "dev 0.813900"), header
    assert "exported trial 1, chosen on holdout: holdout 0.8000, dev 0.8139" in render(run_status(run))
    assert main(["export", str(run), "--recipe-only", "--trial", "0"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("exported trial 0 (chosen with --trial: holdout 0.7500, dev 0.8190): recipe "), line


def test_status_names_the_dead_driver_and_shows_interrupted_trials(tmp_path):
    from evomerge.search import _summary
    from evomerge.status import render, run_status

    run = tmp_path / "k"
    create_run(run, new_info("k", QUICKSTART_YAML, 0, 1, 4))
    with RunLock(run):  # the driver: holds the run, starts two trials, finishes one
        ledger = Ledger.open(run, "k", (), create=True)
        for _ in range(2):
            ledger.start({}, {})
        ledger.finish(CandidateResult(0, worker="w"), [0.5], {"fitness": 0.5})
        driver = (run / "lock").read_text()
        text = render(run_status(run))
        assert "1 running" in text and f"driver: {driver} (running)" in text, text
    # kill -9: the lock is free, trial 1 stays RUNNING
    text = render(run_status(run))
    assert "1 interrupted" in text and "running" not in text.splitlines()[0], text
    assert f"driver {driver} is gone" in text, text
    # resume fails the left-over trial and evaluates its candidate again: interrupted, not a failure
    Ledger.open(run, "k", (), create=False).fail_interrupted()
    text = render(run_status(run))
    assert "1 interrupted" in text and "fail" not in text.splitlines()[0] and "is gone" not in text, text
    assert "1 trial(s) interrupted by a driver that died" in text
    s = _summary(Ledger.open(run, "k", (), create=False), run, (), "done")
    assert (s.n_failed, s.n_interrupted) == (0, 1) and "1 interrupted (evaluated again)" in s.report()


def test_dry_run_prints_the_total_evaluations_and_that_seeds_count(world, capsys):
    from evomerge.cli import main

    path = world[0]  # popsize 4, generations 2, the quickstart's 2 seed candidates, 3 finalists
    assert main(["search", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "budget: at most 8 evaluations (2 generations x 4)" in out, out
    assert "the 2 seed candidate(s) take slots of the first generation(s) and count toward them" in out
    assert "plus 3 finalist re-check(s) on holdout at the end (not counted)" in out
    assert main(["search", str(path), "--dry-run", "--max-evals", "5", "--finalists", "0"]) == 0
    out = capsys.readouterr().out
    assert "capped at 5 by max_evals" in out and "finalist" not in out.split("budget:")[1].splitlines()[0]
