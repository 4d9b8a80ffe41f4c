"""GPU acceptance run (issue 13): the product's own path on Llama-3.1-8B shapes, in one command.

    .venv/bin/python bench/gpu_acceptance.py [--json PATH]              # vLLM: `evomerge search` + probes (a GPU)
    python bench/gpu_acceptance.py --backend hf [--json PATH]          # no Ray, no vLLM (bash bench/gpu_acceptance.sh)
    .venv/bin/python bench/gpu_acceptance.py --shape tiny --device cpu --backend hf|vllm   # the CI smoke test

Models: random weights in the real Llama-3.1-8B shapes (vocabulary 128256, hidden 4096, 32 layers, 32 heads / 8 KV
heads, MLP 14336, untied head: 16.1 GB a model in bfloat16), made here (on the GPU when there is one) and written
as safetensors model directories, nothing from the Hub: a base, an "instruct" and a "lang" model (base + seeded
noise), with a word-level tokenizer of the full vocabulary ("w3", "w4", ...; bench/models.py). A search space YAML
(task arithmetic, instruct at 1.0, the lang model's weight per layer plus embeddings and head: 34 genes) and a
generated multiple-choice eval set go into the run's directory. Where the models go: `--root` (kept there for the
next run), else the first of /dev/shm and the temp directory with room for them (48 GB at 8B), removed at the end
unless `--keep-models`.

`--backend vllm` (the default with vllm installed and a GPU):
1. `evomerge search SPACE --backend vllm --workers 1` as a subprocess, 12 candidates (2 generations of 6), at
   tensor parallel 1, and 2 when two GPUs exist: per-candidate merge + swap and scoring seconds from the run's
   ledger, the GPU memory in use sampled during the run (NVML, every process: the engine lives in the Ray worker)
   against the worker's memory plan;
2. a probe process (this script, `--probe`): the Hugging Face backend's Evaluator on the GPU merges the 10th
   candidate and scores the agreement items in bfloat16 and float32, then a vLLM engine (CUDA graphs off) takes
   10 candidates in place, one after the other, scoring each: bf16 vLLM vs HF log-probs;
3. a second probe with CUDA graphs on (`VLLMBackend.start(cuda_graphs=True)`): the same 10 candidates must score
   the same as with graphs off (stale weights captured in a graph would show here).
`--backend hf`: no Ray, no vLLM imported (checked at the end from `sys.modules`): `worker.Evaluator.start` with the
plan's `EvaluatorSpec` (resident merge on the GPU, in-place swap, bfloat16 scoring), 12 candidates through
`Evaluator.evaluate`, peak GPU memory (`torch.cuda.max_memory_allocated`) against the plan, bf16 vs fp32 HF
log-probs on the last candidate.

One table (bench/report.py: JSON with `--json`, markdown on stdout). No figure is asserted by a test; the smoke test
(tests/test_gpu_acceptance.py) only checks the rows are well formed and measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import inspect
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))  # the lent GPU machine runs from a bare copy of the repo (no installed package)
from models import Shape, _tokenizer  # noqa: E402
from report import BenchResult, Row, add_arguments, markdown_table, pick, write_json  # noqa: E402
from workload import write_mc_set  # noqa: E402

SHAPES = {
    "8b": Shape(vocab=128256, hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8),
    "tiny": Shape(vocab=2048, hidden=128, layers=4, intermediate=256, heads=2, kv_heads=1),  # head_dim 64
}
# per shape: (items, items with --quick, context words of an item)
ITEMS = {"8b": (32, 16, 48), "tiny": (8, 8, 24)}
NAMES = ("base", "instruct", "lang")
NOISE = 0.5  # a fine-tune's task vector, in units of the init std: candidates then score clearly apart
GOAL_WALL_S = 480  # issue 13: under 8 minutes on one H100/H200
SHARED_ABS, SHARED_REL = 1e-5, 1e-7  # shared-context scoring = whole-sequence scoring (tests/test_shared_context.py)
GRAPHS_GOAL = 1e-4  # scores (means of per-item probabilities) with CUDA graphs vs eager: the same weights
NOT_MEASURED = "not measured: "  # a row whose value is NaN starts its note with this
GiB = 1 << 30


# ---- models, eval set, space -----------------------------------------------------------------------------------

def init_std(shape: Shape) -> float:
    """Weights' std: 0.02 at 8B (logits of std ~1.3 over the vocabulary), larger on tiny dims so that log-probs
    are far from uniform there too."""
    return max(0.02, shape.hidden ** -0.5)


def model_config(shape: Shape, dtype: str) -> dict:
    """Llama-3.1-8B's config.json fields (rope theta, context) on `shape`'s dimensions."""
    return {**shape.config(dtype), "max_position_embeddings": 131072, "rope_theta": 500000.0}


def pick_root(requested: Path | None, need: int) -> Path:
    """Where the models go: `requested`, else the first of /dev/shm and the temp directory that already holds
    them (an earlier run's, kept) or has room for them."""
    if requested is not None:
        return requested
    places = [p / "evomerge-gpu-acceptance" for p in (Path("/dev/shm"), Path(tempfile.gettempdir()))]
    for place in places:
        if place.is_dir():
            return place
    for place in places:
        try:
            if os.access(place.parent, os.W_OK) and shutil.disk_usage(place.parent).free > need + GiB // 2:
                return place
        except OSError:
            continue
    raise SystemExit(f"no room for the models ({need / 1e9:.1f} GB) in /dev/shm or {tempfile.gettempdir()}: "
                     "pass --root DIR")


def write_models(root: Path, shape: Shape, dtype: str, device: str) -> tuple[dict[str, Path], bool]:
    """base / instruct / lang model directories under `root` (kept and reused when complete). Each tensor is made
    on `device` from seeds of its own (base: its index; a fine-tune: base + NOISE x std of seeded noise), so the
    three models are written one after the other without holding any of them whole. Returns the paths and
    whether anything was written."""
    import torch

    from evomerge.tensors import TensorSpec, torch_dtype, write_model_dir

    std = init_std(shape)
    tag = (f"v{shape.vocab}-h{shape.hidden}-l{shape.layers}-i{shape.intermediate}-a{shape.heads}-k{shape.kv_heads}"
           f"-{dtype}-s{std:.4g}-n{NOISE}")
    paths = {n: root / f"{n}-{tag}" for n in NAMES}
    if all((p / "config.json").is_file() for p in paths.values()):
        return paths, False
    tdtype = torch_dtype(dtype)
    side = root / f"tokenizer-{tag}"  # the tokenizer, copied into every model directory by write_model_dir
    side.mkdir(parents=True, exist_ok=True)
    _tokenizer(side, shape.vocab)
    specs = [TensorSpec(n, s, tdtype) for n, s in shape.tensors()]
    gen = torch.Generator(device=device)
    work = tdtype if device != "cpu" else torch.float32  # generate in the target dtype where that is fast

    def tensors(k: int):
        for i, (name, s) in enumerate(shape.tensors()):
            norm = len(s) == 1  # RMSNorm weights: ones, plus a little noise in the fine-tunes
            gen.manual_seed(i)
            t = torch.ones(s, dtype=work, device=device) if norm else \
                torch.randn(s, generator=gen, dtype=work, device=device).mul_(std)
            if k:
                gen.manual_seed(1_000_003 * k + i)
                t.add_(torch.randn(s, generator=gen, dtype=work, device=device), alpha=(0.1 if norm else std) * NOISE)
            yield name, t.to(tdtype)

    for k, (name, path) in enumerate(paths.items()):
        if not (path / "config.json").is_file():
            t0 = time.perf_counter()
            write_model_dir(path, specs, tensors(k), config=model_config(shape, dtype), side_files_from=side)
            print(f"wrote {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    if device != "cpu":
        torch.cuda.empty_cache()
    return paths, True


def write_space(run_root: Path, paths: dict[str, Path], evalset: Path, dtype: str, popsize: int,
                generations: int, items: int) -> Path:
    """The search space: task arithmetic, base + 1.0 (instruct - base) + w (lang - base), w per decoder layer and
    separately for the embeddings and the head (search_spaces/llama31_8b_eu.yaml's shape)."""
    import yaml

    g = {"parameter": "weight", "model": "lang", "low": 0.0, "high": 2.0, "init": 1.0, "step": 0.3}
    space = {
        "models": [{"name": "base", "role": "base", "path": str(paths["base"])},
                   {"name": "instruct", "role": "instruct", "path": str(paths["instruct"])},
                   {"name": "lang", "role": "language", "language": "xx", "path": str(paths["lang"])}],
        "merge": {"method": "task_arithmetic", "dtype": dtype,
                  "fixed": {"instruct": {"weight": 1.0}, "lang": {"weight": 1.0}}},
        "genes": [{"name": "w_lang", "granularity": "per_layer", **g},
                  {"name": "w_lang_embed", "tensors": "embed", **g},
                  {"name": "w_lang_head", "tensors": "lm_head", **g}],
        "eval": {"sets": [{"path": str(evalset), "weight": 1.0}], "split": "dev", "max_items": items},
        "search": {"optimizer": "cmaes", "popsize": popsize, "generations": generations, "finalists": 0},
    }
    path = run_root / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def candidate_recipes(space, n_layers: int, n: int) -> list[dict]:
    """`n` candidates as the search makes them (`Space.recipe` of gene values): the initial point, then seeded
    uniform draws within the genes' bounds."""
    genes = space.expand(n_layers)
    out = []
    for k in range(n):
        rng = random.Random(k)
        values = {gn.name: gn.init if k == 0 else round(rng.uniform(gn.low, gn.high), 4) for gn in genes}
        out.append(space.recipe(values, n_layers).to_mergekit())
    return out


# ---- memory plan -------------------------------------------------------------------------------------------------

def worker_plan(backend: str, space, n_layers: int, device: str, tp: int | None = None) -> tuple[Any, str]:
    """One worker's memory plan as the search makes it, and where it came from: `select.plan_run` (which refuses
    a plan that does not fit; the refusal goes into the note and the plan is taken from `plan_for_space` to be
    measured all the same). On `--device cpu` the machine is probed without its GPUs."""
    from evomerge.backends import select
    from evomerge.errors import UserError

    machine = select.probe()
    if device == "cpu":
        machine = dataclasses.replace(machine, gpus=0, gpu_bytes=0)
    note = ""
    if hasattr(select, "plan_run"):
        try:
            res = select.plan_run(backend, space, n_layers, 1, machine=machine, tensor_parallel=tp)
            return (res[-1] if isinstance(res, tuple) else res), "select.plan_run"
        except UserError as e:
            note = f"plan_run refused: {e}; measured against "
    try:
        _, plan = select.plan_for_space(backend, space, n_layers, 1, machine, tp)
    except TypeError:  # before tensor_parallel was a parameter
        _, plan = select.plan_for_space(backend, space, n_layers, 1, machine)
    return plan, note + "select.plan_for_space"


def planned_device_bytes(plan) -> int:
    """The device bytes a plan counts per rank: its `total`, else (an older MemoryPlan) the engine, the sources
    when they stay on the device, and the KV cache."""
    total = getattr(plan, "total", None)
    if isinstance(total, (int, float)):
        return int(total)
    on_device = plan.sources_on == "device" or plan.device == "cpu"
    return plan.engine_bytes + (plan.sources_bytes if on_device else 0) + plan.kv_cache_bytes


def plan_items(plan) -> dict[str, int]:
    """The plan's device items, name -> bytes (`MemoryPlan.items`: (name, bytes) pairs)."""
    items = getattr(plan, "items", None)
    if isinstance(items, dict):
        return {str(k): int(v) for k, v in items.items()}
    if isinstance(items, (list, tuple)):
        out: dict[str, int] = {}
        for k, v in items:
            out[str(k)] = out.get(str(k), 0) + int(v)
        return out
    return {"engine": plan.engine_bytes, "sources": plan.sources_bytes, "kv_cache": plan.kv_cache_bytes}


def plan_dict(plan) -> dict:
    """A plan's fields that JSON can carry (the probe process rebuilds the plan from them)."""
    out = {}
    for f in dataclasses.fields(plan):
        v = getattr(plan, f.name)
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[f.name] = v
    return out


# ---- memory measurement ------------------------------------------------------------------------------------------

class HostPeak:
    """Peak resident memory of this process since `start` (Linux: VmHWM, reset through /proc/self/clear_refs)."""

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        self.before = _status_kb("VmRSS")

    def peak_bytes(self) -> int:
        return max(0, _status_kb("VmHWM") - self.before) * 1024


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class GpuSampler:
    """Memory in use on each GPU (every process: a vLLM engine lives in the Ray worker), sampled on a thread every
    0.2 s through NVML (nvidia-ml-py, a vLLM dependency) or nvidia-smi; `peak()` is the largest rise over the
    first sample, per GPU."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.samples, self._stop = interval, [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.read = lambda: [pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles]
            self.how = "NVML"
        except Exception:  # noqa: BLE001 - no NVML binding: the command-line tool
            self.read = _nvidia_smi_used
            self.how = "nvidia-smi"
        self.samples.append(self.read())
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(self.read())
            except Exception:  # noqa: BLE001 - a missed sample is not a failure
                pass

    def stop(self) -> list[int]:
        self._stop.set()
        self.thread.join()
        base = self.samples[0]
        return [max(s[i] for s in self.samples) - base[i] for i in range(len(base))]


def _nvidia_smi_used() -> list[int]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return [int(x) * (1 << 20) for x in out.split()]


# ---- the Hugging Face worker -----------------------------------------------------------------------------------

def start_hf(spec, device: str):
    """The HF backend's Evaluator as a worker starts it (`Evaluator.start`: the plan's device takes the model and
    the resident sources), and a note saying where the model landed against the requested device."""
    from evomerge.worker import Evaluator

    ev = Evaluator.start(spec, "hf-0")
    got = ev.backend.device.type
    plan_device = getattr(spec.memory, "device", "?")
    note = f"Evaluator.start, plan device {plan_device}, model on {got}"
    if got != device:
        print(f"warning: the HF worker scores on {got}, not on the requested {device} ({note})", flush=True)
    return ev, note


def agreement_requests(ev, n_items: int):
    """The requests of the first `n_items` items of the first eval set, and the item offsets among them."""
    prepared = ev.prepared[0]
    offsets = list(prepared.offsets[:n_items + 1])
    return list(prepared.requests[:offsets[-1]]), offsets


def hf_reference(ev, recipe: dict | None, n_items: int) -> dict:
    """Log-likelihoods of the agreement items under the Evaluator's dtype (bfloat16), then in float32 on the same
    merged weights: the resident sources are dropped and the live model is cast to float32 in place (no second
    copy of the model). `recipe` is merged first (None: the weights as they are). The Evaluator is spent after."""
    import torch

    from evomerge.recipe import Recipe

    if recipe is not None:
        ev.apply(Recipe.from_mergekit(recipe))
    requests, offsets = agreement_requests(ev, n_items)
    low = ev.backend.loglikelihoods(requests)
    ev.apply = None  # the ResidentMerge and its sources
    gc.collect()
    if ev.backend.device.type == "cuda":
        torch.cuda.empty_cache()
    ev.backend.model.float()
    fp32 = ev.backend.loglikelihoods(requests)
    shared = getattr(ev.backend, "share_context", None)
    plain = alone = None
    if shared is not None:  # the same requests with every context computed again for each choice (issue 16)
        ev.backend.share_context = not shared
        plain = ev.backend.loglikelihoods(requests)
        if shared:  # the floor: the same plain scoring, one request at a time (other kernel shapes)
            ev.backend.share_context = False
            alone = [ev.backend.loglikelihoods([r])[0] for r in requests]
        ev.backend.share_context = shared
        if not shared:
            fp32, plain = plain, fp32
    return {"low": low, "fp32": fp32, "fp32_unshared": plain, "fp32_alone": alone, "offsets": offsets,
            "requests": [list(r.context + r.continuation) for r in requests]}


def compare(a: list[float], b: list[float], offsets: list[int]) -> tuple[float, int, int]:
    """Max |a - b| over the requests, and on how many items of how many the two pick the same choice."""
    from evomerge.scorers import _argmax  # the choice an item's acc counts (first maximum)

    diff = max(abs(x - y) for x, y in zip(a, b))
    same = sum(_argmax(a[i:j]) == _argmax(b[i:j]) for i, j in zip(offsets[:-1], offsets[1:]))
    return diff, same, len(offsets) - 1


def racing_rows(ev, recipe: dict, full) -> list[Row]:
    """Issue 16's racing in the worker (`Candidate.race`): the last candidate raced with no bar must score as its
    full pass; against an unreachable bar it must stop after the first of 4 batches."""
    from evomerge.racing import Race
    from evomerge.worker import Candidate

    if ev.spec is None or not ev.spec.objectives:
        return [Row("racing: a race run to the end = the full pass", math.nan, "",
                    note=NOT_MEASURED + "the worker spec has no objectives")]
    raced = ev.evaluate(Candidate(10_000, recipe, race=Race(4, 0.95)))
    stopped = ev.evaluate(Candidate(10_001, recipe, race=Race(4, 0.95, beat=((1e9,),))))
    diff = max((abs(raced.scores[n].values[m] - v) for n, s in full.scores.items() for m, v in s.values.items()),
               default=math.inf) if raced.ok else math.inf
    # the batches run other kernel shapes: on CPU the scores are the same; on a GPU bf16 rounding moves them a little
    tol = 1e-6 if ev.backend.device.type == "cpu" else 5e-3
    ok = raced.ok and raced.pruned is None and diff <= tol
    early = stopped.ok and bool(stopped.pruned) and len(stopped.race) == 1
    return [Row("racing: a race run to the end vs the full pass, max |score difference|", diff, "", f"<= {tol:g}", ok,
                note=f"{len(raced.race)} batches, {raced.score_seconds:.3f} s vs {full.score_seconds:.3f} s"),
            Row("racing: against an unreachable bar, stopped after the first batch", float(early), "", "= 1", early,
                note=f"{stopped.score_seconds:.3f} s; {(stopped.pruned or stopped.error or '')[:80]}")]


def run_hf(args, ctx: dict) -> tuple[list[Row], dict]:
    """`--backend hf`: the worker's Evaluator driven here, no Ray: 12 candidates, then bf16 vs fp32."""
    import torch

    from evomerge.worker import Candidate, EvaluatorSpec

    plan, plan_src = worker_plan("hf", ctx["space"], ctx["n_layers"], args.device)
    from evomerge.evalsets import load_evalset
    from evomerge.fitness import Objective, Term

    card = load_evalset(ctx["evalset"]).card  # the set's own objective: what racing bounds
    spec = EvaluatorSpec(ctx["recipes"][0], (str(ctx["evalset"]),), "dev", args.items, 0, threads=args.threads,
                         backend="hf", memory=plan, objectives=(Objective(card.name, (Term(card.name, card.metric),)),))
    cuda = args.device != "cpu"
    host = HostPeak()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
        free0, total = torch.cuda.mem_get_info()
    host.start()
    t0 = time.perf_counter()
    ev, how = start_hf(spec, args.device)
    start_s = time.perf_counter() - t0
    print(f"HF worker started in {start_s:.1f} s ({how})", flush=True)
    results, used = [], []
    for i, recipe in enumerate(ctx["recipes"]):
        r = ev.evaluate(Candidate(i, recipe))
        if cuda:
            used.append(total - torch.cuda.mem_get_info()[0] - (total - free0))
        results.append(r)
        print(_candidate_line(r), flush=True)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base_alloc
        reserved = torch.cuda.max_memory_reserved()
        how_mem = (f"torch.cuda.max_memory_allocated; reserved {reserved / GiB:.2f} GiB, device in use after a "
                   f"candidate up to {max(used) / GiB:.2f} GiB")
    else:
        peak = host.peak_bytes()
        how_mem = "peak RSS rise of this process (VmHWM)"
    race_rows = racing_rows(ev, ctx["recipes"][-1], results[-1])  # issue 16's racing, on the same weights
    ref = hf_reference(ev, None, args.agree_items)  # the last candidate's weights
    diff, same, n = compare(ref["low"], ref["fp32"], ref["offsets"])
    on = ev.backend.device.type == torch.device(args.device).type
    rows = _candidate_rows(results, "HF, in-place ResidentMerge", len(ctx["recipes"]))
    rows += _memory_rows(peak, plan, plan_src, how_mem)
    rows.append(Row(f"HF {args.dtype} vs HF float32: max |log-prob difference|", diff, "nats",
                    note=f"last candidate, {len(ref['low'])} requests of {n} items; same choice on {same}/{n}"))
    if ref["fp32_unshared"] is not None:
        plain = ref["fp32_unshared"]
        floor = max(abs(x - y) for x, y in zip(ref["fp32_alone"] or plain, plain))
        gap = max(abs(x - y) for x, y in zip(ref["fp32"], plain))
        ok = gap <= floor or all(abs(x - y) <= SHARED_ABS + SHARED_REL * abs(y) for x, y in zip(ref["fp32"], plain))
        if ref["fp32_alone"] is not None:
            rows.append(Row("HF float32 floor: each choice computed whole, one request at a time vs batched: max "
                            "|log-prob difference|", floor, "nats", note="the same arithmetic in other kernel "
                            "shapes: what the device's float32 rounding alone moves"))
        rows.append(Row("HF float32, shared context (cached keys/values) vs each choice computed whole: max "
                        "|log-prob difference|", gap, "nats", f"<= {SHARED_ABS:g} + {SHARED_REL:g} x |ll|, or <= "
                        "the floor", ok, note=f"last candidate, {len(ref['fp32'])} requests; largest relative "
                        f"{max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(ref['fp32'], plain)):.2g}"))
    rows += race_rows
    rows.append(Row(f"HF worker on the requested device ({args.device})", float(on), "", "= 1", on, note=how))
    details = {"plan": plan_dict(plan), "plan_source": plan_src, "plan_items": plan_items(plan),
               "start_seconds": start_s, "start_how": how, "candidates": [_result_dict(r) for r in results],
               "agreement": ref, "peak_device_bytes": peak}
    return rows, details


# ---- the vLLM path: `evomerge search`, and the probes --------------------------------------------------------------

def _search_help_has(flag: str) -> bool:
    r = subprocess.run([sys.executable, "-m", "evomerge", "search", "--help"], capture_output=True, text=True,
                       env=_env(), cwd=REPO, timeout=120)
    return flag in r.stdout


def _env() -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
                TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


def run_search(args, ctx: dict, tp: int) -> tuple[list[Row], dict]:
    """`evomerge search --backend vllm` on the space: its ledger's timings, GPU memory in use vs the plan."""
    from evomerge.ledger import Ledger

    name = f"accept-tp{tp}"
    runs = ctx["run_root"] / "runs"
    cmd = [sys.executable, "-m", "evomerge", "search", str(ctx["space_path"]), "--name", name, "--runs-dir",
           str(runs), "--backend", "vllm", "--workers", "1", "--no-progress"]
    label = f"vLLM search, TP={tp}"
    if _search_help_has("--tensor-parallel"):  # also at 1: the plan must not pick a size of its own
        cmd += ["--tensor-parallel", str(tp)]
    elif tp > 1:
        return [Row(f"{label}: candidates complete", math.nan, "",
                    note=NOT_MEASURED + "`evomerge search` has no --tensor-parallel yet")], {}
    plan, plan_src = worker_plan("vllm", ctx["space"], ctx["n_layers"], args.device, tp)
    shutil.rmtree(runs / name, ignore_errors=True)
    log = ctx["run_root"] / f"search-tp{tp}.log"
    gpu = GpuSampler() if args.device != "cpu" else None
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)
    wall = time.perf_counter() - t0
    rises = gpu.stop() if gpu else []
    print(f"search TP={tp}: exit {proc.returncode} in {wall:.0f} s (log {log})", flush=True)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-30:]
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n" + "\n".join(tail))
    trials = Ledger.open(runs / name, name, (), create=False).trials()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    results = [_Attrs(t.number, t.user_attrs) for t in sorted(done, key=lambda t: t.number)]
    failed = {t.number: t.user_attrs.get("error", "") for t in trials if t.state.name == "FAIL"}
    run_json = runs / name / "run.json"
    recorded = json.loads(run_json.read_text()) if run_json.is_file() else {}
    n = ctx["popsize"] * ctx["generations"]
    rows = [Row(f"{label}: candidates complete", len(done), "", f"= {n}", len(done) == n,
                note=f"{len(failed)} failed" + (f": {next(iter(failed.values()))[:200]}" if failed else ""))]
    rows += _candidate_rows(results, label, n)
    if gpu:
        peak = max(rises) if rises else 0
        rows += _memory_rows(peak, plan, plan_src, f"GPU memory in use ({gpu.how}), largest rise on one of "
                                                   f"{len(rises)} GPU(s) during the search, every process")
    else:
        rows.append(Row(f"{label}: peak device memory measured / planned", math.nan, "",
                        note=NOT_MEASURED + "CPU (the engine shares the worker's RAM; see the hf mode)"))
    details = {"tp": tp, "plan": plan_dict(plan), "plan_source": plan_src, "plan_items": plan_items(plan),
               "wall_seconds": wall, "gpu_rises": rises, "candidates": [_result_dict(r) for r in results],
               "failed": failed, "run_json": {k: v for k, v in recorded.items() if k in (
                   "backend", "device", "dtype", "tensor_parallel", "workers")}}
    return rows, details


