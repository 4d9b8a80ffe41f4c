"""A run survives kill -9 and budgets: `evomerge resume` continues with no completed evaluation lost or repeated and
the optimizer in the state it would have had (the same candidates as an uninterrupted run under the same seed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from conftest import write_space

GEN, POP = 3, 4


def _cli(*args, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "evomerge", *args], capture_output=True, text=True, env=env,
                          timeout=900, **kw)


def _trials(run):
    study = optuna.load_study(study_name=run.name, storage=f"sqlite:///{run / 'study.db'}")
    return study, study.get_trials(deepcopy=False)


def _genomes(trials):
    """(generation, index) -> genome of every completed, non-duplicate evaluation."""
    return {(t.user_attrs["generation"], t.user_attrs["index"]): tuple(round(v, 12) for v in t.user_attrs["genome"])
            for t in trials if t.state == optuna.trial.TrialState.COMPLETE}


@pytest.fixture(scope="module")
def reference(miniature, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    space = write_space(tmp / "space.yaml", miniature, popsize=POP, generations=GEN, max_items=6)
    r = _cli("search", str(space), "--name", "ref", "--runs-dir", str(tmp / "runs"), "--workers", "1",
             "--seed", "5", "--no-progress", "--finalists", "2")
    assert r.returncode == 0, r.stderr
    return space, tmp / "runs" / "ref"


@pytest.mark.parametrize("kill_after", [2, 7])
def test_kill_9_then_resume_loses_and_repeats_nothing(reference, tmp_path, kill_after):
    space, ref_run = reference
    runs = tmp_path / "runs"
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([sys.executable, "-m", "evomerge", "search", str(space), "--name", "k", "--runs-dir",
                             str(runs), "--workers", "1", "--seed", "5", "--no-progress", "--finalists", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = runs / "k" / "study.db"
    deadline = time.time() + 600
    while time.time() < deadline:  # kill once `kill_after` trials are finished (mid generation 1 or 2)
        time.sleep(0.3)
        if db.exists():
            try:
                _, ts = _trials(runs / "k")
            except Exception:  # noqa: BLE001 - the study may be half-created
                continue
            if sum(t.state.is_finished() for t in ts) >= kill_after:
                break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _, before = _trials(runs / "k")
    done_before = {t.number: t.user_attrs.get("genome") for t in before if t.state == optuna.trial.TrialState.COMPLETE}
    assert kill_after <= len(done_before) < GEN * POP

    r = _cli("resume", str(runs / "k"), "--no-progress")
    assert r.returncode == 0, r.stderr
    study, after = _trials(runs / "k")
    # nothing recorded was lost or changed
    for t in after:
        if t.number in done_before:
            assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["genome"] == done_before[t.number]
    # one completed evaluation per (generation, index), and the same candidates as the uninterrupted run
    done = [t for t in after if t.state == optuna.trial.TrialState.COMPLETE]
    keys = [(t.user_attrs["generation"], t.user_attrs["index"]) for t in done]
    assert len(keys) == len(set(keys)) == GEN * POP
    _, ref_trials = _trials(ref_run)
    assert _genomes(done) == _genomes(ref_trials)
    failed = [t.number for t in after if t.state == optuna.trial.TrialState.FAIL]
    assert set(failed) == set(study.user_attrs.get("interrupted", []))  # only the ones the dead driver left
    assert any(k.startswith("holdout:") for k in study.user_attrs)


def test_budget_stops_and_resume_finishes_and_status_export_plot(reference, tmp_path):
    space, ref_run = reference
    runs = tmp_path / "runs"
    r = _cli("search", str(space), "--name", "b", "--runs-dir", str(runs), "--workers", "1", "--seed", "5",
             "--no-progress", "--max-evals", "6", "--finalists", "0")
    assert r.returncode == 0, r.stderr
    _, ts = _trials(runs / "b")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in ts) == 6
    r = _cli("resume", str(runs / "b"), "--no-progress", "--finalists", "2")
    assert r.returncode == 0, r.stderr
    study, ts = _trials(runs / "b")
    assert _genomes(ts) == _genomes(_trials(ref_run)[1])

    r = _cli("status", str(runs / "b"))
    assert r.returncode == 0 and "complete" in r.stdout and "holdout" in r.stdout, r.stdout + r.stderr
    r = _cli("export", str(runs / "b"), "--recipe-only")
    assert r.returncode == 0, r.stderr
    hold = {int(k.split(":")[1]): v["fitness"] for k, v in study.user_attrs.items() if k.startswith("holdout:")}
    assert f"trial {max(hold, key=hold.get)} " in r.stdout  # export picks by holdout
    r = _cli("plot", str(runs / "b"))
    assert r.returncode == 0, r.stderr
    assert (runs / "b" / "plots" / "fitness.png").stat().st_size > 1000
