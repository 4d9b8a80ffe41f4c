"""Merge and scoring at 8B scale on one GPU: random weights in the real Llama-3.1-8B shapes, built on the device.

    .venv/bin/python bench/gpu_8b.py [--json PATH]                      # one GPU (under 10 minutes on an H100)
    .venv/bin/python bench/gpu_8b.py --shape tiny --device cpu [--json PATH]   # the same code path, tiny dims

Shapes (`--shape 8b`): vocabulary 128256, hidden 4096, 32 layers, 32 heads / 8 KV heads (head_dim 128), MLP 14336,
untied lm_head: 8.03B parameters, 16.1 GB a model in bfloat16. Nothing touches the disk: the model being scored is a
`LlamaForCausalLM` made on the device, and the merge sources are generated there.

1. Scoring throughput: tokens per second of prompt log-probabilities through evomerge's HF backend
   (`HFBackend.loglikelihoods`: rows of ~512 random tokens, a short continuation each) at a few batch sizes.
2. Merge time per candidate, per-layer task arithmetic (base + instruct weight 1 + per-layer language weights), with
   1 and with 4 language models, by the project's own kernels (`evomerge.methods`: `prepare` once, `combine` per
   candidate straight into the live model's parameters, the loop `ResidentMerge.apply` runs). The prepared sources
   are the base and one task vector per input: 3 models with one language (48 GB in bfloat16) and 6 with four
   (96 GB), beside the 16 GB model being scored. Memory plan: as many sources as fit on the GPU (its free memory
   less `--headroom-gb`) stay there; the rest live in pinned host memory and are copied to the GPU tensor by tensor
   while merging (copy and merge take turns on one stream). On an 80 GB H100 one language fits on the GPU and four
   do not (3 of 6 sources resident); each row says which mode it ran in. The GPU rows compare the merge's bytes per
   second with a device copy's, the streamed rows the bytes crossing the bus with a pinned host-to-device copy's.

No goals are attached: these are the figures a GPU session records (README, bench/README.md).
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
from models import Shape  # noqa: E402
from report import BenchResult, Row, add_arguments, pick, write_json  # noqa: E402

SHAPES = {
    "8b": Shape(vocab=128256, hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8),
    "tiny": Shape(vocab=512, hidden=128, layers=4, intermediate=256, heads=2, kv_heads=1),
}
# per shape: (prompt tokens per row, continuation tokens, rows per timing, batch sizes)
SCORING = {"8b": (500, 12, 64, (1, 8, 32)), "tiny": (48, 4, 8, (1, 4))}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def build_model(shape: Shape, device: torch.device, dtype: torch.dtype):
    """The model being scored: a Llama-3.1-shaped `LlamaForCausalLM` with random weights, made on the device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                      num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                      num_key_value_heads=shape.kv_heads, head_dim=shape.hidden // shape.heads,
                      max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                      tie_word_embeddings=False, pad_token_id=0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialize in the target dtype: no float32 copy of 8B parameters
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


# ---- scoring ----------------------------------------------------------------------------------------------------

def scoring_rows(backend, shape_name: str, vocab: int, device: torch.device, reps: int) -> tuple[list[Row], list]:
    """Tokens per second of `HFBackend.loglikelihoods` at each batch size (best of `reps` after a warm-up)."""
    from evomerge.backends.hf import Request

    prompt, cont, n_rows, batch_sizes = SCORING[shape_name]
    rng = random.Random(0)
    requests = [Request(tuple(rng.randrange(3, vocab) for _ in range(prompt)),
                        tuple(rng.randrange(3, vocab) for _ in range(cont))) for _ in range(n_rows)]
    tokens = n_rows * (prompt + cont - 1)  # the model runs context + continuation minus the last token
    rows, raw = [], []
    for bs in batch_sizes:
        backend.batch_size = bs
        values = backend.loglikelihoods(requests)  # warm-up (kernels, allocator)
        if not all(math.isfinite(v) for v in values):
            raise RuntimeError(f"non-finite log-likelihoods at batch size {bs}")
        best = min(timed(lambda: backend.loglikelihoods(requests), device) for _ in range(reps))
        raw.append({"batch_size": bs, "rows": n_rows, "tokens": tokens, "seconds": best})
        rows.append(Row(f"scoring: prompt log-probs, batch {bs}", tokens / best, "tok/s",
                        note=f"{n_rows} rows of {prompt + cont - 1} tokens"))
        print(f"scoring  batch {bs:3d}: {tokens / best:10.0f} tok/s ({n_rows} rows x {prompt + cont - 1} tokens, "
              f"{best:.3f} s)", flush=True)
    return rows, raw


