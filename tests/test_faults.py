"""Fault injection: kill -9 of the driver at random points, Ctrl-C, a second driver on a running run, corrupt or
truncated weight files, a full disk during export, and secrets in the environment. Every fault ends in a clear
message or a run that resumes with nothing lost; nothing ends in a traceback or a half-written directory.

Every search here runs the miniature models with 1 worker, the hf backend and a few items, so the whole file takes
a few minutes on 2 cores.
"""

from __future__ import annotations

import ast
import json
import os
import random
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from evomerge.cli import main
from evomerge.genome import Genome
from evomerge.rundir import RunLock, read_run

from conftest import REPO, write_space

GEN, POP = 4, 4  # 16 candidates: five kills that each let a candidate or two finish leave work to resume
ENV = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
DRIVE = ["--backend", "hf", "--no-progress"]


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evomerge", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=600, **kw)


def _start(*args: str) -> subprocess.Popen:
    # a session of its own, so a kill reaches the driver and the Ray processes it started, as a terminal's would
    return subprocess.Popen([sys.executable, "-m", "evomerge", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _trials(run: Path) -> tuple[optuna.Study | None, list]:
    """The run's study and trials; (None, []) while the study does not exist yet."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=run.name, storage=f"sqlite:///{run / 'study.db'}")
    except Exception:  # noqa: BLE001 - no study yet (or its tables are being created)
        return None, []
    return study, study.get_trials(deepcopy=False)


def _wait(run: Path, proc: subprocess.Popen, ok, timeout: float = 300) -> bool:
    """Poll the study until ok(trials) or the process ends; whether ok was reached."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        study, ts = _trials(run)
        if study is not None and ok(ts):
            return True
        time.sleep(0.1)
    return False


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evomerge: error:") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def space(miniature, tmp_path_factory) -> Path:
    return write_space(tmp_path_factory.mktemp("faults") / "space.yaml", miniature, popsize=POP, generations=GEN,
                       max_items=4)


# --- kill -9 at random points ----------------------------------------------------------------------------------
def _check_ledger(run: Path, before: dict[int, tuple]) -> dict[int, tuple]:
    """The ledger's invariants after a kill; returns the completed trials' fingerprints for the next check.

    - a finished trial (completed, or pruned by racing) never changes (state, values, params, user attributes) and
      is never lost;
    - each (generation, index) has at most one finished trial;
    - a trial's params are its genome decoded (what export rebuilds the model from is what was scored);
    - the only failed trials are the ones a dead driver left running (listed as `interrupted`).
    """
    study, trials = _trials(run)
    if study is None:
        assert not before
        return {}
    info = read_run(run)
    genome = Genome(tuple(info.space().expand(info.n_layers)))
    done = {t.number: (t.state.name, t.values, t.params, json.dumps(t.user_attrs, sort_keys=True)) for t in trials
            if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)}
    for number, print_ in before.items():
        assert done.get(number) == print_, f"finished trial {number} was lost or changed"
    keys = [(json.loads(a)["generation"], json.loads(a)["index"]) for *_, a in done.values()]
    assert len(keys) == len(set(keys)), f"a (generation, index) was finished twice: {sorted(keys)}"
    for state, _, _, a in done.values():  # a pruned trial keeps its batches and what the optimizer was told
        attrs = json.loads(a)
        if state == "PRUNED":
            assert attrs["pruned_reason"].startswith("racing:") and attrs["racing"] and attrs["told"]
    for t in trials:
        if "genome" in t.user_attrs and t.params:
            decoded = genome.decode(t.user_attrs["genome"])
            assert all(abs(decoded[k] - v) < 1e-9 for k, v in t.params.items()), f"trial {t.number}: params != genome"
    failed = {t.number for t in trials if t.state == optuna.trial.TrialState.FAIL}
    assert failed <= set(study.user_attrs.get("interrupted", [])), "a trial failed that no kill interrupted"
    return done


def test_kill_9_at_random_points_then_resume_loses_and_repeats_nothing(space, tmp_path):
    """Five SIGKILLs of `search`/`resume` at seeded random points (during start-up, between and inside candidates),
    each followed by `resume`; after every kill and at the end no finished trial is lost, changed or repeated. The
    candidates race (`search.racing`, 2 batches): a kill can land between batches, and a pruned trial's bound and
    told estimate must survive like a completed trial's values."""
    import yaml

    doc = yaml.safe_load(space.read_text())
    doc["search"]["racing"] = {"batches": 2, "confidence": 0.5, "keep": 1}
    space = tmp_path / "raced.yaml"
    space.write_text(yaml.safe_dump(doc))
    rng = random.Random(9)
    run = tmp_path / "runs" / "chain"
    seen: dict[int, tuple] = {}
    kills = mid_candidate = 0
    gens = GEN
    while kills < 5:
        fresh = not (run / "run.json").exists()
        proc = _start(*(["search", str(space), "--name", "chain", "--runs-dir", str(run.parent), "--seed", "4",
                         "--workers", "1", "--finalists", "1"] if fresh else
                        ["resume", str(run), "--generations", str(gens)]), *DRIVE)
        if fresh:  # a kill before the study exists is test_kill_before_the_study_exists_then_resume's case
            _wait(run, proc, lambda ts: True)
        n_done = sum(_finished(t) for t in _trials(run)[1])
        more = rng.choice([0, 0, 1, 2])  # 0: kill during start-up (Ray, the workers loading), else after candidates
        if more:
            _wait(run, proc, lambda ts: sum(_finished(t) for t in ts) >= n_done + more)
        time.sleep(rng.uniform(0.0, 2.5 if more == 0 else 0.6))
        if proc.poll() is not None:  # the run ended before this kill (a fast machine): extend it and go on
            assert proc.returncode == 0, proc.stderr.read()
            gens += 2
            continue
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        kills += 1
        ts = _trials(run)[1]
        mid_candidate += any(t.state == optuna.trial.TrialState.RUNNING for t in ts)
        seen = _check_ledger(run, seen)
    assert kills == 5 and mid_candidate >= 1, (kills, mid_candidate)

    r = _cli("resume", str(run), "--generations", str(gens), *DRIVE)
    assert r.returncode == 0, r.stderr
    done = _check_ledger(run, seen)
    study, trials = _trials(run)
    keys = sorted((json.loads(a)["generation"], json.loads(a)["index"]) for *_, a in done.values())
    assert keys == [(g, i) for g in range(gens) for i in range(POP)]  # every candidate finished exactly once
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert any(k.startswith("holdout:") for k in study.user_attrs)  # the finalists' re-check ran at the end


def _finished(t) -> bool:
    return t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def test_kill_before_the_study_exists_then_resume(space, tmp_path):
    run = tmp_path / "runs" / "early"
    proc = _start("search", str(space), "--name", "early", "--runs-dir", str(run.parent), "--workers", "1", *DRIVE)
    while proc.poll() is None and not (run / "run.json").exists():
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    if _trials(run)[0] is not None:
        pytest.skip("the kill landed after the study was created")
    r = _cli("resume", str(run), *DRIVE, "--max-evals", "1", "--finalists", "0")
    assert r.returncode == 0, r.stderr


def test_a_trial_left_waiting_by_a_kill_does_not_shift_params(space, tmp_path):
    run = tmp_path / "runs" / "waiting"
    r = _cli("search", str(space), "--name", "waiting", "--runs-dir", str(run.parent), "--workers", "1", *DRIVE,
             "--max-evals", "1", "--finalists", "0")
    assert r.returncode == 0, r.stderr
    study, _ = _trials(run)
    info = read_run(run)
    genes = info.space().expand(info.n_layers)
    study.enqueue_trial({g.name: g.high for g in genes})  # what a kill right after Ledger.start's enqueue leaves
    r = _cli("resume", str(run), *DRIVE, "--max-evals", "3", "--finalists", "0")
    assert r.returncode == 0, r.stderr
    _check_ledger(run, {})


# --- Ctrl-C and a second driver --------------------------------------------------------------------------------
def test_ctrl_c_records_in_flight_results_and_a_second_driver_is_refused(space, tmp_path):
    run = tmp_path / "runs" / "c"
    # many generations, so the run is surely still going when Ctrl-C comes (a fast machine finishes 5 in seconds)
    proc = _start("search", str(space), "--name", "c", "--runs-dir", str(run.parent), "--workers", "1",
                  "--generations", "40", *DRIVE)
    busy = _wait(run, proc, lambda ts: any(t.state == optuna.trial.TrialState.COMPLETE for t in ts)
                 and any(t.state == optuna.trial.TrialState.RUNNING for t in ts))
    assert busy, proc.communicate()
    owner = f"pid {proc.pid} on {socket.gethostname()}"
    try:
        for second in (["resume", str(run)], ["search", str(space), "--name", "c", "--runs-dir", str(run.parent)]):
            r = _cli(*second, *DRIVE)
            assert r.returncode == 2 and owner in _one_error_line(r.stderr), r.stderr
        in_flight = [t.number for t in _trials(run)[1] if t.state == optuna.trial.TrialState.RUNNING]
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole foreground group
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "stopped: interrupted" in out and "Traceback" not in err
    _, trials = _trials(run)
    states = {t.number: t.state for t in trials}
    assert in_flight and all(states[n] == optuna.trial.TrialState.COMPLETE for n in in_flight)
    assert not [t for t in trials if t.state != optuna.trial.TrialState.COMPLETE]
    with RunLock(run):  # the lock went with its process
        pass


# --- corrupt weight files --------------------------------------------------------------------------------------
def _corrupt_copy(src: Path, dst: Path, how: str) -> Path:
    import shutil

    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    data = f.read_bytes()
    if how == "header":
        f.write_bytes(data[:8] + b"\x00garbage{{{" + data[19:])
    else:
        f.write_bytes(data[: len(data) // 2])
    return f


@pytest.mark.parametrize("how", ["header", "truncated"])
@pytest.mark.parametrize("command", ["merge", "search", "eval"])
def test_a_corrupt_weight_file_is_named_in_one_line(miniature, tmp_path, capsys, command, how):
    bad = _corrupt_copy(miniature.languages["xb"], tmp_path / "xb", how)
    if command == "merge":
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"merge_method: linear\ndtype: float32\nmodels:\n  - model: {miniature.instruct}\n"
                          f"    parameters: {{weight: 0.5}}\n  - model: {bad.parent}\n    parameters: {{weight: 0.5}}\n")
        args = ["merge", str(recipe), str(tmp_path / "out")]
    elif command == "search":
        space = write_space(tmp_path / "space.yaml", miniature)
        space.write_text(space.read_text().replace(str(miniature.languages["xb"]), str(bad.parent)))
        args = ["search", str(space), "--runs-dir", str(tmp_path / "runs"), *DRIVE]
    else:
        args = ["eval", str(bad.parent), "--eval-set", str(REPO / "eval_sets" / "mini_xb_facts"), "--backend", "hf"]
    assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(bad) in line and ("truncated" in line or "corrupt" in line)
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()  # nothing was started


# --- a search with a secret in the environment, then export; a full disk during export -------------------------
@pytest.fixture(scope="module")
def token_run(space, tmp_path_factory):
    """A short search and an export with a Hugging Face token (and another secret) in the environment."""
    tmp = tmp_path_factory.mktemp("token")
    token, other = f"hf_{secrets.token_hex(16)}", f"sk-{secrets.token_hex(16)}"
    env = dict(ENV, HF_TOKEN=token, HUGGING_FACE_HUB_TOKEN=token, OPENAI_API_KEY=other)
    run = tmp / "runs" / "t"
    r1 = _cli("search", str(space), "--name", "t", "--runs-dir", str(run.parent), "--workers", "1", *DRIVE,
              "--max-evals", "3", "--finalists", "1", env=env)
    assert r1.returncode == 0, r1.stderr
    r2 = _cli("export", str(run), env=env)
    assert r2.returncode == 0, r2.stderr
    return run, (token, other), r1.stdout + r1.stderr + r2.stdout + r2.stderr


def test_secrets_in_the_environment_are_never_written(token_run):
    run, secrets_, output = token_run
    files = [p for p in run.rglob("*") if p.is_file()]
    assert (run / "export" / "manifest.json") in files and (run / "study.db") in files
    for secret in secrets_:
        assert secret not in output
        for p in files:
            assert secret.encode() not in p.read_bytes(), f"{secret[:3]}... written to {p}"


def _export_with_a_full_disk(run: Path, out: Path) -> subprocess.CompletedProcess:
    def limit() -> None:  # writes past 256 KiB fail with EFBIG, as on a full disk (no SIGXFSZ kill)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    return _cli("export", str(run), "--out", str(out), preexec_fn=limit)


def test_a_full_disk_during_export_leaves_no_export(token_run, tmp_path):
    run = token_run[0]
    out = tmp_path / "exp"
    r = _export_with_a_full_disk(run, out)
    assert r.returncode == 2, r.stderr
    line = _one_error_line(r.stderr)
    assert str(out) in line and "File too large" in line
    assert not out.exists() and not list(tmp_path.iterdir())  # no export, and no temporary leftovers


def test_a_full_disk_during_re_export_keeps_the_previous_export(token_run):
    run = token_run[0]
    before = {p.relative_to(run): p.read_bytes() for p in (run / "export").rglob("*") if p.is_file()}
    r = _export_with_a_full_disk(run, run / "export")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    after = {p.relative_to(run): p.read_bytes() for p in (run / "export").rglob("*") if p.is_file()}
    assert after == before and not [p for p in run.iterdir() if p.name.startswith(".export")]


# --- no remote code ---------------------------------------------------------------------------------------------
def test_every_model_or_tokenizer_load_refuses_remote_code():
    """Every Auto*.from_pretrained and vLLM LLM(...) call in the package says trust_remote_code=False explicitly."""
    calls = 0
    for path in (REPO / "evomerge").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            # Auto* classes are what may resolve to code shipped with a checkpoint (GenerationConfig never does)
            if (isinstance(func, ast.Attribute) and func.attr == "from_pretrained" and owner.startswith("Auto")) \
                    or getattr(func, "id", "") == "LLM":
                calls += 1
                kw = {k.arg: k.value for k in node.keywords}
                flag = kw.get("trust_remote_code")
                assert isinstance(flag, ast.Constant) and flag.value is False, f"{path}:{node.lineno}"
    assert calls >= 3