@dataclasses.dataclass
class _Attrs:
    """A finished trial's timings, read like a CandidateResult."""

    number: int
    attrs: dict

    @property
    def merge_seconds(self) -> float:
        return float(self.attrs.get("merge_seconds", math.nan))

    @property
    def score_seconds(self) -> float:
        return float(self.attrs.get("score_seconds", math.nan))

    @property
    def scores(self) -> dict:
        return self.attrs.get("scores", {})

    ok = True
    error = None


def run_probe(args, ctx: dict, graphs: bool, hf_ref: bool) -> dict:
    """One probe process (this script with `--probe`): returns what it wrote."""
    out = ctx["run_root"] / f"probe-graphs-{'on' if graphs else 'off'}.json"
    plan, plan_src = worker_plan("vllm", ctx["space"], ctx["n_layers"], args.device, 1)
    hf_plan = worker_plan("hf", ctx["space"], ctx["n_layers"], args.device)[0] if hf_ref else None
    job = {"recipes": ctx["recipes"][:args.swaps], "evalset": str(ctx["evalset"]), "items": args.items,
           "agree_items": args.agree_items, "threads": args.threads, "device": args.device, "graphs": graphs,
           "hf_ref": hf_ref, "plan": plan_dict(plan), "hf_plan": plan_dict(hf_plan) if hf_plan else None,
           "out": str(out)}
    jpath = ctx["run_root"] / f"probe-graphs-{'on' if graphs else 'off'}.job.json"
    jpath.write_text(json.dumps(job))
    log = jpath.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", str(jpath)], cwd=REPO,
                              env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)
    print(f"probe (CUDA graphs {'on' if graphs else 'off'}): exit {proc.returncode} in "
          f"{time.perf_counter() - t0:.0f} s (log {log})", flush=True)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-30:]
        raise RuntimeError(f"probe exited {proc.returncode}:\n" + "\n".join(tail))
    return json.loads(out.read_text())


