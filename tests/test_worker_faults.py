"""Faults during a search: a worker killed mid-candidate is replaced and its candidate retried; a collapsed
model's NaN scores are a failed result, not a crash."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import optuna

from evomerge import evaluation
from evomerge.scorers import SetScores
from evomerge.worker import Candidate, Evaluator

from conftest import write_space

KILLED = 2  # the first candidate after the space's two seed candidates


def test_a_worker_killed_mid_candidate_is_replaced_and_the_run_completes(miniature, tmp_path):
    space = write_space(tmp_path / "space.yaml", miniature, popsize=4, generations=1, max_items=4)
    runs, marker = tmp_path / "runs", tmp_path / "killed"
    # the test hook in worker.py: the worker that starts trial KILLED first dies with os._exit(1)
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
               EVOMERGE_TEST_KILL_WORKER_ON_TRIAL=str(KILLED), EVOMERGE_TEST_KILL_MARKER=str(marker))
    r = subprocess.run([sys.executable, "-m", "evomerge", "search", str(space), "--name", "faults", "--runs-dir",
                        str(runs), "--workers", "2", "--seed", "3", "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert marker.exists()  # a worker did die

    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{runs / 'faults' / 'study.db'}")
    trials = study.get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted((t.user_attrs["generation"], t.user_attrs["index"]) for t in complete) == [(0, i) for i in range(4)]
    assert len(trials) == 4  # the retry finished the trial opened at hand-over; no second trial
    killed = next(t for t in trials if t.number == KILLED)
    assert killed.state == optuna.trial.TrialState.COMPLETE and killed.user_attrs["worker"].startswith("worker-")
    # each worker's output has its own file, the replacement's too once it has started (the run may end before it
    # does: the surviving worker can finish the retried candidate first); every trial names the log of its worker
    logs = sorted(p.name for p in (runs / "faults" / "workers").glob("*.log"))
    assert logs in (["worker-0.log", "worker-1.log"], ["worker-0.log", "worker-1.log", "worker-2.log"]), logs
    for t in trials:
        assert t.user_attrs["worker_log"] == str(runs / "faults" / "workers" / f"{t.user_attrs['worker']}.log")


def test_non_finite_scores_are_a_failed_result(monkeypatch):
    monkeypatch.setattr(evaluation, "score", lambda backend, prepared: {"s": SetScores({"acc": math.nan}, 3)})
    ev = Evaluator(backend=None, apply=lambda recipe: None, prepared=[], worker="w")
    recipe = {"merge_method": "linear", "models": [{"model": "m", "parameters": {"weight": 1.0}}], "dtype": "float32"}
    result = ev.evaluate(Candidate(7, recipe))
    assert not result.ok and result.error == "non-finite scores (collapsed model)" and result.number == 7
