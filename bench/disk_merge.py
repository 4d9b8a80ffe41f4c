"""`evomerge merge` vs `mergekit-yaml` on the same recipe and models, side by side in one run: wall time and peak RSS.

Models (bench/models.py): base + instruct + one language model, a 246M-parameter Llama by default (470 MB per
model in bfloat16). Recipe: per-layer task arithmetic (instruct weight 1, the language model a 16-entry gradient
list). Each command runs as its own process; its peak RSS is the child's ru_maxrss (os.wait4). One untimed run of
each warms the page cache, then the two alternate `--reps` times. The outputs are compared tensor by tensor.

    .venv/bin/python bench/disk_merge.py [--scale 1.0] [--reps 3] [--dtype bfloat16] [--json PATH] [--quick]

`--quick`: an eighth of the model (scale 0.125: 2 layers, vocabulary 4000), no warm-up run, one timed repetition.
Goals (issue 3): at least 2x faster and at most half of mergekit's peak RSS.
"""

from __future__ import annotations

import tempfile
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import Shape, build_sources  # noqa: E402
from report import BenchResult, Row, add_arguments, pick, write_json  # noqa: E402

from evomerge.tensors import ModelFiles  # noqa: E402

BIN = Path(sys.executable).parent


def run(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{err[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=None, help="model size (1.0, the default: 246M parameters)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 3; --quick: 1)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "evomerge-bench")
    add_arguments(ap)
    args = ap.parse_args()
    args.scale = pick(args.scale, 1.0, 0.125, args.quick)
    args.reps = pick(args.reps, 3, 1, args.quick)
    shape = Shape() if args.scale == 1.0 else Shape.scaled(args.scale)
    paths = build_sources(args.root, shape, args.dtype)
    weights = [round(0.2 + 1.0 * i / max(1, shape.layers - 1), 4) for i in range(shape.layers)]
    recipe = {"merge_method": "task_arithmetic", "base_model": str(paths["base"]), "dtype": args.dtype,
              "models": [{"model": str(paths["instruct"]), "parameters": {"weight": 1.0}},
                         {"model": str(paths["lang"]), "parameters": {"weight": weights}}]}
    work = args.root / "disk-merge"
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "recipe.yaml"
    cfg.write_text(yaml.safe_dump(recipe, sort_keys=False))
    outs = {"evomerge": work / "out-evomerge", "mergekit": work / "out-mergekit"}
    cmds = {"evomerge": [str(BIN / "evomerge"), "merge", str(cfg), str(outs["evomerge"])],
            "mergekit": [str(BIN / "mergekit-yaml"), str(cfg), str(outs["mergekit"]), "--copy-tokenizer"]}
    baseline = run([sys.executable, "-c", "import torch, evomerge.merge"])[1]

    files = ModelFiles.open(paths["base"])
    sizes = [torch.Size(files.shape(n)).numel() * getattr(torch, args.dtype).itemsize for n in files.names()]
    model_bytes, largest = sum(sizes), max(sizes)
    print(f"model: {shape.params() / 1e6:.0f}M parameters, {model_bytes / 1e6:.0f} MB per model in {args.dtype}; "
          f"largest tensor {largest / 1e6:.1f} MB; 3 sources; {os.cpu_count()} CPUs")
    print(f"python + torch + evomerge imported: RSS {baseline / 1e6:.0f} MB")
    results: dict[str, list[tuple[float, int]]] = {k: [] for k in cmds}
    for k, cmd in ({} if args.quick else cmds).items():  # warm the page cache (--quick: none, to save time)
        shutil.rmtree(outs[k], ignore_errors=True)
        run(cmd)
    for _ in range(args.reps):
        for k, cmd in cmds.items():
            shutil.rmtree(outs[k], ignore_errors=True)
            results[k].append(run(cmd))
    for k, rs in results.items():
        walls, rss = [w for w, _ in rs], [r for _, r in rs]
        print(f"{k:9} wall s: min {min(walls):6.2f} median {statistics.median(walls):6.2f}   "
              f"peak RSS MB: max {max(rss) / 1e6:6.0f}  (all: {', '.join(f'{w:.2f}s/{r / 1e6:.0f}MB' for w, r in rs)})")
    ev, mk = results["evomerge"], results["mergekit"]
    t_ratio = statistics.median(w for w, _ in mk) / statistics.median(w for w, _ in ev)
    r_ratio = max(r for _, r in ev) / max(r for _, r in mk)
    print(f"evomerge is {t_ratio:.2f}x faster (median wall); its peak RSS is {r_ratio:.2f} of mergekit's")
    ev_peak = max(r for _, r in ev)
    print(f"evomerge peak RSS {ev_peak / 1e6:.0f} MB = {ev_peak / model_bytes:.2f} x one model; above the "
          f"interpreter's {baseline / 1e6:.0f} MB: {(ev_peak - baseline) / 1e6:.0f} MB = "
          f"{(ev_peak - baseline) / largest:.1f} x the largest tensor "
          f"({(ev_peak - baseline) / model_bytes:.2f} x one model)")
    a, b = ModelFiles.open(outs["evomerge"]), ModelFiles.open(outs["mergekit"])
    assert set(a.names()) == set(b.names())
    same = sum(torch.equal(a.get(n), b.get(n)) for n in a.names())
    worst = max(float((a.get(n).float() - b.get(n).float()).abs().max()) for n in a.names())
    print(f"outputs: {same}/{len(a.names())} tensors identical, max abs diff {worst:g}")
    size = f"{shape.params() / 1e6:.0f}M parameters, {args.dtype}, median of {args.reps}"
    write_json(args.json, BenchResult("disk_merge", "disk merge vs mergekit-yaml", [
        Row("speed vs mergekit-yaml (wall)", t_ratio, "x", ">= 2x", t_ratio >= 2, size),
        Row("peak RSS / mergekit-yaml's", r_ratio, "", "<= 0.5", r_ratio <= 0.5),
        Row("peak RSS above the interpreter / one model", (ev_peak - baseline) / model_bytes, ""),
        Row("tensors identical to mergekit's", same / len(a.names()), "", "1", same == len(a.names()),
            f"max abs diff {worst:g}"),
    ], details={"params": shape.params(), "dtype": args.dtype, "model_bytes": model_bytes,
                "interpreter_rss": baseline, "runs": {k: [[w, r] for w, r in rs] for k, rs in results.items()}}))


if __name__ == "__main__":
    main()
