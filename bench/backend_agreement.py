"""Backend agreement: the vLLM backend vs the Hugging Face backend on the same candidates, in one run.

    .venv/bin/python bench/backend_agreement.py [--items 100] [--json out.json] [--quick]

Both backends run the worker's own path (`Evaluator.start` with backend "hf" or "vllm": resident sources, each
candidate merged in memory; vLLM swaps it into its running engine through `reload_weights`). The candidates are
task-arithmetic recipes over a small random Llama trio (`bench/workload.py`, float32): scalar and per-layer
language weights. For every candidate and every request (one per item and choice) the log-likelihoods of the two
backends are compared: the figure is the largest |difference| over all of them. Accuracy (acc, acc_norm) per
candidate must be identical, and so must each item's chosen answer. Goal (issue 6): within 1e-3, identical
accuracies.

The Hugging Face backend runs first: vLLM's CPU worker changes process-wide torch settings (threads) when it starts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import BenchResult, Row, add_arguments, pick, write_json  # noqa: E402
from workload import SMALL_LAYERS, SMALL_VOCAB, small_sources, task_arithmetic, write_mc_set  # noqa: E402

GOAL_LOGPROB = 1e-3


def candidates(layers: int, n: int) -> list[float | list[float]]:
    """`n` language-weight settings: uniform ones (the paper's grid) and per-layer gradients."""
    grad = [[round(2.0 * ((i * k) % (layers + 1)) / layers, 3) for i in range(layers)] for k in (1, 2, 3)]
    pool: list = [0.5, 1.0, grad[0], 0.0, grad[1], 2.0, grad[2], 1.5]
    return pool[:n]


def run_backend(name: str, recipes: list[dict], evalset: Path, items: int) -> dict:
    """Every candidate through one worker of backend `name`: per candidate, the requests' log-likelihoods, the
    chosen answers and the set's scores; plus the start and per-candidate times (for information only)."""
    from evomerge import evaluation
    from evomerge.recipe import Recipe
    from evomerge.scorers import _argmax  # the answer an item's acc counts (first maximum)
    from evomerge.worker import Evaluator, EvaluatorSpec

    t0 = time.perf_counter()
    ev = Evaluator.start(EvaluatorSpec(recipes[0], (str(evalset),), "dev", items, 0, backend=name))
    out: dict = {"start_seconds": time.perf_counter() - t0, "candidates": []}
    (prepared,) = ev.prepared
    for recipe in recipes:
        t = time.perf_counter()
        ev.apply(Recipe.from_mergekit(recipe))
        lls = ev.backend.loglikelihoods(prepared.requests)
        scores = evaluation.score_set(ev.backend, prepared)
        picks = [_argmax(lls[a:b]) for a, b in zip(prepared.offsets[:-1], prepared.offsets[1:])]
        out["candidates"].append({"lls": lls, "picks": picks, "scores": scores.values,
                                  "seconds": time.perf_counter() - t})
    out["requests"] = [list(r.context + r.continuation) for r in prepared.requests]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=None, help="multiple-choice items, 4 choices each (100; quick 24)")
    ap.add_argument("--candidates", type=int, default=None, help="candidates (6; quick 4)")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "evomerge-bench")
    add_arguments(ap)
    args = ap.parse_args()
    args.items = pick(args.items, 100, 24, args.quick)
    args.candidates = pick(args.candidates, 6, 4, args.quick)

    paths = small_sources(args.root)
    with tempfile.TemporaryDirectory() as tmp:
        evalset = write_mc_set(Path(tmp), SMALL_VOCAB, args.items, context_words=32)
        weights = candidates(SMALL_LAYERS, args.candidates)
        recipes = [task_arithmetic(paths, w) for w in weights]
        hf = run_backend("hf", recipes, evalset, args.items)
        vl = run_backend("vllm", recipes, evalset, args.items)

    assert hf["requests"] == vl["requests"], "the backends tokenized the items differently"
    per_cand = []
    for w, h, v in zip(weights, hf["candidates"], vl["candidates"]):
        diff = max(abs(a - b) for a, b in zip(h["lls"], v["lls"]))
        per_cand.append({"lang_weight": w, "max_abs_logprob_diff": diff,
                         "acc_hf": h["scores"]["acc"], "acc_vllm": v["scores"]["acc"],
                         "acc_norm_hf": h["scores"]["acc_norm"], "acc_norm_vllm": v["scores"]["acc_norm"],
                         "gold_prob_diff": abs(h["scores"]["gold_prob"] - v["scores"]["gold_prob"]),
                         "same_picks": sum(a == b for a, b in zip(h["picks"], v["picks"])),
                         "seconds_hf": h["seconds"], "seconds_vllm": v["seconds"]})
    max_diff = max(c["max_abs_logprob_diff"] for c in per_cand)
    same_acc = sum(c["acc_hf"] == c["acc_vllm"] and c["acc_norm_hf"] == c["acc_norm_vllm"] for c in per_cand)
    same_picks = sum(c["same_picks"] for c in per_cand)
    n_requests = len(hf["requests"])
    # how far apart the candidates themselves are (HF): the agreement is measured on models that really differ
    spread = min(max(abs(a - b) for a, b in zip(x["lls"], y["lls"]))
                 for x, y in zip(hf["candidates"], hf["candidates"][1:]))

    for c in per_cand:
        print(f"lang weight {str(c['lang_weight']):24s} max |dlogp| {c['max_abs_logprob_diff']:.2e} | acc hf "
              f"{c['acc_hf']:.3f} vllm {c['acc_vllm']:.3f} | acc_norm hf {c['acc_norm_hf']:.3f} vllm "
              f"{c['acc_norm_vllm']:.3f} | same answer on {c['same_picks']}/{args.items} items | "
              f"{c['seconds_hf']:.2f} s hf, {c['seconds_vllm']:.2f} s vllm")
    print(f"{len(per_cand)} candidates x {n_requests} requests: max |log-prob difference| {max_diff:.2e} "
          f"(goal <= {GOAL_LOGPROB:g}); identical accuracies on {same_acc}/{len(per_cand)} candidates; same answer "
          f"on {same_picks}/{len(per_cand) * args.items} items; consecutive candidates differ by at least "
          f"{spread:.2e} nats on some request")

    rows = [Row("max |log-prob difference|, vLLM vs HF", max_diff, "nats", f"<= {GOAL_LOGPROB:g}",
                max_diff <= GOAL_LOGPROB, f"{len(per_cand)} candidates x {n_requests} requests, float32"),
            Row("candidates with identical acc and acc_norm", same_acc / len(per_cand), "fraction", "= 1",
                same_acc == len(per_cand), f"{same_acc}/{len(per_cand)}"),
            Row("items with the same chosen answer", same_picks / (len(per_cand) * args.items), "fraction", None,
                None, f"{same_picks}/{len(per_cand) * args.items}")]
    write_json(args.json, BenchResult(
        "backend_agreement", "vLLM vs HF backend", rows,
        details={"items": args.items, "requests": n_requests, "model": "Llama hidden 256, 4 layers, vocab 2048",
                 "start_seconds": {"hf": hf["start_seconds"], "vllm": vl["start_seconds"]},
                 "min_max_abs_logprob_diff_between_consecutive_candidates": spread,
                 "candidates": per_cand}))


if __name__ == "__main__":
    main()
