"""Smoke tests of the benchmark runner (bench/run_all.py): it runs for real on small sizes and what it writes parses;
no timing is asserted. The GPU acceptance run's CPU path is tests/test_gpu_acceptance.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PNG = b"\x89PNG\r\n\x1a\n"

TRADEOFF = {
    "objectives": ["xb_fidelity", "xa_instructions"], "axes": ["xb_fidelity", "xa_instructions"],
    "points": [{"kind": "source", "label": "instruct", "holdout": {"xb_fidelity": 0.1, "xa_instructions": 0.9}},
               {"kind": "grid", "label": "w=0.5", "holdout": {"xb_fidelity": 0.2, "xa_instructions": 0.8}},
               {"kind": "grid", "label": "w=1.0", "holdout": {"xb_fidelity": 0.5, "xa_instructions": 0.4}},
               {"kind": "front", "label": "trial 7", "holdout": {"xb_fidelity": 0.4, "xa_instructions": 0.7}}],
    "hypervolume": {"grid": 0.3, "front": 0.35, "reference": [0.0, 0.0]}, "dominating": []}


@pytest.fixture()
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import report
    import run_all

    return run_all, report


def test_run_all_quick_writes_json_table_and_plots(tmp_path):
    tradeoff = tmp_path / "tradeoff.json"
    tradeoff.write_text(json.dumps(TRADEOFF))
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--quick", "--only",
                           "disk_merge,resident_throughput", "--out", str(out), "--tradeoff", str(tradeoff)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "latest.json").read_text())
    assert [r["bench"] for r in data["results"]] == ["disk_merge", "resident_throughput"]
    for res in data["results"]:
        assert res["error"] == "" and res["rows"]
        assert all(math.isfinite(r["value"]) for r in res["rows"])
    goals = {r["metric"]: r for r in data["results"][1]["rows"] if r["goal"]}
    assert goals["linear float32"]["goal"] == ">= 0.8" and goals["ties float32"]["goal"] == ">= 0.3"
    disk = {r["metric"]: r for r in data["results"][0]["rows"]}
    assert disk["tensors identical to mergekit's"]["value"] == 1.0  # the outputs agree bit for bit
    table = (out / "latest.md").read_text()
    assert "| benchmark | metric | value | goal | met |" in table and "load average" in table
    assert "disk merge vs mergekit-yaml" in table and "resident merge / copy bandwidth" in table
    assert sorted(data["plots"]) == ["quickstart_tradeoff.png", "resident_throughput.png"]
    for name in data["plots"]:
        assert (out / name).read_bytes()[:8] == PNG and f"]({name})" in table


def test_a_missing_or_failing_script_is_recorded_as_failed(tmp_path, bench_modules):
    run_all, report = bench_modules
    (tmp_path / "boom.py").write_text("import sys\nprint('something broke')\nsys.exit(3)\n")
    (tmp_path / "silent.py").write_text("print('ran, wrote nothing')\n")
    missing, _ = run_all.run_one("nope", tmp_path / "out", True, 60, bench_dir=tmp_path)
    failed, _ = run_all.run_one("boom", tmp_path / "out", True, 60, bench_dir=tmp_path)
    silent, _ = run_all.run_one("silent", tmp_path / "out", True, 60, bench_dir=tmp_path)
    assert missing.error == "no script nope.py" and not missing.rows
    assert failed.error.startswith("exit 3: something broke")
    assert silent.error.startswith("wrote no silent.json")
    table = report.markdown_table([missing, failed])
    assert table.count("**failed**") == 2

