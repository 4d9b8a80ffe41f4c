"""The Ray pool, for real (a local Ray instance, the miniature models): runs that cannot fit stop in one line before
any worker starts, a worker that cannot start stops the run with its cause and log, and worker output goes to
runs/<name>/workers/<worker>.log at the file-descriptor level."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import optuna
import yaml

from evomerge.pool import local_cores
from evomerge.worker import Candidate, Evaluator

from conftest import write_space
from listeners import is_loopback, listeners, process_tree


def _cli(*args, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "evomerge", *args], capture_output=True, text=True, env=env,
                          timeout=900)


def test_more_workers_than_cores_exits_2_in_one_line(miniature, tmp_path):
    space = write_space(tmp_path / "space.yaml", miniature, popsize=4, generations=1, max_items=4)
    runs = tmp_path / "runs"
    r = _cli("search", str(space), "--name", "many", "--runs-dir", str(runs), "--workers", "64", "--no-progress")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("evomerge: error: --workers: 64 workers need 64 CPUs")
    assert f"this machine has {local_cores()}" in lines[0] and f"use --workers {local_cores()}" in lines[0]
    assert not (runs / "many").exists()  # refused before the run directory is made: the same name can be reused


def test_a_memory_plan_that_cannot_fit_exits_2_in_one_line(miniature, tmp_path):
    """A plan refused before anything starts: one worker that must hold a 50-million-token scoring batch (its
    logits and activations), far more than this machine's RAM."""
    space = write_space(tmp_path / "space.yaml", miniature, popsize=4, generations=1, max_items=4)
    cfg = yaml.safe_load(space.read_text())
    cfg["search"]["max_model_len"] = 50_000_000
    space.write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "runs"
    r = _cli("search", str(space), "--name", "big", "--runs-dir", str(runs), "--workers", "1", "--backend", "hf",
             "--no-progress")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("evomerge: error: memory plan: does not fit: a worker needs"), lines[0]
    assert "largest: " in lines[0] and "search.max_model_len" in lines[0]
    assert not (runs / "big").exists()
    dry = _cli("search", str(space), "--workers", "1", "--backend", "hf", "--dry-run")  # the plan, item by item
    assert dry.returncode == 0 and "DOES NOT FIT" in dry.stdout and "logits" in dry.stdout, dry.stdout + dry.stderr


def test_a_worker_that_cannot_start_stops_the_run_with_its_cause(miniature, tmp_path):
    """The instruct model's tokenizer is damaged: the driver never loads it (configs and weight headers are fine),
    every worker fails in `start`. The worker is started twice, then the run stops in one line naming the cause
    and the log; it is not respawned for every candidate."""
    broken = tmp_path / "instruct"
    shutil.copytree(miniature.instruct, broken)
    (broken / "tokenizer.json").write_text("{ this is not a tokenizer")
    space = write_space(tmp_path / "space.yaml", miniature, popsize=4, generations=2, max_items=4)
    data = yaml.safe_load(space.read_text())
    data["models"][1]["path"] = str(broken)
    space.write_text(yaml.safe_dump(data))
    runs = tmp_path / "runs"
    r = _cli("search", str(space), "--name", "broken", "--runs-dir", str(runs), "--workers", "1", "--no-progress")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    logs = sorted((runs / "broken" / "workers").glob("*.log"))
    assert [p.name for p in logs] == ["worker-0.log", "worker-1.log"]  # the first start and one more, no third
    assert lines[0].startswith("evomerge: error: worker-1: could not start, twice: "), lines[0]
    assert f"its log: {logs[1]}" in lines[0] and "evomerge resume" in lines[0]
    for log in logs:  # each log has the worker's own account: its header and the traceback of the failure
        text = log.read_text()
        assert f" {log.stem}: pid " in text.splitlines()[0], text
        assert "Traceback" in text and "tokenizer" in text.lower()
    study = optuna.load_study(study_name="broken", storage=f"sqlite:///{runs / 'broken' / 'study.db'}")
    assert study.get_trials() == []  # no trial was opened: candidates go only to started workers
    r = _cli("status", str(runs / "broken"))
    assert r.returncode == 0, r.stderr


