"""Shared-context scoring (issue 16): tokens computed and wall time per candidate with a multiple-choice item's
context computed once (`share_context`, the default) vs every choice from scratch, measured side by side in one
run, on Belebele-shaped items (a ~400-token passage and a question, 4 short answers; cloze form, and letter form,
which shared one row before) and XStoryCloze-shaped ones (a ~4-sentence story, 2 endings).

    .venv/bin/python bench/shared_context.py [--items 32] [--[no-]vllm] [--json PATH] [--quick]

HF backend: `evaluation.score` on a prepared set (a search worker's per-candidate call), the two modes taking
turns, best of --repeat; tokens are the input tokens the model computed (`HFBackend.usage`, padding and cached
tokens not counted). `--vllm` adds the vLLM backend in a child process (vLLM's CPU worker changes process-wide
torch settings): prompt log-probs whole vs reading vLLM's automatic prefix cache (`skip_reading_prefix_cache=False`),
tokens computed being the prompt tokens minus the cache hits vLLM reports.

The model is bench/scoring_overhead.py's (a random Llama, hidden 256, 4 layers, byte-level tokenizer: every UTF-8
byte a token, so a 400-character passage is ~400 tokens); the texts are the shipped instruction sets' reference
answers (eu, ca, gl, es, en).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from report import BenchResult, Row, add_arguments, pick, write_json  # noqa: E402
from scoring_overhead import build_model, interleaved_best  # noqa: E402

SHAPES = ("belebele_cloze", "belebele_letter", "xstorycloze")


def build_sets(root: Path, n_items: int) -> dict[str, Path]:
    """The three item shapes as eval sets (card + items.jsonl), `n_items` each."""
    from evomerge.evalsets import load_evalset, write_evalset

    texts = [it.reference for lang in ("eu", "ca", "gl", "es", "en")
             for it in load_evalset(REPO / "eval_sets" / f"instructions_{lang}").items]
    rng = random.Random(0)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(texts).split()[:rng.randint(lo, hi)])

    belebele, stories = [], []
    for i in range(n_items):
        passage = " ".join(rng.sample(texts, 3))[:400]
        belebele.append({"id": i, "split": "dev", "passage": passage, "question": words(6, 12) + "?",
                         "choices": [words(2, 6) for _ in range(4)], "gold": i % 4})
        stories.append({"id": i, "split": "dev", "story": " ".join(rng.sample(texts, 2))[:220],
                        "choices": [words(6, 12) + "." for _ in range(2)], "gold": i % 2})
    base = {"language": "xx", "kind": "multiple_choice", "metric": "acc", "chat_template": False,
            "target_delimiter": " "}
    prompt = "P: {passage}\nQ: {question}"
    return {
        "belebele_cloze": write_evalset(root / "bc", {**base, "name": "belebele_cloze", "prompt": prompt + "\nA:"},
                                        belebele),
        "belebele_letter": write_evalset(root / "bl", {**base, "name": "belebele_letter", "form": "letter",
                                                       "prompt": prompt + "\n{options}\nAnswer:"}, belebele),
        "xstorycloze": write_evalset(root / "xs", {**base, "name": "xstorycloze", "prompt": "{story}"}, stories),
    }


def hf_side(model_dir: Path, sets: dict[str, Path], repeat: int, batch_size: int) -> dict:
    """Per shape: tokens and best wall time whole vs shared, and the largest log-likelihood difference."""
    from evomerge import evaluation
    from evomerge.backends.hf import HFBackend
    from evomerge.evalsets import load_evalset

    backend = HFBackend.load(model_dir, batch_size=batch_size)
    out = {}
    for name, path in sets.items():
        prepared = evaluation.prepare(backend, load_evalset(path), "dev", None, 0)
        lls, tokens = {}, {}
        for share in (False, True):
            backend.share_context, backend.usage.tokens = share, 0
            lls[share] = backend.loglikelihoods(prepared.requests)
            tokens[share] = backend.usage.tokens

        def run(share: bool):
            return lambda: (setattr(backend, "share_context", share), evaluation.score(backend, [prepared]))

        t = interleaved_best(repeat, {"whole": run(False), "shared": run(True)})
        backend.share_context = True
        out[name] = {"requests": len(prepared.requests), "tokens_whole": tokens[False],
                     "tokens_shared": tokens[True], "seconds_whole": t["whole"], "seconds_shared": t["shared"],
                     "max_abs_diff": max(abs(a - b) for a, b in zip(lls[False], lls[True]))}
    return out


def vllm_child(args: dict) -> dict:
    """In a child process: per shape, tokens and best wall time of the vLLM backend whole vs prefix-cached."""
    import time

    from evomerge import evaluation
    from evomerge.backends.vllm import VLLMBackend
    from evomerge.evalsets import load_evalset

    engine = VLLMBackend.load(args["model"], "float32", kv_cache_bytes=256 << 20, max_model_len=1024)
    out = {}
    for name, path in args["sets"].items():
        prepared = evaluation.prepare(engine, load_evalset(path), "dev", None, 0)
        best, tokens, lls = {}, {}, {}
        for _ in range(args["repeat"]):
            for share in (False, True):
                engine.share_context = share
                engine.llm.reset_prefix_cache()  # what `apply` does at every candidate
                engine.usage.tokens = 0
                t0 = time.perf_counter()
                lls[share] = engine.loglikelihoods(prepared.requests)
                best[share] = min(best.get(share, float("inf")), time.perf_counter() - t0)
                tokens[share] = engine.usage.tokens
        out[name] = {"tokens_whole": tokens[False], "tokens_shared": tokens[True], "seconds_whole": best[False],
                     "seconds_shared": best[True],
                     "max_abs_diff": max(abs(a - b) for a, b in zip(lls[False], lls[True]))}
    return out


def parse_arguments(doc: str, quick_repeat: int, vllm_help: str) -> argparse.Namespace:
    """The flags of this bench and bench/eval_vs_lm_eval.py, defaults resolved (`--vllm`: when vllm is installed
    and not --quick). `--child SPEC` is the vLLM child's (`run_child`)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--items", type=int, default=None, help="items per set (default 32; --quick: 8)")
    ap.add_argument("--repeat", type=int, default=None,
                    help=f"rounds, best kept (default 3; --quick: {quick_repeat})")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as scoring_overhead)")
    ap.add_argument("--vllm", action=argparse.BooleanOptionalAction, default=None,
                    help=f"also {vllm_help}, in a child process (default: when vllm is installed, not --quick)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    add_arguments(ap)
    args = ap.parse_args()
    args.items = pick(args.items, 32, 8, args.quick)
    args.repeat = pick(args.repeat, 3, quick_repeat, args.quick)
    if args.vllm is None:
        import importlib.util

        args.vllm = not args.quick and importlib.util.find_spec("vllm") is not None
    return args


def run_child(script: str, spec: dict, tmp: str) -> dict:
    """Run `script --child SPEC` (its vLLM side) and return what it wrote to SPEC's "out"."""
    spec = {**spec, "out": str(Path(tmp) / "child.json")}
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, script, "--child", json.dumps(spec)], check=True, env=env)
    return json.loads(Path(spec["out"]).read_text())


