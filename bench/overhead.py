"""Per-candidate overhead (everything but scoring): a resident merge swapped into a running vLLM engine vs a disk
round trip (write the merged model, start a fresh engine on it), on the same model in one run.

    .venv/bin/python bench/overhead.py [--scale 1.0] [--items 200] [--json out.json] [--quick]

Model: the 246M-parameter Llama of `bench/models.py` (random weights, base + instruct + one language model) in
float32; `--scale` shrinks it. Recipe: per-layer task arithmetic (instruct weight 1, a per-layer gradient for the
language model); two candidates alternate so every swap really changes the weights. Eval set: `--items`
multiple-choice items of a `--context-words`-word context and four 1-6-word choices (`bench/workload.py`).

Phases, in this order, in this process:
1. resident (the vLLM backend's path, `VLLMBackend.start` + `apply`): the engine starts once with the sources
   resident next to it; per candidate `apply` = merge with the resident kernels + `reload_weights` inside vLLM's
   worker + `reset_prefix_cache`. The swaps are timed (median of --swaps); inside vLLM's worker the merge alone
   is timed next to the whole apply, which splits merge from reload (reload = apply - merge). Then the eval set
   is scored twice on the swapped-in model: the second pass is the steady per-candidate scoring time.
2. disk round trip (what mergekit-evolve does per candidate): `evomerge.merge.merge_to_disk` writes the merged
   model and a fresh engine starts on it (`VLLMBackend.load`), up to its first score: the overhead is write +
   engine start + warm-up (the fresh engine's first score of a few items minus a warm engine's best time on the
   same items). The fresh engine is timed twice:
   - in this process, the second engine it starts (vLLM imported, kernels loaded, the in-process engine core the
     backend uses): a lower bound, which favours the disk round trip;
   - in a new process (imports, engine, first score), as vLLM is started per candidate by default.
   mergekit-yaml (`--copy-tokenizer`, its own process) writes the same model for a third row (with the new-process
   engine start).

Goals (issue 6): the disk round trip's overhead >= 50x the resident one's; merge + swap < 5% of a candidate's time
(merge + swap + scoring the set).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import Shape, build_sources  # noqa: E402
from report import BenchResult, Row, add_arguments, pick, write_json  # noqa: E402
from workload import task_arithmetic, write_mc_set  # noqa: E402

GOAL_RATIO, GOAL_SHARE = 50.0, 0.05
PROBE_ITEMS = 4  # the first score of a fresh engine: its extra time over a warm engine's is warm-up
KV_CACHE_BYTES = 1 << 30


def gradient(layers: int, low: float, high: float) -> list[float]:
    """A per-layer weight list from `low` to `high`."""
    return [round(low + (high - low) * i / max(1, layers - 1), 4) for i in range(layers)]


def _timed_apply(worker, recipe: dict) -> tuple[float, float]:
    """Runs inside vLLM's worker (`collective_rpc`): the merge alone (the merged tensors made and dropped, nothing
    reloaded), then the whole `MergeExtension.evomerge_apply` (merge + reload_weights); both in seconds."""
    import time

    import torch

    from evomerge.recipe import Recipe

    candidate = Recipe.from_mergekit(recipe)
    t0 = time.perf_counter()
    with torch.inference_mode():  # as reload_weights consumes them
        if getattr(worker, "evomerge_merged", None) is None:  # merged tensors streamed into reload_weights
            for _ in worker.evomerge_resident.merged(candidate):
                pass
        else:  # merged into resident tensors, then reloaded from them
            worker.evomerge_resident.apply(candidate)
    t1 = time.perf_counter()
    worker.evomerge_apply(recipe)
    return t1 - t0, time.perf_counter() - t1


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rss_gb() -> float:
    """Peak RSS of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def cold_start(model_dir: str, evalset_dir: str) -> None:
    """Child process: start an engine on a model directory and score the probe once; print [start, first score]
    in seconds (the start counts from before vLLM is imported)."""
    t0 = time.perf_counter()
    from evomerge import evaluation
    from evomerge.backends.vllm import VLLMBackend
    from evomerge.evalsets import load_evalset

    engine = VLLMBackend.load(model_dir, "float32", kv_cache_bytes=KV_CACHE_BYTES)
    start = time.perf_counter() - t0
    probe = [evaluation.prepare(engine, load_evalset(evalset_dir), "dev", PROBE_ITEMS, 0)]
    print(json.dumps([start, timed(lambda: evaluation.score(engine, probe))]))