def probe_main(job_path: str) -> None:
    """Inside the probe process: the HF reference (optional), then one vLLM engine taking the candidates in turn."""
    import torch

    from evomerge import evaluation
    from evomerge.backends.vllm import VLLMBackend
    from evomerge.evalsets import load_evalset
    from evomerge.memplan import MemoryPlan
    from evomerge.recipe import Recipe
    from evomerge.worker import Candidate, Evaluator, EvaluatorSpec

    job = json.loads(Path(job_path).read_text())
    recipes, out = job["recipes"], {}
    torch.set_num_threads(job["threads"])
    if job["hf_ref"]:
        hf_plan = _plan_from(MemoryPlan, job["hf_plan"])
        spec = EvaluatorSpec(recipes[0], (job["evalset"],), "dev", job["items"], 0, threads=job["threads"],
                             backend="hf", memory=hf_plan)
        ev, how = start_hf(spec, job["device"])
        out["hf"] = hf_reference(ev, recipes[-1], job["agree_items"])
        out["hf_how"] = how
        del ev
        gc.collect()
        if job["device"] != "cpu":
            torch.cuda.empty_cache()
    plan = _plan_from(MemoryPlan, job["plan"])
    spec = EvaluatorSpec(recipes[0], (job["evalset"],), "dev", job["items"], 0, threads=job["threads"],
                         backend="vllm", memory=plan)
    template = Recipe.from_mergekit(recipes[0])
    knob = "cuda_graphs" in inspect.signature(VLLMBackend.start).parameters
    out["knob"] = knob
    t0 = time.perf_counter()
    if knob:  # the worker's start (select.start_backend) with the CUDA-graph setting made explicit
        p = job["plan"]
        backend = VLLMBackend.start(template, kv_cache_bytes=p["kv_cache_bytes"], sources_on=p["sources_on"],
                                    tensor_parallel=p["tensor_parallel"], max_model_len=p["max_model_len"],
                                    cuda_graphs=job["graphs"])
    elif job["graphs"]:
        raise SystemExit("VLLMBackend.start has no cuda_graphs knob")
    else:
        from evomerge.backends.select import start_backend

        backend, _ = start_backend("vllm", template, plan)
    prepared = [evaluation.prepare(backend, load_evalset(job["evalset"]), "dev", job["items"], 0)]
    ev = Evaluator(backend, backend.apply, prepared, "probe", spec)
    out["start_seconds"] = time.perf_counter() - t0
    results = [ev.evaluate(Candidate(i, r)) for i, r in enumerate(recipes)]
    for r in results:
        print(_candidate_line(r), flush=True)
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"candidate {failed[0].number} failed in the probe: {failed[0].error}")
    requests, offsets = agreement_requests(ev, job["agree_items"])
    out["vllm"] = backend.loglikelihoods(requests)  # the last candidate's weights, as hf_reference merged them
    out["vllm_requests"] = [list(r.context + r.continuation) for r in requests]
    out["offsets"] = offsets
    out["candidates"] = [_result_dict(r) for r in results]
    Path(job["out"]).write_text(json.dumps(out))