def main() -> None:
    args = parse_arguments(__doc__, 2, "the vLLM backend")
    if args.child:
        spec = json.loads(args.child)
        Path(spec["out"]).write_text(json.dumps(vllm_child(spec)))
        return
    torch.set_num_threads(args.threads)
    results: dict = {"items": args.items, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model")
        sets = build_sets(Path(tmp) / "sets", args.items)
        results["hf"] = hf_side(model_dir, sets, args.repeat, args.batch_size)
        if args.vllm:
            results["vllm"] = run_child(__file__, {"model": str(model_dir), "repeat": args.repeat,
                                                   "sets": {k: str(v) for k, v in sets.items()}}, tmp)
    rows = []
    for backend in ("hf", "vllm"):
        for name, r in results.get(backend, {}).items():
            tok, wall = r["tokens_whole"] / r["tokens_shared"], r["seconds_whole"] / r["seconds_shared"]
            print(f"{backend:4s} {name:15s} tokens {r['tokens_whole']:7d} -> {r['tokens_shared']:7d} ({tok:.2f}x) | "
                  f"wall {r['seconds_whole']:.3f} s -> {r['seconds_shared']:.3f} s ({wall:.2f}x) | max |ll diff| "
                  f"{r['max_abs_diff']:.1e}", flush=True)
            rows += [Row(f"{backend} {name}: tokens whole / shared", round(tok, 3), "x", None, None,
                         f"{r['tokens_whole']} -> {r['tokens_shared']}"),
                     Row(f"{backend} {name}: wall whole / shared", round(wall, 3), "x", None, None,
                         f"max |ll diff| {r['max_abs_diff']:.1e}")]
    print(json.dumps(results))
    write_json(args.json, BenchResult("shared_context", "shared-context scoring (tokens, wall)", rows,
                                      device=f"cpu float32, {results['torch_threads']} torch threads",
                                      details=results))


if __name__ == "__main__":
    main()
