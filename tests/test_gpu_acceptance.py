"""The GPU acceptance run's code path on CPU (bench/gpu_acceptance.py --shape tiny --device cpu): both modes run for
real on tiny Llama shapes (head_dim 64) and write well-formed rows of measured figures. No timing is asserted."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_acceptance.py"
NOT_MEASURED = "not measured: "


def _run(tmp_path: Path, *args: str):
    sys.path.insert(0, str(REPO / "bench"))
    from report import read_json

    out = tmp_path / "gpu_acceptance.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--shape", "tiny", "--device", "cpu", "--root",
                           str(tmp_path / "models"), "--json", str(out), *args],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| benchmark | metric | value | goal | met |" in proc.stdout  # the markdown table
    result = read_json(out)
    assert result.bench == "gpu_acceptance" and result.rows and not result.error
    for row in result.rows:  # every figure measured, or saying why not
        assert math.isfinite(row.value) or row.note.startswith(NOT_MEASURED), row
        assert row.met is None or row.goal, row
    return result, {r.metric: r for r in result.rows}, proc.stdout


def _check_candidates(details: dict, n: int) -> None:
    cands = details["candidates"]
    assert len(cands) == n and all(c["error"] is None for c in cands)
    for c in cands:
        assert c["merge_seconds"] > 0 and c["score_seconds"] > 0
        (scores,) = c["scores"].values()
        assert all(math.isfinite(v) for v in scores.values()) and 0 < scores["gold_prob"] < 1
    assert len({c["scores"]["accept_mc"]["gold_prob"] for c in cands}) > 1  # the candidates differ


def test_hf_mode_drives_the_worker_evaluator_without_ray_or_vllm(tmp_path):
    result, rows, stdout = _run(tmp_path, "--backend", "hf")
    label = "HF, in-place ResidentMerge"
    assert rows[f"{label}: merge + swap, s per candidate (median)"].value > 0
    assert rows[f"{label}: scoring, s per candidate (median)"].value > 0
    scored = rows[f"{label}: candidates scored, all scores finite"]
    assert scored.value == 12 and scored.met
    _check_candidates(result.details, 12)
    imports = rows["ray or vllm modules imported"]
    assert imports.value == 0 and imports.met
    assert result.details["heavy_imports"] == []  # nor optuna, cma, datasets, matplotlib, py3langid
    assert "ray/vllm imported: none" in stdout
    assert rows["HF worker on the requested device (cpu)"].met
    assert rows["peak device memory measured"].value > 0
    assert rows["peak device memory measured / planned"].value > 0
    diff = rows["HF bfloat16 vs HF float32: max |log-prob difference|"]
    assert 0 < diff.value < 5  # bfloat16 rounding, not a different model
    ref = result.details["agreement"]
    assert len(ref["low"]) == len(ref["fp32"]) == ref["offsets"][-1] > 0
    assert result.details["plan"]["backend"] == "hf" and result.details["plan"]["device"] == "cpu"


def test_vllm_mode_runs_the_search_and_the_agreement_probe(tmp_path):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    # two tensor-parallel ranks (a core each) when the machine has two cores: the search's Ray worker then starts a
    # two-rank engine, the path a multi-GPU run takes (tests/test_tensor_parallel.py checks the ranks' slices and
    # their scores against the HF backend)
    tp = 2 if len(os.sched_getaffinity(0)) >= 2 else 1
    result, rows, _ = _run(tmp_path, "--backend", "vllm", "--candidates", "6", "--swaps", "2", "--tp", str(tp))
    label = f"vLLM search, TP={tp}"
    done = rows[f"{label}: candidates complete"]
    assert done.value == 6 and done.met
    assert rows[f"{label}: merge + swap, s per candidate (median)"].value > 0
    assert rows[f"{label}: scoring, s per candidate (median)"].value > 0
    (search,) = result.details["searches"]
    _check_candidates(search, 6)
    assert search["run_json"]["tensor_parallel"] == tp and search["run_json"]["backend"] == "vllm"
    for ref in ("HF bfloat16", "HF float32"):
        diff = rows[f"vLLM bfloat16 vs {ref}: max |log-prob difference|"]
        assert 0 <= diff.value < 5
    graphs = rows["max |score difference| over 2 swaps, CUDA graphs on vs off"]
    assert graphs.note.startswith(NOT_MEASURED + "CPU")
    assert len(result.details["probe_eager"]["candidates"]) == 2
