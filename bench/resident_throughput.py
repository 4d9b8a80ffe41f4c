"""Resident-mode merge throughput as a fraction of this machine's copy bandwidth, measured side by side in one run.

For each dtype and method: a `ResidentMerge` over base + instruct + lang (bench/models.py, 246M-parameter Llama by
default) merges candidates into preallocated targets; the bytes a candidate moves are every prepared tensor the
kernels read (base, task vectors or inputs, rankings, draws) plus every target written. Beside it, a torch copy of
the same number of bytes (read + written; at most 2 GB) gives this machine's copy bandwidth. Timings alternate
(copy, merge, copy, merge, ...) and the best of `--reps` is kept for each, so both see the same machine load.

`naive` rows (linear and task arithmetic) time the plain chain of whole-tensor torch ops over the same prepared
tensors (out = w0*x0; out += w1*x1; ...; out += base: every intermediate streams through main memory), the way a
straightforward implementation merges.

    .venv/bin/python bench/resident_throughput.py [--scale 1.0] [--reps 5] [--dtypes float32,bfloat16] [--json PATH]
                                                  [--quick]

`--quick`: an eighth of the model (scale 0.125: 2 layers, vocabulary 4000), float32 only, best of 3.
Goals (issue 3, float32): >= 0.8 of the copy bandwidth for linear and task arithmetic, >= 0.3 for TIES and DARE.
"""

from __future__ import annotations

import tempfile
import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import Shape, build_sources  # noqa: E402
from report import BenchResult, Row, add_arguments, pick, write_json  # noqa: E402

from evomerge.merge import ResidentMerge  # noqa: E402
from evomerge.methods import chunked  # noqa: E402
from evomerge.recipe import Recipe  # noqa: E402


def recipes(method: str, paths: dict[str, Path], dtype: str, n_layers: int) -> list[Recipe]:
    """Two candidates of one method with per-layer weights (and densities for the sparsifying methods)."""
    out = []
    for k in range(2):
        w = [round(0.2 + 0.9 * ((i * 7 + k * 3) % n_layers) / n_layers, 4) for i in range(n_layers)]
        models = [{"model": str(paths["instruct"]), "parameters": {"weight": 1.0}},
                  {"model": str(paths["lang"]), "parameters": {"weight": w}}]
        cfg = {"merge_method": method, "dtype": dtype, "models": models}
        if method != "linear":
            cfg["base_model"] = str(paths["base"])
        if method in ("ties", "dare_ties", "dare_linear"):
            for m in models:
                m["parameters"]["density"] = 0.5 + 0.1 * k
        out.append(Recipe.from_mergekit(cfg))
    return out


def moved_bytes(rm: ResidentMerge) -> int:
    n = sum(t.numel() * t.element_size() for t in rm.targets.values())
    for base, prepared in rm._prepared.values():
        n += sum(t.numel() * t.element_size() for t in prepared)
        n += base.numel() * base.element_size() if base is not None else 0
    return n


@torch.no_grad()
def naive(rm: ResidentMerge, recipe: Recipe) -> None:
    """The plain whole-tensor chain (linear: sum w_i x_i / sum w_i; task arithmetic: base + sum w_i d_i)."""
    for name, (base, prepared) in rm._prepared.items():
        coeffs = recipe.coefficients(name, rm.n_layers)
        out, w = rm.targets[name], coeffs.weights
        torch.mul(prepared[0], w[0], out=out)
        for x, wi in zip(prepared[1:], w[1:]):
            out.add_(x * wi)
        if base is None:
            out.div_(sum(w))
        else:
            out.add_(base)


# goals of issue 3, held in float32 (bfloat16 on CPUs without bfloat16 arithmetic is compute-bound, see README)
GOALS = {"linear": 0.8, "task_arithmetic": 0.8, "ties": 0.3, "dare_ties": 0.3}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=None, help="model size (1.0, the default: 246M parameters)")
    ap.add_argument("--reps", type=int, default=None, help="best of N (default 5; --quick: 3)")
    ap.add_argument("--dtypes", default=None, help="default float32,bfloat16; --quick: float32")
    ap.add_argument("--methods", default="linear,task_arithmetic,ties,dare_ties")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "evomerge-bench")
    add_arguments(ap)
    args = ap.parse_args()
    args.scale = pick(args.scale, 1.0, 0.125, args.quick)
    args.reps = pick(args.reps, 5, 3, args.quick)
    args.dtypes = pick(args.dtypes, "float32,bfloat16", "float32", args.quick)
    shape = Shape() if args.scale == 1.0 else Shape.scaled(args.scale)
    print(f"model: {shape.params() / 1e6:.0f}M parameters; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, chunk {chunked.CHUNK} elements")
    print(f"{'dtype':9} {'method':16} {'variant':9} {'GB moved':>8} {'merge s':>8} {'copy GB/s':>9} {'ratio':>6}")
    print("(ratio: bytes the merge moves per second / bytes a torch copy moves per second, best of --reps each)")
    rows: list[Row] = []
    measured: list[dict] = []
    for dtype in args.dtypes.split(","):
        paths = build_sources(args.root, shape, dtype)
        for method in args.methods.split(","):
            cands = recipes(method, paths, dtype, shape.layers)
            targets = {n: torch.zeros(s, dtype=getattr(torch, dtype)) for n, s in shape.tensors()}
            rm = ResidentMerge(cands[0], targets)
            nbytes = moved_bytes(rm)
            # the copy moves the same bytes (reads half, writes half), capped at 2 GB: its rate is what counts
            half = min(nbytes, 2 * 10**9) // 2 // 4 * 4
            src = torch.randn(half // 4).view(torch.uint8)
            dst = torch.ones_like(src)
            variants = ["evomerge", "naive"] if method in ("linear", "task_arithmetic") else ["evomerge"]
            for variant in variants:
                if variant == "evomerge":
                    def merge(r: int) -> None:
                        rm.apply(cands[r % 2])
                else:
                    def merge(r: int) -> None:
                        naive(rm, cands[r % 2])
                merge(0)
                best_merge = best_copy = float("inf")
                for r in range(args.reps):
                    best_copy = min(best_copy, timed(lambda: dst.copy_(src)))
                    best_merge = min(best_merge, timed(lambda: merge(r)))
                copy_bw = 2 * src.numel() / best_copy
                ratio = nbytes / best_merge / copy_bw
                print(f"{dtype:9} {method:16} {variant:9} {nbytes / 1e9:8.2f} {best_merge:8.3f} "
                      f"{copy_bw / 1e9:9.1f} {ratio:6.2f}", flush=True)
                measured.append({"dtype": dtype, "method": method, "variant": variant, "gb_moved": nbytes / 1e9,
                                 "merge_s": best_merge, "merge_gbps": nbytes / best_merge / 1e9,
                                 "copy_gbps": copy_bw / 1e9, "ratio": ratio})
                goal = GOALS.get(method) if dtype == "float32" and variant == "evomerge" else None
                rows.append(Row(f"{method} {dtype}" + (" naive chain" if variant == "naive" else ""), ratio,
                                "", None if goal is None else f">= {goal}", None if goal is None else ratio >= goal,
                                f"{best_merge:.3f} s/candidate, copy {copy_bw / 1e9:.0f} GB/s"))
            del rm, targets, src, dst
            gc.collect()
    write_json(args.json, BenchResult(
        "resident_throughput", "resident merge / copy bandwidth", rows,
        details={"params": shape.params(), "reps": args.reps, "chunk": chunked.CHUNK,
                 "threads": torch.get_num_threads(), "rows": measured}))


if __name__ == "__main__":
    main()