def _plan_from(cls, d: dict):
    """The MemoryPlan of the probe's job file (written by the same code: every field is there)."""
    def tuples(v):  # JSON gave lists: (name, bytes) pairs back to tuples
        return tuple(tuples(x) for x in v) if isinstance(v, list) else v

    return cls(**{k: tuples(v) for k, v in d.items()})


def run_vllm(args, ctx: dict) -> tuple[list[Row], dict]:
    """`--backend vllm`: the search at each tensor-parallel size, then the agreement and CUDA-graph probes."""
    rows, details = [], {"searches": []}
    for tp in args.tp:
        r, d = run_search(args, ctx, tp)
        rows += r
        details["searches"].append(d)
    off = run_probe(args, ctx, graphs=False, hf_ref=True)
    details["probe_eager"] = off
    ref = off["hf"]
    if ref["requests"] != off["vllm_requests"]:
        raise RuntimeError("the backends tokenized the agreement items differently")
    for what, key in ((f"HF {args.dtype}", "low"), ("HF float32", "fp32")):
        diff, same, n = compare(off["vllm"], ref[key], off["offsets"])
        rows.append(Row(f"vLLM {args.dtype} vs {what}: max |log-prob difference|", diff, "nats",
                        note=f"after {len(off['candidates'])} swaps, {len(off['vllm'])} requests of {n} items; "
                             f"same choice on {same}/{n}; HF: {off['hf_how']}"))
    label = f"max |score difference| over {args.swaps} swaps, CUDA graphs on vs off"
    if args.device == "cpu":
        rows.append(Row(label, math.nan, "", note=NOT_MEASURED + "CPU (no CUDA graphs)"))
    elif not off["knob"]:
        rows.append(Row(label, math.nan, "", note=NOT_MEASURED + "VLLMBackend.start has no cuda_graphs knob yet"))
    else:
        on = run_probe(args, ctx, graphs=True, hf_ref=False)
        details["probe_graphs"] = on
        # every metric of every candidate; a graph that kept the previous weights would be off by far more
        worst = max(abs(cb["scores"][s][m] - v) for ca, cb in zip(on["candidates"], off["candidates"])
                    for s in ca["scores"] for m, v in ca["scores"][s].items())
        identical = all(ca["scores"] == cb["scores"] for ca, cb in zip(on["candidates"], off["candidates"]))
        lp = max(abs(a - b) for a, b in zip(on["vllm"], off["vllm"]))
        rows.append(Row(label, worst, "", f"<= {GRAPHS_GOAL:g}", worst <= GRAPHS_GOAL,
                        note=f"bit-identical: {'yes' if identical else 'no'}; log-probs after the last swap differ "
                             f"by up to {lp:.3g}; engine start {on['start_seconds']:.0f} s with graphs, "
                             f"{off['start_seconds']:.0f} s without"))
    return rows, details


