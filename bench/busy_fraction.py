"""Worker busy fraction over a 2-worker Ray search, with the no-barrier pipeline on and off, in one run.

    .venv/bin/python bench/busy_fraction.py [--generations 6] [--popsize 6] [--items 100] [--json out.json] [--quick]

Each setting is a real `run_search` (CMA-ES, 2 Ray workers, Hugging Face backend on CPU, one thread each) over a
space written to a temp dir: per-layer task arithmetic on a small random Llama trio (`bench/workload.py`) scored on
a multiple-choice set of `--items` items; no finalists, so the run is the search alone. The two settings run the
same space, seed and budget; "off" is `search: {pipeline: false}`: every generation waits for its last candidate
before the next one is asked (mergekit-evolve's pool strategy).

Busy fraction = sum over workers of the time spent inside candidates (the trials' `worker_started` to
`worker_finished`, the workers' own clocks) / (workers x the span from the first candidate's start to the last
one's finish). Goal (issue 6): >= 95% with the pipeline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import BenchResult, Row, add_arguments, pick, write_json  # noqa: E402
from workload import SMALL_VOCAB, small_sources, write_mc_set  # noqa: E402

GOAL = 0.95
WORKERS = 2


def write_space(path: Path, paths: dict[str, Path], evalset: Path, popsize: int, generations: int,
                pipeline: bool) -> Path:
    """A quickstart-like space: one language-weight gene per layer plus the embeddings and the output head."""
    import yaml

    space = {
        "models": [{"name": "base", "role": "base", "path": str(paths["base"])},
                   {"name": "instruct", "role": "instruct", "path": str(paths["instruct"])},
                   {"name": "lang", "role": "language", "language": "xx", "path": str(paths["lang"])}],
        "merge": {"method": "task_arithmetic", "dtype": "float32",
                  "fixed": {"instruct": {"weight": 1.0}, "lang": {"weight": 1.0}}},
        "genes": [{"name": "w", "parameter": "weight", "model": "lang", "granularity": "per_layer", "low": 0.0,
                   "high": 2.0, "init": 1.0, "step": 0.4},
                  {"name": "w_embed", "parameter": "weight", "model": "lang", "tensors": "embed", "low": 0.0,
                   "high": 2.0, "init": 1.0, "step": 0.4},
                  {"name": "w_head", "parameter": "weight", "model": "lang", "tensors": "lm_head", "low": 0.0,
                   "high": 2.0, "init": 1.0, "step": 0.4}],
        "eval": {"sets": [{"path": str(evalset), "weight": 1.0}], "split": "dev"},
        "search": {"optimizer": "cmaes", "popsize": popsize, "generations": generations, "finalists": 0,
                   "pipeline": pipeline},
    }
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def busy_fraction(trials) -> dict:
    """Busy fraction and its parts from a run's evaluated trials (their worker-side timestamps)."""
    spans = [(t.user_attrs["worker"], t.user_attrs["worker_started"], t.user_attrs["worker_finished"])
             for t in trials if "worker_started" in t.user_attrs]
    if not spans:
        raise RuntimeError("no trial has worker_started / worker_finished: the ledger does not record them")
    workers = sorted({w for w, _, _ in spans})
    first, last = min(s for _, s, _ in spans), max(f for _, _, f in spans)
    busy = {w: sum(f - s for v, s, f in spans if v == w) for w in workers}
    # where the idle time goes: before a worker's first candidate (start-up skew), after its last one (the run's
    # tail), and between its candidates (waiting for the driver: dispatch, or a generation barrier)
    head = sum(min(s for v, s, _ in spans if v == w) - first for w in workers)
    tail = sum(last - max(f for v, _, f in spans if v == w) for w in workers)
    idle = WORKERS * (last - first) - sum(busy.values())
    # the driver's side of a hand-over (its clock): trial opened -> worker starts, worker ends -> trial recorded
    opened = [t.user_attrs["worker_started"] - t.datetime_start.timestamp() for t in trials
              if "worker_started" in t.user_attrs and t.datetime_start]
    recorded = [t.datetime_complete.timestamp() - t.user_attrs["worker_finished"] for t in trials
                if "worker_finished" in t.user_attrs and t.datetime_complete]
    return {"busy_fraction": sum(busy.values()) / (WORKERS * (last - first)), "span_s": last - first,
            "driver_s": {"opened_to_started_median": statistics.median(opened),
                         "finished_to_recorded_median": statistics.median(recorded)},
            "busy_s": busy, "candidates": len(spans), "workers_seen": len(workers),
            "mean_candidate_s": sum(f - s for _, s, f in spans) / len(spans),
            "idle_s": {"head": head, "tail": tail, "between": idle - head - tail}}


