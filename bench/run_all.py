"""Run every benchmark, one subprocess each, and gather the results: `latest.json`, `latest.md` and PNG plots.

    .venv/bin/python bench/run_all.py [--quick] [--only a,b] [--out bench/results] [--tradeoff PATH]

Each script runs as `python bench/<name>.py --json OUT/json/<name>.json [--quick]`, its output in
`OUT/logs/<name>.log`. A script that is missing, fails or outlives `--timeout` is recorded as failed (the table says
why) and the others still run. Then:
- `OUT/latest.json`: when, on what machine (load average before and after), and every BenchResult;
- `OUT/latest.md`: the same as one markdown table (bench/report.py), with links to the plots;
- `OUT/*.png`: search-efficiency curves, resident throughput vs copy bandwidth, and the quickstart's grid vs
  searched front when `runs/quickstart/tradeoff.json` (or `--tradeoff`) exists (bench/plots_bench.py).
`gpu_acceptance` (the GPU acceptance run, issue 13) joins the default list when a CUDA device is present.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import plots_bench  # noqa: E402
from report import BenchResult, markdown_table, read_json  # noqa: E402

BENCHES = ("disk_merge", "resident_throughput", "scoring_overhead", "search_efficiency", "pipeline_quality",
           "overhead", "busy_fraction", "backend_agreement", "per_layer_value", "shared_context",
           "eval_vs_lm_eval", "fitness_cost")
GPU_BENCHES = ("gpu_acceptance",)
TITLES = {"disk_merge": "disk merge vs mergekit-yaml", "resident_throughput": "resident merge / copy bandwidth",
          "scoring_overhead": "scoring overhead vs bare forward", "search_efficiency": "search efficiency",
          "overhead": "per-candidate overhead vs disk round trip", "busy_fraction": "worker busy fraction",
          "backend_agreement": "vLLM vs HF backend agreement", "gpu_acceptance": "GPU acceptance (8B shapes)",
          "pipeline_quality": "pipelined asks vs barrier (CMA-ES)",
          "per_layer_value": "per-layer value (miniature, holdout)",
          "shared_context": "shared-context scoring (tokens, wall)", "eval_vs_lm_eval": "evomerge eval vs lm-eval (wall)",
          "fitness_cost": "cheaper fitness at the same ranking"}


def run_one(name: str, out: Path, quick: bool, timeout: float, bench_dir: Path = HERE) -> tuple[BenchResult, float]:
    """Run one bench script into OUT/json/<name>.json; a missing script, a failure or a timeout becomes a
    BenchResult with `error` set. Returns the result and the script's wall time."""
    script = bench_dir / f"{name}.py"
    title = TITLES.get(name, name)
    if not script.is_file():
        return BenchResult(name, title, [], error=f"no script {script.name}"), 0.0
    json_path, log_path = out / "json" / f"{name}.json", out / "logs" / f"{name}.log"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.unlink(missing_ok=True)  # a stale result must not pass for this run's
    cmd = [sys.executable, str(script), "--json", str(json_path)] + (["--quick"] if quick else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    wall = time.perf_counter() - start
    rel = os.path.relpath(log_path, out)
    if code is None:
        return BenchResult(name, title, [], error=f"timed out after {timeout:.0f} s (log: {rel})"), wall
    if code != 0:
        return BenchResult(name, title, [], error=f"exit {code}: {_last_line(log_path)} (log: {rel})"), wall
    if not json_path.is_file():
        return BenchResult(name, title, [], error=f"wrote no {json_path.name} (log: {rel})"), wall
    try:
        return read_json(json_path), wall
    except (ValueError, KeyError, TypeError) as e:
        return BenchResult(name, title, [], error=f"unreadable {json_path.name}: {e}"), wall


def _last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "memory_gib": None if mem is None else round(mem, 1),
            "platform": platform.platform(), "python": platform.python_version()}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def make_plots(results: list[BenchResult], out: Path, tradeoff: Path | None) -> list[str]:
    """The PNGs that apply (names relative to `out`); a plot that fails is reported, not fatal."""
    made = []
    for res in results:
        fn = plots_bench.BENCH_PLOTS.get(res.bench)
        if fn is None or res.error:
            continue
        try:
            made.append(fn(res, out / f"{res.bench}.png").name)
        except (KeyError, ValueError, TypeError) as e:
            print(f"plot of {res.bench} failed: {e}", file=sys.stderr)
    if tradeoff is not None and tradeoff.is_file():
        made.append(plots_bench.tradeoff(json.loads(tradeoff.read_text()), out / "quickstart_tradeoff.png").name)
    return made


def write_report(out: Path, results: list[BenchResult], walls: dict[str, float], info: dict, plots: list[str]) -> None:
    """latest.json (everything) and latest.md (the table, where and when, the plots)."""
    data = {**info, "plots": plots, "wall_s": walls, "results": [asdict(r) for r in results]}
    (out / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    m = info["machine"]
    lines = [f"# Benchmarks ({'quick' if info['quick'] else 'full'} run)", "",
             f"- date: {info['date']}",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['platform']}; "
             f"Python {m['python']}",
             f"- load average (1, 5, 15 min): before {info['load_before']}, after {info['load_after']}",
             f"- command: `{info['command']}`",
             "- wall time per script: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()), "",
             markdown_table(results), ""]
    lines += [f"![{p}]({p})" for p in plots]
    (out / "latest.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="each script's --quick (small sizes, a minute or two each)")
    ap.add_argument("--only", default=None, help=f"comma-separated names among {', '.join(BENCHES + GPU_BENCHES)}")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--tradeoff", type=Path, default=REPO / "runs" / "quickstart" / "tradeoff.json",
                    help="the quickstart's trade-off file to plot (skipped when absent)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per script (default 3600; --quick: 600)")
    args = ap.parse_args(argv)
    known = BENCHES + GPU_BENCHES
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            print(f"error: --only: unknown benchmark {unknown[0]!r}; known: {', '.join(known)}", file=sys.stderr)
            return 2
    else:
        names = list(BENCHES) + (list(GPU_BENCHES) if _has_cuda() else [])
    timeout = args.timeout or (600 if args.quick else 3600)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
            "load_before": _load(), "quick": args.quick,
            "command": " ".join(["python bench/run_all.py", *(argv if argv is not None else sys.argv[1:])])}
    results, walls = [], {}
    for name in names:
        print(f"[{name}] running ...", flush=True)
        res, walls[name] = run_one(name, out, args.quick, timeout)
        status = f"failed: {res.error}" if res.error else f"{len(res.rows)} figures"
        print(f"[{name}] {status} ({walls[name]:.0f} s)", flush=True)
        results.append(res)
    info["load_after"] = _load()
    plots = make_plots(results, out, args.tradeoff)
    write_report(out, results, walls, info, plots)
    print(markdown_table(results))
    print(f"wrote {out / 'latest.json'}, {out / 'latest.md'}" + (f" and {', '.join(plots)}" if plots else ""))
    return 1 if any(r.error for r in results) else 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