# ---- rows ----------------------------------------------------------------------------------------------------------

def _candidate_line(r) -> str:
    if not r.ok:
        return f"  candidate {r.number}: FAILED {r.error}"
    s = "; ".join(f"{k} {_values(v).get('gold_prob', math.nan):.4f}" for k, v in r.scores.items())
    return f"  candidate {r.number}: merge + swap {r.merge_seconds:.3f} s, scoring {r.score_seconds:.3f} s; {s}"


def _values(s) -> dict[str, float]:
    """A set's metric values: from a SetScores, or from its dict form in the ledger ({"values": ..., "n": ...})."""
    if isinstance(s, dict):
        return dict(s.get("values", s))
    return dict(s.values)


def _result_dict(r) -> dict:
    scores = {k: _values(v) for k, v in r.scores.items()}
    return {"number": r.number, "error": r.error, "merge_seconds": r.merge_seconds,
            "score_seconds": r.score_seconds, "scores": scores}


def _candidate_rows(results: list, label: str, n: int) -> list[Row]:
    ok = [r for r in results if r.ok]
    if not ok:
        return [Row(f"{label}: candidates scored", 0, "", f"= {n}", False,
                    note=(results[0].error or "")[:200] if results else "none ran")]
    merge = [r.merge_seconds for r in ok]
    score = [r.score_seconds for r in ok]
    finite = all(math.isfinite(v) for r in ok for s in r.scores.values() for v in _values(s).values())
    return [Row(f"{label}: merge + swap, s per candidate (median)", statistics.median(merge), "s",
                note=f"{len(ok)} candidates, min {min(merge):.3g}, max {max(merge):.3g}, first {merge[0]:.3g}"),
            Row(f"{label}: scoring, s per candidate (median)", statistics.median(score), "s",
                note=f"min {min(score):.3g}, max {max(score):.3g}, first {score[0]:.3g}"),
            Row(f"{label}: candidates scored, all scores finite", len(ok), "", f"= {n}", len(ok) == n and finite)]


