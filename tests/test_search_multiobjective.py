"""A multi-objective (NSGA-II) search keeps per-set objectives apart; status prints and plot draws the front."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import yaml

from conftest import write_space


def _cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "evomerge", *args], capture_output=True, text=True, env=env,
                          timeout=900)


def test_nsga2_pareto_front_in_status_and_plot(miniature, tmp_path):
    path = write_space(tmp_path / "space.yaml", miniature, popsize=4, generations=2, max_items=6)
    space = yaml.safe_load(path.read_text())
    space["search"].update(optimizer="nsga2", finalists=1,
                           objectives={"xb_skill": [{"set": "mini_xb_facts"}], "xa_chat": [{"set": "mini_xa_chat"}]})
    path.write_text(yaml.safe_dump(space))
    runs = tmp_path / "runs"
    r = _cli("search", str(path), "--name", "mo", "--runs-dir", str(runs), "--workers", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{runs / 'mo' / 'study.db'}")
    assert sorted(study.metric_names) == ["xa_chat", "xb_skill"]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 8 and all(len(t.values) == 2 for t in done)
    assert study.best_trials
    r = _cli("status", str(runs / "mo"))
    assert r.returncode == 0 and "Pareto front" in r.stdout, r.stdout + r.stderr
    r = _cli("plot", str(runs / "mo"))
    assert r.returncode == 0, r.stderr
    assert (runs / "mo" / "plots" / "pareto.png").stat().st_size > 1000
    r = _cli("export", str(runs / "mo"), "--recipe-only")
    assert r.returncode == 0, r.stderr
