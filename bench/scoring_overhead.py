"""Scoring overhead: tokens per second of `evomerge eval` on multiple-choice sets vs a bare batched forward pass of
the same model over the same tokens, measured side by side in one run.

    .venv/bin/python bench/scoring_overhead.py [--device cpu|cuda] [--dtype float32|bfloat16] [--items 64]
                                               [--json PATH] [--quick]

`--quick`: 8 items, best of 2 rounds. Goal (issue 5): overhead <= 15%.

The model is a random Llama (hidden 256, 4 layers, head_dim 64, vocabulary 2,048: the output head is ~15% of the
weights, about twice its share in an 8B Llama) with a byte-level tokenizer (every UTF-8 byte one token), so the
prompts are long like real passages; it is sized to run on 2 CPU cores in about a minute. The eval sets are built from the shipped
instruction sets' reference answers (eu, ca, gl, es, en text): a cloze set (4 continuations per item, each its own
sequence) and a letter set (A-D after one prompt: the four requests share one row).

"tokens" are the tokens of the sequences the model runs on (for the letter set, one row per item). The bare pass
runs exactly those sequences, in the same length-sorted, right-padded batches, through `model(...)` and reads
nothing. Three figures per set: the per-candidate hot path (`evaluation.score` on a prepared set, what a search
worker runs per candidate), the whole `evomerge eval` (load, tokenize, score), and the bare pass; overhead is
bare tokens/s over scoring tokens/s minus 1. Each timing is the best of --repeat rounds in which the three take
turns.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from report import BenchResult, Row, add_arguments, pick, write_json  # noqa: E402

GOAL = 0.15  # issue 5: scoring overhead over a bare forward pass


def build_model(path: Path, vocab: int = 2048) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_lm import make_tokenizer

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=1, intermediate_size=704,
                      num_hidden_layers=4, vocab_size=vocab, max_position_embeddings=2048,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def build_sets(root: Path, n_items: int) -> dict[str, Path]:
    from evomerge.evalsets import load_evalset, write_evalset

    texts = [it.reference for lang in ("eu", "ca", "gl", "es", "en")
             for it in load_evalset(REPO / "eval_sets" / f"instructions_{lang}").items]
    rng = random.Random(0)
    items = []
    for i in range(n_items):
        passage = " ".join(rng.sample(texts, 2))[:300]
        choices = [" ".join(rng.choice(texts).split()[:rng.randint(3, 12)]) for _ in range(4)]
        items.append({"id": i, "split": "dev", "passage": passage, "choices": choices, "gold": i % 4})
    base = {"language": "xx", "kind": "multiple_choice", "metric": "gold_prob", "chat_template": False,
            "target_delimiter": " "}
    return {
        "cloze": write_evalset(root / "cloze", {**base, "name": "cloze", "prompt": "{passage}\nAnswer:"}, items),
        "letter": write_evalset(root / "letter", {**base, "name": "letter", "form": "letter",
                                                  "prompt": "{passage}\n{options}\nAnswer:"}, items),
    }


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def interleaved_best(repeat: int, fns: dict) -> dict[str, float]:
    """Best time of each function over `repeat` rounds, the functions taking turns within a round (so a slow
    moment of a shared machine hits all of them alike)."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            best[k] = min(best[k], timed(fn))
    return best


@torch.inference_mode()
def bare_forward(backend, rows: list[tuple[int, ...]]) -> None:
    """The same rows, batches and padding as HFBackend.loglikelihoods; the model's full logits, nothing read."""
    from evomerge.backends.hf import pad_batch

    order = sorted(range(len(rows)), key=lambda k: -len(rows[k]))
    pad = backend.tokenizer.pad_token_id
    for start in range(0, len(order), backend.batch_size):
        batch = order[start:start + backend.batch_size]
        ids, mask = pad_batch([rows[k] for k in batch], pad)
        backend.model(input_ids=ids.to(backend.device), attention_mask=mask.to(backend.device)).logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--items", type=int, default=None, help="items per set (default 16; --quick: 8)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=None, help="rounds, best kept (default 4; --quick: 2)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared 2-core machine two threads make the ratios noise)")
    add_arguments(ap)
    args = ap.parse_args()
    args.items = pick(args.items, 16, 8, args.quick)
    args.repeat = pick(args.repeat, 4, 2, args.quick)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    from evomerge import evaluation
    from evomerge.backends.hf import HFBackend
    from evomerge.evalsets import load_evalset

    results = {"device": args.device, "dtype": args.dtype, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model")
        sets = build_sets(Path(tmp) / "sets", args.items)
        backend = HFBackend.load(model_dir, dtype=getattr(torch, args.dtype), device=args.device,
                                 batch_size=args.batch_size)
        for name, path in sets.items():
            prepared = evaluation.prepare(backend, load_evalset(path), "dev", None, 0)
            rows = list(dict.fromkeys((r.context + r.continuation)[:-1] for r in prepared.requests))
            tokens = sum(len(r) for r in rows)
            evaluation.score(backend, [prepared])  # warm-up
            t = interleaved_best(args.repeat, {
                "bare": lambda: bare_forward(backend, rows),
                "score": lambda: evaluation.score(backend, [prepared]),
                "eval": lambda: evaluation.score_model_dir(str(model_dir), [str(path)], "dev", None, 0, args.device,
                                                           args.dtype, args.batch_size)})
            t_bare, t_score, t_eval = t["bare"], t["score"], t["eval"]
            results[name] = {
                "requests": len(prepared.requests), "rows": len(rows), "tokens": tokens,
                "bare_tok_s": round(tokens / t_bare), "score_tok_s": round(tokens / t_score),
                "eval_tok_s": round(tokens / t_eval),
                "score_overhead": round(t_score / t_bare - 1, 3), "eval_overhead": round(t_eval / t_bare - 1, 3),
            }
            r = results[name]
            print(f"{name:6s} {r['requests']:4d} requests, {r['rows']:4d} rows, {tokens:6d} tokens | bare forward "
                  f"{r['bare_tok_s']:7d} tok/s | score (per candidate) {r['score_tok_s']:7d} tok/s, overhead "
                  f"{r['score_overhead']:+.1%} | evomerge eval (load+tokenize+score) {r['eval_tok_s']:7d} tok/s, "
                  f"overhead {r['eval_overhead']:+.1%}", flush=True)
    print(json.dumps(results))
    rows = []
    for name in sets:
        r = results[name]
        rows += [Row(f"{name}: per-candidate score vs bare forward", r["score_overhead"], "overhead", f"<= {GOAL}",
                     r["score_overhead"] <= GOAL, f"{r['tokens']} tokens, {r['score_tok_s']} tok/s"),
                 Row(f"{name}: evomerge eval (load+tokenize+score) vs bare forward", r["eval_overhead"], "overhead",
                     f"<= {GOAL}", r["eval_overhead"] <= GOAL, f"{r['eval_tok_s']} tok/s")]
    write_json(args.json, BenchResult("scoring_overhead", "scoring overhead vs bare forward", rows,
                                      device=f"{args.device} {args.dtype}, {results['torch_threads']} torch threads",
                                      details=results))


if __name__ == "__main__":
    main()