def _memory_rows(peak: int, plan, plan_src: str, how: str) -> list[Row]:
    planned = planned_device_bytes(plan)
    where = "GPU" if getattr(plan, "device", "cpu") == "cuda" else plan.device
    return [Row("peak device memory measured", peak / GiB, "GiB", note=how),
            Row("peak device memory measured / planned", peak / planned if planned else math.nan, "x", "<= 1",
                peak <= planned if planned else None,
                note=f"planned {planned / GiB:.2f} GiB on the {where} ({plan_src}; "
                     + ", ".join(f"{k} {v / GiB:.2f}" for k, v in plan_items(plan).items()) + " GiB)")]


def imported(names: tuple[str, ...]) -> list[str]:
    """Which of these top-level packages this process has imported."""
    return sorted(n for n in names if n in sys.modules)


def third_party_imports() -> list[str]:
    """Top-level names of every non-standard-library package in sys.modules (what the machine must provide)."""
    std = set(getattr(sys, "stdlib_module_names", ()))
    tops = {m.split(".")[0] for m in list(sys.modules)}
    return sorted(t for t in tops if t not in std and not t.startswith("_") and t not in (
        "evomerge", "models", "report", "workload", "__main__", "gpu_acceptance"))


def run(args, shape: Shape, paths: dict[str, Path], run_root: Path) -> tuple[list[Row], dict]:
    """The run's eval set, space and candidates under `run_root`, then the chosen mode."""
    from evomerge.hub import check_configs
    from evomerge.space import load_space

    evalset = write_mc_set(run_root, shape.vocab, args.items, context_words=ITEMS[args.shape][2], name="accept_mc")
    popsize = max(1, args.candidates // 2)
    generations = max(1, -(-args.candidates // popsize))
    space_path = write_space(run_root, paths, evalset, args.dtype, popsize, generations, args.items)
    space = load_space(space_path)
    n_layers = check_configs(space).n_layers
    ctx = {"space": space, "space_path": space_path, "n_layers": n_layers, "evalset": evalset,
           "run_root": run_root, "recipes": candidate_recipes(space, n_layers, args.candidates),
           "popsize": popsize, "generations": generations}
    return run_hf(args, ctx) if args.backend == "hf" else run_vllm(args, ctx)


# ---- main ----------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["vllm", "hf"], default=None,
                    help="vllm: `evomerge search` + probes (default with vllm installed and a GPU); hf: no Ray/vLLM")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--candidates", type=int, default=None, help="candidates (12 = 2 generations of 6; quick 6)")
    ap.add_argument("--swaps", type=int, default=None, help="vLLM probes: candidates swapped in (10; quick 4)")
    ap.add_argument("--items", type=int, default=None,
                    help="multiple-choice items, 4 choices each (8b: 32, quick 16; tiny: 8)")
    ap.add_argument("--agree-items", type=int, default=8, help="items of the log-prob agreement check")
    ap.add_argument("--tp", default=None, help="tensor-parallel sizes of the vLLM search (default 1, and 2 with "
                                               "two GPUs)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the worker (default: the cores, "
                                                              "at most 16)")
    ap.add_argument("--root", type=Path, default=None,
                    help="where the models are written and kept for the next run (default: /dev/shm or the temp "
                         "directory, whichever has room, removed at the end unless --keep-models)")
    ap.add_argument("--keep-models", action="store_true", help="keep the models written under the default root")
    ap.add_argument("--keep", type=Path, default=None,
                    help="write the run (space, eval set, search run, logs) here and keep it (default: a temp dir)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per subprocess (vLLM mode)")
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    add_arguments(ap)
    args = ap.parse_args(argv)
    if args.probe:
        probe_main(args.probe)
        return 0
    wall0 = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; the lent GPU machine has no network
    args.candidates = pick(args.candidates, 12, 6, args.quick)
    args.swaps = min(pick(args.swaps, 10, 4, args.quick), args.candidates)
    args.items = pick(args.items, ITEMS[args.shape][0], ITEMS[args.shape][1], args.quick)
    args.agree_items = min(args.agree_items, args.items)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    args.threads = args.threads or min(16, cores)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU, or with --shape tiny --device cpu to check the code path",
              file=sys.stderr)
        return 2
    has_vllm = importlib.util.find_spec("vllm") is not None
    args.backend = args.backend or ("vllm" if has_vllm and args.device == "cuda" else "hf")
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    args.tp = [int(x) for x in args.tp.split(",")] if args.tp else ([1, 2] if gpus >= 2 else [1])
    shape = SHAPES[args.shape]
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(f"{args.shape} shapes: {shape.params() / 1e9:.2f}B parameters, {shape.params() * 2 / 1e9:.1f} GB a model "
          f"in bfloat16; backend {args.backend}; device {device_name} (x{max(gpus, 1)}); torch {torch.__version__}",
          flush=True)

    bytes_per = 2 if args.dtype == "bfloat16" else 4
    root = pick_root(args.root, len(NAMES) * shape.params() * bytes_per)
    try:
        t0 = time.perf_counter()
        paths, wrote = write_models(root, shape, args.dtype, "cuda" if args.device == "cuda" else "cpu")
        gen_s = time.perf_counter() - t0
        print(f"models under {root} ({gen_s:.1f} s)", flush=True)
        with tempfile.TemporaryDirectory(prefix="gpu-acceptance-") as tmp:
            run_root = Path(tmp) if args.keep is None else args.keep
            run_root.mkdir(parents=True, exist_ok=True)
            rows, details = run(args, shape, paths, run_root)
    finally:
        if args.root is None and not args.keep_models:  # 48 GB in /dev/shm is RAM held until a reboot
            shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - wall0
    if args.backend == "hf":
        bad = imported(("ray", "vllm"))
        rows.append(Row("ray or vllm modules imported", len(bad), "", "= 0", not bad, note=", ".join(bad) or "none"))
        details["imports"] = third_party_imports()
        details["heavy_imports"] = imported(("ray", "vllm", "optuna", "cma", "datasets", "matplotlib", "py3langid"))
        print("ray/vllm imported: " + (", ".join(bad) or "none") + "; optuna, cma, datasets, matplotlib, py3langid: "
              + (", ".join(details["heavy_imports"]) or "none"), flush=True)
        print("third-party packages imported: " + ", ".join(details["imports"]), flush=True)
    rows.append(Row("wall time of the acceptance run", wall, "s", f"<= {GOAL_WALL_S}", wall <= GOAL_WALL_S,
                    note=f"models written in {gen_s:.0f} s" if wrote else "models reused from an earlier run"))
    details.update({"shape": args.shape, "params": shape.params(), "backend": args.backend, "device": args.device,
                    "dtype": args.dtype, "gpus": gpus, "models_root": str(root), "torch": torch.__version__})
    title = f"GPU acceptance ({args.backend}, {args.shape}, {args.dtype}, {device_name})"
    result = BenchResult("gpu_acceptance", title, rows, details=details)
    if gpus:
        result = dataclasses.replace(result, device=f"{device_name} x{gpus}")
    write_json(args.json, result)
    print(markdown_table([result]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