def main() -> None:
    if sys.argv[1:2] == ["--cold-start"]:
        return cold_start(*sys.argv[2:4])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=None,
                    help="model scale (1.0: the 246M-parameter Llama; quick 0.25)")
    ap.add_argument("--items", type=int, default=None, help="multiple-choice items per candidate (200; quick 40)")
    ap.add_argument("--context-words", type=int, default=48)
    ap.add_argument("--swaps", type=int, default=None, help="timed swaps, two candidates alternating (6; quick 4)")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "evomerge-bench")
    ap.add_argument("--no-mergekit", action="store_true", help="skip the mergekit-yaml row")
    ap.add_argument("--sources-on", choices=["device", "host"], default="device",
                    help="the memory plan's placement (device, as planned on CPU: merged tensors streamed into "
                         "reload_weights; host: merged into resident tensors, then reloaded from them)")
    add_arguments(ap)
    args = ap.parse_args()
    args.scale = pick(args.scale, 1.0, 0.25, args.quick)
    args.items = pick(args.items, 200, 40, args.quick)
    args.swaps = pick(args.swaps, 6, 4, args.quick)

    from evomerge import evaluation
    from evomerge.backends.vllm import VLLMBackend
    from evomerge.evalsets import load_evalset
    from evomerge.merge import merge_to_disk
    from evomerge.recipe import Recipe

    shape = Shape() if args.scale == 1.0 else Shape.scaled(args.scale)
    paths = build_sources(args.root, shape, "float32")
    recipes = [Recipe.from_mergekit(task_arithmetic(paths, gradient(shape.layers, lo, hi)))
               for lo, hi in ((0.2, 1.2), (1.0, 0.4))]
    out: dict = {"params": shape.params(), "layers": shape.layers, "vocab": shape.vocab, "items": args.items,
                 "context_words": args.context_words, "sources_on": args.sources_on}
    print(f"model: {shape.params() / 1e6:.0f}M parameters ({shape.layers} layers, vocabulary {shape.vocab}), "
          f"float32; {args.items} multiple-choice items", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        evalset = load_evalset(write_mc_set(tmp, shape.vocab, args.items, args.context_words))

        # 1. resident: one engine, candidates swapped in
        t0 = time.perf_counter()
        engine = VLLMBackend.start(recipes[0], kv_cache_bytes=KV_CACHE_BYTES, sources_on=args.sources_on)
        out["resident_start_s"] = time.perf_counter() - t0
        prepared = [evaluation.prepare(engine, evalset, "dev", None, 0)]
        out["requests"] = len(prepared[0].requests)
        out["tokens"] = sum(len(r.context) + len(r.continuation) for r in prepared[0].requests)
        engine.apply(recipes[1])  # the first swap after start pays one-off costs (allocations, first reload)
        swaps = [timed(lambda r=recipes[k % 2]: engine.apply(r)) for k in range(args.swaps)]
        split = [engine.llm.collective_rpc(_timed_apply, args=(recipes[k % 2].to_mergekit(),))[0] for k in range(4)]
        engine.apply(recipes[0])
        first = timed(lambda: evaluation.score(engine, prepared))
        steady = timed(lambda: evaluation.score(engine, prepared))
        probe = [evaluation.prepare(engine, evalset, "dev", PROBE_ITEMS, 0)]
        probe_warm = min(timed(lambda: evaluation.score(engine, probe)) for _ in range(3))
        out.update(swap_s=swaps, merge_s=[m for m, _ in split], reload_s=[a - m for m, a in split],
                   resident_first_score_s=first, score_s=steady, probe_warm_s=probe_warm,
                   peak_rss_gb_resident=rss_gb())
        swap = statistics.median(swaps)
        print(f"resident: engine + sources start {out['resident_start_s']:.1f} s; merge + swap {swap:.3f} s "
              f"(median of {len(swaps)}; merge {statistics.median(out['merge_s']):.3f} s + reload_weights "
              f"{statistics.median(out['reload_s']):.3f} s); scoring {out['requests']} requests "
              f"({out['tokens']} tokens) {steady:.1f} s (first pass {first:.1f} s)", flush=True)
        del engine, prepared, probe
        gc.collect()

        # 2. disk round trip: write the merged model, start a fresh engine on it, up to its first score
        t_write = timed(lambda: merge_to_disk(recipes[0], tmp / "merged"))
        t0 = time.perf_counter()
        fresh = VLLMBackend.load(tmp / "merged", "float32", kv_cache_bytes=KV_CACHE_BYTES)
        t_start = time.perf_counter() - t0
        probe = [evaluation.prepare(fresh, evalset, "dev", PROBE_ITEMS, 0)]
        probe_first = timed(lambda: evaluation.score(fresh, probe))
        warmup = max(0.0, probe_first - probe_warm)  # the fresh engine's first pass over a warm engine's
        del fresh, probe
        gc.collect()
        # the same start in a new process, as vLLM is started per candidate by default: imports, engine, first score
        r = subprocess.run([sys.executable, __file__, "--cold-start", str(tmp / "merged"), str(evalset.path)],
                           check=True, capture_output=True, text=True)
        t_cold, probe_cold = json.loads(r.stdout.strip().splitlines()[-1])
        warmup_cold = max(0.0, probe_cold - probe_warm)
        out.update(write_s=t_write, fresh_start_s=t_start, probe_first_s=probe_first, warmup_s=warmup,
                   cold_start_process_s=t_cold, probe_cold_s=probe_cold, warmup_cold_s=warmup_cold)
        print(f"disk round trip: merge_to_disk {t_write:.1f} s + fresh engine, up to its first score of {PROBE_ITEMS} "
              f"items: in this process start {t_start:.1f} s + warm-up {warmup:.2f} s, in a new process imports + "
              f"start {t_cold:.1f} s + warm-up {warmup_cold:.2f} s (first score {probe_first:.2f} s / "
              f"{probe_cold:.2f} s vs {probe_warm:.2f} s on a warm engine)", flush=True)

        if not args.no_mergekit:
            import yaml

            cfg = tmp / "recipe.yaml"
            cfg.write_text(yaml.safe_dump(recipes[0].to_mergekit()))
            mergekit = Path(sys.executable).parent / "mergekit-yaml"
            out["mergekit_yaml_s"] = timed(lambda: subprocess.run(
                [str(mergekit), str(cfg), str(tmp / "mergekit"), "--copy-tokenizer"], check=True, capture_output=True))
            print(f"mergekit-yaml (its own process) {out['mergekit_yaml_s']:.1f} s", flush=True)

    candidate = swap + steady
    share = swap / candidate
    # the disk round trip's overhead per candidate: write + engine start + the fresh engine's warm-up
    trips = {"merge_to_disk, engine started in this process": t_write + t_start + warmup,
             "merge_to_disk, engine in a new process": t_write + t_cold + warmup_cold}
    if "mergekit_yaml_s" in out:
        trips["mergekit-yaml, engine in a new process"] = out["mergekit_yaml_s"] + t_cold + warmup_cold
    rows = []
    for what, disk in trips.items():
        ratio = disk / swap
        rows.append(Row(f"disk round trip / resident merge + swap ({what})", ratio, "x", f">= {GOAL_RATIO:g}x",
                        ratio >= GOAL_RATIO, f"{disk:.1f} s vs {swap:.2f} s"))
        print(f"overhead, {what}: {disk:.1f} s vs merge + swap {swap:.3f} s: {ratio:.0f}x (goal >= {GOAL_RATIO:g}x)")
    rows += [Row(f"merge + swap share of a candidate ({args.items} MC items)", share, "fraction",
                 f"< {GOAL_SHARE:g}", share < GOAL_SHARE, f"{swap:.2f} s of {candidate:.1f} s"),
             Row("resident merge + swap", swap, "s", None, None,
                 f"merge {statistics.median(out['merge_s']):.2f} s + reload_weights "
                 f"{statistics.median(out['reload_s']):.2f} s"),
             Row("fresh vLLM engine start, in this process", t_start, "s", None, None, "the process's second engine"),
             Row("fresh vLLM engine start, new process", t_cold, "s", None, None, "imports + engine")]
    print(f"merge + swap = {share:.1%} of a candidate's {candidate:.1f} s (goal < {GOAL_SHARE:.0%})")
    write_json(args.json, BenchResult("overhead", "per-candidate overhead (vLLM)", rows,
                                      details={**out, "disk_s": trips, "swap_median_s": swap}))

if __name__ == "__main__":
    main()
