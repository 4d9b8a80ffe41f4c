"""Smoke tests of issue 6's benchmarks: each runs with --quick as `bench/run_all.py` runs it and writes a
BenchResult with rows. Nothing here looks at timings (they belong to the benchmarks' reports)."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))


def _run_quick(name: str, tmp_path: Path):
    from report import read_json

    out = tmp_path / f"{name}.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), "--quick", "--json", str(out),
                        "--root", str(tmp_path / "models")], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    result = read_json(out)
    assert result.bench == name and result.rows
    assert all(math.isfinite(row.value) for row in result.rows)
    return result


def test_backend_agreement_quick(tmp_path):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    result = _run_quick("backend_agreement", tmp_path)
    rows = {r.metric: r for r in result.rows}
    diff = rows["max |log-prob difference|, vLLM vs HF"]
    assert diff.goal == "<= 0.001" and diff.met == (diff.value <= 1e-3)
    assert len(result.details["candidates"]) == 4


def test_busy_fraction_quick(tmp_path):
    result = _run_quick("busy_fraction", tmp_path)
    on, off = result.details["pipeline_on"], result.details["pipeline_off"]
    for run in (on, off):
        # every candidate of 2 generations of 4 was evaluated by the two workers and no trial failed
        assert run["failed"] == 0 and run["workers_seen"] == 2 and 0 < run["busy_fraction"] <= 1
        assert run["complete"] == run["candidates"] == 8


def test_fitness_cost_prints_one_row_per_mode(tmp_path):
    """bench/fitness_cost.py at toy sizes (4 candidates, 8 Belebele-shaped items): `--json` alone prints the mode
    rows the issue names; shared context must rank exactly as the full pass and compute fewer tokens."""
    import json

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(REPO / "bench" / "fitness_cost.py"), "--workloads", "belebele",
                        "--candidates", "4", "--items", "8", "--root", str(tmp_path), "--json"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = {row["mode"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"full", "shared", "racing", "reduced"}
    for row in rows.values():
        assert {"mode", "tokens_ratio", "kendall_tau", "same_export"} <= set(row) and row["candidates"] == 4
    assert rows["full"]["tokens_ratio"] == 1.0
    assert rows["shared"]["kendall_tau"] == 1.0 and rows["shared"]["same_export"]
    assert rows["shared"]["tokens_ratio"] > 1.5 and rows["reduced"]["tokens_ratio"] > rows["shared"]["tokens_ratio"]