def run_setting(tmp: Path, paths: dict[str, Path], evalset: Path, args, pipeline: bool) -> dict:
    """One search with the pipeline on or off; its busy fraction and wall time."""
    import optuna

    from evomerge.search import SearchOptions, run_search

    name = "pipeline" if pipeline else "barrier"
    space = write_space(tmp / f"{name}.yaml", paths, evalset, args.popsize, args.generations, pipeline)
    opts = SearchOptions(name=name, runs_dir=tmp / "runs", seed=0, workers=WORKERS, progress=False, backend="hf")
    t0 = time.perf_counter()
    summary = run_search(space, opts)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp / 'runs' / name / 'study.db'}")
    trials = [t for t in study.trials if t.state.is_finished() and "duplicate_of" not in t.user_attrs]
    out = busy_fraction(trials)
    out.update(wall_s=wall, complete=summary.n_complete, failed=summary.n_failed)
    print(f"pipeline {'on ' if pipeline else 'off'}: busy fraction {out['busy_fraction']:.1%} over "
          f"{out['span_s']:.1f} s ({out['candidates']} candidates, {out['mean_candidate_s']:.2f} s each on average; "
          f"busy " + ", ".join(f"{w} {b:.1f} s" for w, b in out["busy_s"].items()) + "; idle "
          + ", ".join(f"{k} {v:.1f} s" for k, v in out["idle_s"].items()) + "; median per candidate: trial opened -> "
          f"worker start {out['driver_s']['opened_to_started_median']:.2f} s, worker end -> trial recorded "
          f"{out['driver_s']['finished_to_recorded_median']:.2f} s); run {wall:.1f} s",
          flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generations", type=int, default=None, help="generations (6; quick 2)")
    ap.add_argument("--popsize", type=int, default=None, help="candidates per generation (6; quick 4)")
    ap.add_argument("--items", type=int, default=None, help="multiple-choice items per candidate (100; quick 30)")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "evomerge-bench")
    add_arguments(ap)
    args = ap.parse_args()
    args.generations = pick(args.generations, 6, 2, args.quick)
    args.popsize = pick(args.popsize, 6, 4, args.quick)
    args.items = pick(args.items, 100, 30, args.quick)

    paths = small_sources(args.root)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        evalset = write_mc_set(tmp, SMALL_VOCAB, args.items)
        on = run_setting(tmp, paths, evalset, args, pipeline=True)
        off = run_setting(tmp, paths, evalset, args, pipeline=False)

    setting = f"{args.generations} generations of {args.popsize}, {WORKERS} workers, {args.items} items"
    rows = [Row("worker busy fraction, pipeline on", on["busy_fraction"], "fraction", f">= {GOAL:g}",
                on["busy_fraction"] >= GOAL, setting),
            Row("worker busy fraction, pipeline off (generation barrier)", off["busy_fraction"], "fraction", None,
                None, setting),
            Row("search wall time, pipeline off / on", off["wall_s"] / on["wall_s"], "x", None, None,
                "Ray start and worker loading included")]
    print(f"busy fraction: pipeline on {on['busy_fraction']:.1%} (goal >= {GOAL:.0%}) vs off "
          f"{off['busy_fraction']:.1%}")
    write_json(args.json, BenchResult("busy_fraction", "worker busy fraction (2 Ray workers)", rows,
                                      details={"setting": setting, "pipeline_on": on, "pipeline_off": off}))


if __name__ == "__main__":
    main()