# ---- merging ----------------------------------------------------------------------------------------------------

@dataclass
class Sources:
    """Prepared merge sources: `tensors[name]` = [base, delta_instruct, delta_lang_1, ...], each on the device or in
    (pinned) host memory; `on_device[k]` says where source k lives (a source is one whole model)."""

    tensors: dict[str, list[torch.Tensor]]
    on_device: list[bool]
    host_bytes: int  # bytes of the sources in host memory (copied to the device per candidate)

    @property
    def mode(self) -> str:
        k, n = sum(self.on_device), len(self.on_device)
        if k == n:
            return "all sources on the device"
        return "all sources streamed from pinned host memory" if k == 0 else \
            f"{k} of {n} sources on the device, {n - k} streamed from pinned host memory"


def plan_sources(n_sources: int, model_bytes: int, device: torch.device, headroom: float,
                 budget_gb: float | None) -> list[bool]:
    """Which sources stay on the device: as many as fit in its free memory less the headroom (on a CPU the device
    is the host: all of them), unless `budget_gb` sets the device's budget."""
    if budget_gb is not None:
        budget = budget_gb * 1e9
    elif device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] - headroom * 1e9
    else:
        budget = float("inf")
    fit = n_sources if budget == float("inf") else max(0, min(n_sources, int(budget // model_bytes)))
    return [k < fit for k in range(n_sources)]


def build_sources(shape: Shape, n_langs: int, device: torch.device, dtype: torch.dtype, on_device: list[bool],
                  method) -> Sources:
    """Base + instruct + `n_langs` language models (base + seeded noise, like fine-tunes), generated tensor by
    tensor on the device and prepared by the method (task vectors); each source goes to one flat buffer of its own,
    on the device or in pinned host memory."""
    specs = shape.tensors()
    numel = sum(math.prod(s) for _, s in specs)
    pin = device.type == "cuda"
    flats = [torch.empty(numel, dtype=dtype, device=device if here else "cpu", pin_memory=pin and not here)
             for here in on_device]
    tensors: dict[str, list[torch.Tensor]] = {}
    gen = torch.Generator(device=device)
    offset = 0
    for i, (name, s) in enumerate(specs):
        n = math.prod(s)
        gen.manual_seed(i)
        base = torch.randn(s, generator=gen, device=device, dtype=dtype).mul_(0.02)
        inputs = [base + torch.randn(s, generator=gen, device=device, dtype=dtype).mul_(0.01)
                  for _ in range(1 + n_langs)]
        prepared = [base, *method.prepare(base, inputs, consume=True)]
        views = []
        for flat, t in zip(flats, prepared):
            view = flat[offset:offset + n].view(s)
            view.copy_(t, non_blocking=False)
            views.append(view)
        tensors[name] = views
        offset += n
        del base, inputs, prepared
    sync(device)
    host = sum(f.numel() * f.element_size() for f, here in zip(flats, on_device) if not here)
    return Sources(tensors, on_device, host)


def candidates(n_layers: int, n_langs: int) -> list:
    """Two per-layer task-arithmetic recipes (instruct weight 1, one weight list per language model)."""
    from evomerge.recipe import Recipe

    out = []
    for k in range(2):
        models = [{"model": "instruct", "parameters": {"weight": 1.0}}]
        for j in range(n_langs):
            w = [round((0.2 + 0.9 * ((i * 7 + k * 3 + j) % n_layers) / n_layers) / n_langs, 4)
                 for i in range(n_layers)]
            models.append({"model": f"lang{j}", "parameters": {"weight": w}})
        out.append(Recipe.from_mergekit({"merge_method": "task_arithmetic", "base_model": "base", "dtype": "bfloat16",
                                         "models": models}))
    return out


@torch.no_grad()
def merge(recipe, sources: Sources, targets: dict[str, torch.Tensor], method, n_layers: int,
          device: torch.device) -> None:
    """One candidate into the live parameters: what `ResidentMerge.apply` does, with host sources copied over
    (pinned, non-blocking, on the merge's stream) just before their tensor is merged."""
    for name, (base, *deltas) in sources.tensors.items():
        here = [t if t.device == device else t.to(device, non_blocking=True) for t in (base, *deltas)]
        method.combine(here[0], here[1:], recipe.coefficients(name, n_layers), targets[name])


def check_merge(recipe, sources: Sources, targets: dict[str, torch.Tensor], n_layers: int,
                device: torch.device) -> float:
    """Max abs difference on one layer's attention output projection between the merge and base + sum w_i d_i
    computed in float32 here (a bfloat16 rounding or two is expected; a wrong source would be far off)."""
    name = f"model.layers.{n_layers // 2}.self_attn.o_proj.weight"
    base, *deltas = [t.to(device).float() for t in sources.tensors[name]]
    ref = base.clone()
    for w, d in zip(recipe.coefficients(name, n_layers).weights, deltas):
        ref += w * d
    return float((targets[name].float() - ref).abs().max())


def copy_rate(nbytes: int, device: torch.device, host_to_device: bool, reps: int) -> float:
    """Bytes per second of a plain copy: device to device (read + written bytes), or pinned host to device."""
    n = max(1, min(nbytes, 2 * 10**9)) // 2
    if host_to_device:
        src = torch.empty(n, dtype=torch.uint8, pin_memory=True).fill_(1)
        dst = torch.empty(n, dtype=torch.uint8, device=device)
        best = min(timed(lambda: dst.copy_(src, non_blocking=True), device) for _ in range(reps))
        return n / best
    src = torch.ones(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = min(timed(lambda: dst.copy_(src), device) for _ in range(reps))
    return 2 * n / best


def merge_rows(model, shape: Shape, n_langs: int, device: torch.device, dtype: torch.dtype, args) -> tuple[list, dict]:
    """Merge time per candidate with `n_langs` language models, in the memory mode that fits."""
    from evomerge.methods import METHODS

    method = METHODS["task_arithmetic"]
    targets = {n: p.data for n, p in model.named_parameters()}
    if any(t.dtype != dtype for t in targets.values()):
        raise RuntimeError(f"the model's parameters are not all {dtype}: the merge writes {dtype}")
    model_bytes = sum(t.numel() * t.element_size() for t in targets.values())
    n_sources = 2 + n_langs  # base, instruct's task vector, one per language
    if device.type == "cuda":
        torch.cuda.empty_cache()  # scoring's cached activations would count as used memory in the plan
    on_device = plan_sources(n_sources, model_bytes, device, args.headroom_gb, args.device_budget_gb)
    t0 = time.perf_counter()
    sources = build_sources(shape, n_langs, device, dtype, on_device, method)
    built = time.perf_counter() - t0
    cands = candidates(shape.layers, n_langs)
    merge(cands[0], sources, targets, method, shape.layers, device)  # warm-up
    times = [timed(lambda r=r: merge(cands[r % 2], sources, targets, method, shape.layers, device), device)
             for r in range(args.reps)]
    err = check_merge(cands[(args.reps - 1) % 2], sources, targets, shape.layers, device)
    if not err < 0.004:  # bfloat16 roundings of values ~0.1 stay under 1e-3; a wrong source is off by ~0.03
        raise RuntimeError(f"the merge differs from base + sum w_i d_i by {err:g}")
    best = min(times)
    moved = (n_sources + 1) * model_bytes  # every source read once, the model written once
    what = f"{n_langs} language model{'s' if n_langs > 1 else ''}"
    print(f"merge    {what}: {sources.mode}; {best:.3f} s/candidate (median {statistics.median(times):.3f}), "
          f"sources built in {built:.1f} s, max error {err:.2g}", flush=True)
    rows = [Row(f"task arithmetic merge, {what}: s/candidate", best, "s", note=sources.mode)]
    if sources.host_bytes:
        bus = copy_rate(min(sources.host_bytes, 10**9), device, device.type == "cuda", args.reps)
        ratio = sources.host_bytes / best / bus
        rows.append(Row(f"task arithmetic merge, {what}: bus bytes/s / pinned copy's", ratio, "",
                        note=f"{sources.host_bytes / 1e9:.1f} GB streamed, copy {bus / 1e9:.1f} GB/s"))
    else:
        copy = copy_rate(moved, device, False, args.reps)
        ratio = moved / best / copy
        rows.append(Row(f"task arithmetic merge, {what}: bytes/s / device copy's", ratio, "",
                        note=f"{moved / 1e9:.1f} GB moved, copy {copy / 1e9:.0f} GB/s"))
    print(f"         {rows[-1].metric.split(': ')[1]}: {ratio:.2f} ({rows[-1].note})", flush=True)
    raw = {"langs": n_langs, "mode": sources.mode, "sources_on_device": on_device, "seconds": times,
           "build_s": built, "bytes_moved": moved, "host_bytes": sources.host_bytes, "max_error": err}
    del sources
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions, best kept (default 3; --quick: 2)")
    ap.add_argument("--headroom-gb", type=float, default=8.0,
                    help="GPU memory kept free of sources (activations, the build's temporaries, allocator slack)")
    ap.add_argument("--device-budget-gb", type=float, default=None,
                    help="device memory for sources (default: free memory less the headroom); 0 streams them all")
    ap.add_argument("--langs", default="1,4", help="language-model counts to merge")
    add_arguments(ap)
    args = ap.parse_args()
    args.reps = pick(args.reps, 3, 2, args.quick)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run on a GPU, or with --shape tiny --device cpu to check the code path")
        if device.index is None:  # "cuda" -> "cuda:0": tensors report their index, and placement compares devices
            device = torch.device("cuda", torch.cuda.current_device())
    dtype = torch.bfloat16
    shape = SHAPES[args.shape]
    from evomerge.backends.hf import HFBackend
    from tiny_lm import make_tokenizer

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.shape}: {shape.params() / 1e6:.1f}M parameters, {shape.params() * 2 / 1e9:.3g} GB a model in "
          f"bfloat16; device {name}; torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    model = build_model(shape, device, dtype)
    print(f"model built on {device} in {time.perf_counter() - t0:.1f} s", flush=True)
    backend = HFBackend(model, make_tokenizer())
    rows, raw = scoring_rows(backend, args.shape, shape.vocab, device, args.reps)
    details: dict = {"shape": args.shape, "params": shape.params(), "device_name": name, "scoring": raw, "merge": []}
    for n_langs in (int(x) for x in args.langs.split(",")):
        r, d = merge_rows(model, shape, n_langs, device, dtype, args)
        rows += r
        details["merge"].append(d)
    if device.type == "cuda":
        details["peak_device_bytes"] = torch.cuda.max_memory_allocated(device)
    write_json(args.json, BenchResult("gpu_8b", f"{args.shape} shapes on {name}", rows, device=name,
                                      details=details))


if __name__ == "__main__":
    main()
