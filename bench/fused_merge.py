"""The merge-kernel try of issue 16: `torch.compile` of float32 task arithmetic's combine step (out = c0 x0 + c1 x1 +
base, two task vectors) against today's chunked kernel (evomerge/methods/chunked.py, which the disk merge and the
resident merge share), side by side in one run: GB/s of the necessary traffic (3 reads + 1 write), the ratio, and
whether the outputs are bit-identical (the condition to keep it).

    .venv/bin/python bench/fused_merge.py [--mb 128] [--reps 5] [--json PATH] [--quick]

Two compiled forms: returning a new tensor that is then copied into the target, and writing the target in place
(`out.copy_(...)` inside the compiled graph). Needs a C++ compiler (torch inductor's CPU backend).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from report import BenchResult, Row, add_arguments, markdown_table, pick, write_json  # noqa: E402

from evomerge.methods import chunked  # noqa: E402

C0, C1 = 0.7, 1.3


def best(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=None, help="MB per float32 operand (default 128; --quick 32)")
    ap.add_argument("--reps", type=int, default=5)
    add_arguments(ap)
    args = ap.parse_args(argv)
    n = pick(args.mb, 128, 32, args.quick) * (1 << 20) // 4
    torch.manual_seed(0)
    base, x0, x1 = (torch.randn(n) for _ in range(3))
    out_c, out_new, out_in = torch.empty(n), torch.empty(n), torch.empty(n)

    def chunk() -> None:
        chunked.weighted_sum(base, [x0, x1], [C0, C1], False, 1.0, out_c)

    new = torch.compile(lambda a, b, z: (a * C0 + b * C1) + z, dynamic=False)
    into = torch.compile(lambda o, a, b, z: o.copy_((a * C0 + b * C1) + z), dynamic=False)
    t0 = time.perf_counter()
    out_new.copy_(new(x0, x1, base))
    into(out_in, x0, x1, base)
    compile_s = time.perf_counter() - t0
    moved = 4 * n * 4
    t_chunk = best(chunk, args.reps)
    t_new = best(lambda: out_new.copy_(new(x0, x1, base)), args.reps)
    t_into = best(lambda: into(out_in, x0, x1, base), args.reps)
    t_copy = best(lambda: out_in.copy_(base), args.reps)
    into(out_in, x0, x1, base)
    rows = [Row("copy bandwidth (read + write)", 2 * 4 * n / t_copy / 1e9, "GB/s"),
            Row("chunked kernel (today's)", moved / t_chunk / 1e9, "GB/s"),
            Row("torch.compile, new tensor copied in: speed vs chunked", t_chunk / t_new, "x",
                note=f"bit-identical: {torch.equal(out_new, out_c)}; max |diff| "
                     f"{(out_new - out_c).abs().max().item():.2g}"),
            Row("torch.compile, written in place: speed vs chunked", t_chunk / t_into, "x",
                note=f"bit-identical: {torch.equal(out_in, out_c)}; max |diff| "
                     f"{(out_in - out_c).abs().max().item():.2g}"),
            Row("kept: faster and bit-identical", float(t_into < t_chunk and torch.equal(out_in, out_c)), "",
                "= 1 to keep it", note=f"compile {compile_s:.1f} s; {torch.get_num_threads()} threads")]
    result = BenchResult("fused_merge", f"Fused merge kernel try (float32, {n * 4 >> 20} MB per operand)", rows)
    print(markdown_table([result]))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