def test_a_failed_candidate_keeps_its_whole_error_and_where_it_was_raised():
    message = "the merge went wrong: " + "x" * 900 + "\nsecond line of the message"

    def apply(recipe):
        raise ValueError(message)

    ev = Evaluator(backend=None, apply=apply, prepared=[], worker="w")
    recipe = {"merge_method": "linear", "models": [{"model": "m", "parameters": {"weight": 1.0}}], "dtype": "float32"}
    result = ev.evaluate(Candidate(3, recipe))
    assert not result.ok
    assert result.error.startswith(f"ValueError: {message}\nTraceback (most recent call last")  # not cut
    assert "in apply" in result.error and "raise ValueError(message)" in result.error


def test_output_is_redirected_at_the_file_descriptor_level(tmp_path):
    """What Python prints, what is written to fd 1 and 2 directly, and what a child process prints (as vLLM's
    rank processes do) all land in the log."""
    log = tmp_path / "workers" / "w.log"
    code = textwrap.dedent(f"""
        import os, subprocess, sys
        from evomerge.worker import redirect_output
        print("before")
        redirect_output({str(log)!r})
        print("from python")
        sys.stderr.write("from python stderr\\n")
        os.write(1, b"from fd 1\\n")
        os.write(2, b"from fd 2\\n")
        sys.stdout.flush()
        subprocess.run(["sh", "-c", "echo from a child; echo child stderr >&2"], check=True)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "before\n" and r.stderr == ""
    text = log.read_text()
    for line in ("from python", "from python stderr", "from fd 1", "from fd 2", "from a child", "child stderr"):
        assert line in text.splitlines(), text


# --- listeners: a local run's Ray processes listen on the loopback interface only ---------------------------------

def test_a_local_run_listens_on_the_loopback_interface_only(miniature, tmp_path):
    import time

    space = write_space(tmp_path / "space.yaml", miniature, popsize=4, generations=1, max_items=4)
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([sys.executable, "-m", "evomerge", "search", str(space), "--name", "l", "--runs-dir",
                             str(tmp_path / "runs"), "--workers", "1", "--no-progress", "--finalists", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[tuple[str, str]] = set()
    while proc.poll() is None:  # every listener any process of the run opened, sampled as it runs
        seen |= listeners(process_tree(proc.pid))
        time.sleep(0.3)
    out, err = proc.communicate()
    assert proc.returncode == 0, out + err
    names = {name for name, _ in seen}
    assert {"gcs_server", "raylet"} <= names, seen  # Ray's servers were seen listening
    assert all(is_loopback(addr) for _, addr in seen), sorted(seen)
    # the engine the workers used is in run.json (resume reuses it)
    from evomerge.rundir import read_run

    info = read_run(tmp_path / "runs" / "l")
    assert (info.backend, info.device, info.dtype, info.tensor_parallel) == ("hf", "cpu", "float32", 1)


# --- one local Ray instance for searches run one after another (the quickstart's two) ---------------------------

def test_searches_in_one_local_ray_join_it_and_take_only_their_own_actors_down(miniature, tmp_path):
    import ray

    from evomerge.pool import local_ray
    from evomerge.search import SearchOptions, run_search

    space = write_space(tmp_path / "space.yaml", miniature, popsize=3, generations=1, max_items=2)
    runs = tmp_path / "runs"
    with local_ray():
        started = ray.get_runtime_context().get_node_id()
        for name in ("first", "second"):
            summary = run_search(space, SearchOptions(name=name, runs_dir=runs, workers=1, finalists=0,
                                                      progress=False))
            assert summary.n_complete == 3 and summary.n_failed == 0
            # the pool joined this process's instance and left it running, with its own actor gone
            assert ray.is_initialized() and ray.get_runtime_context().get_node_id() == started
            assert _cpus_freed(ray), ray.available_resources()
    assert not ray.is_initialized()  # the context stopped it


def _cpus_freed(ray, seconds: float = 60.0) -> bool:
    """Whether every CPU of the local instance is free again (a killed actor's CPU comes back once its process is
    gone: asynchronously), within `seconds`."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) == local_cores():
            return True
        time.sleep(0.2)
    return False
