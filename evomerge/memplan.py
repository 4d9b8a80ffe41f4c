"""A worker's memory plan: where the merge sources live and what is left for the KV cache. Pure arithmetic on
sizes read from config.json; nothing is allocated or probed here (the machine's figures are passed in).

What a worker holds, per tensor-parallel rank:
- the engine's weights: the merged model being scored (its shard, on the device);
- the prepared sources of the resident merge: the base and one task vector per input (linear: the inputs;
  slerp: the other model; TIES / breadcrumbs / DELLA add one magnitude ranking per input);
- vLLM only: the KV cache, and, when the sources are in host memory, one set of pinned merged tensors that
  `reload_weights` copies from (with the sources on the device the merged tensors are streamed into
  `reload_weights` one at a time; the Hugging Face backend merges straight into its live parameters);
- headroom for activations, the CUDA context and fragmentation.
Sources go on the device when all of that fits there, else in host memory (pinned; `reload_weights` copies the
merged tensors over one by one). With tensor parallelism every rank merges the full tensors and keeps its shard,
so each rank holds the full sources: `tensor_parallel` times the source memory of one worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

GiB = 1 << 30
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelSize:
    """One copy of a model: its parameter count and dtype, and the KV cache one token takes."""

    numel: int
    dtype_bytes: int
    kv_bytes_per_token: int

    @property
    def bytes(self) -> int:
        return self.numel * self.dtype_bytes


def model_size(config: Mapping[str, Any], dtype: str) -> ModelSize:
    """Parameter count of a decoder-only transformer from its config.json (Llama, Mistral, Qwen2/3, Gemma-like;
    mixture-of-experts MLPs counted per expert), and the bytes of K and V per token over all layers."""
    c = dict(config.get("text_config") or config)
    h, n_layers, vocab = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c["vocab_size"])
    heads = int(c["num_attention_heads"])
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or h // heads)
    inter = int(c.get("intermediate_size") or 4 * h)
    attn = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2  # q, o; k, v
    if c.get("attention_bias") or c.get("model_type") == "qwen2":
        attn += (heads + 2 * kv_heads) * head_dim
    experts = int(c.get("num_local_experts") or c.get("num_experts") or 0)
    if experts:
        mlp = experts * 3 * h * int(c.get("moe_intermediate_size") or inter) + h * experts  # experts + router
    else:
        mlp = 3 * h * inter  # gate, up, down
    norms = 2 * h
    if c.get("model_type", "").startswith("qwen3"):
        norms += 2 * head_dim  # q_norm, k_norm
    embed = vocab * h
    head = 0 if c.get("tie_word_embeddings", False) else vocab * h
    numel = embed + n_layers * (attn + mlp + norms) + h + head
    nbytes = _DTYPE_BYTES[dtype]
    return ModelSize(numel, nbytes, 2 * n_layers * kv_heads * head_dim * nbytes)


def resident_copies(method: str, n_inputs: int, dtype: str) -> float:
    """Model-sized tensors a resident merge keeps after `prepare` (methods/): its sources, in units of one copy
    of the merged model."""
    nbytes = _DTYPE_BYTES[dtype]
    if method == "linear":
        return float(n_inputs)  # the inputs themselves
    if method == "slerp":
        return 2.0  # base and the other model
    copies = 1.0 + n_inputs  # base + one task vector per input
    if method in ("dare_ties", "dare_linear"):
        copies += n_inputs * 2 / nbytes  # the template seed's int16 draws, kept (ResidentMerge keep_draws)
    if method in ("ties", "breadcrumbs", "breadcrumbs_ties"):
        copies += n_inputs * 4 / nbytes  # int32 magnitude ranks
    elif method in ("della", "della_linear"):
        copies += n_inputs * (2 if dtype == "bfloat16" else 4) / nbytes  # rank norms in the working dtype
    return copies


@dataclass(frozen=True)
class MemoryPlan:
    """Where one worker keeps what (bytes per tensor-parallel rank), and whether it fits."""

    backend: str  # "hf" or "vllm"
    device: str  # "cuda" or "cpu"
    device_bytes: int  # usable memory of one device: a GPU, or the worker's share of host RAM on CPU
    host_bytes: int  # the worker's share of host RAM
    tensor_parallel: int
    engine_bytes: int  # the model being scored (this rank's shard)
    sources_bytes: int  # the prepared sources (full tensors on every rank)
    merged_bytes: int  # vLLM with host sources: the pinned merged tensors reload_weights copies from (else 0)
    sources_on: str  # "device" or "host"
    kv_cache_bytes: int  # vLLM's KV cache budget (0 for hf)
    max_model_len: int
    fits: bool
    reason: str

    def describe(self) -> str:
        """A few lines for `evomerge search --dry-run`."""
        where = "device" if self.device == "cpu" else self.sources_on
        place = {"device": "on the GPU" if self.device == "cuda" else "in RAM",
                 "host": "in pinned host memory, copied tensor by tensor"}[where]
        rank = f" per rank (tensor parallel {self.tensor_parallel})" if self.tensor_parallel > 1 else ""
        lines = [f"memory plan{rank}: " + (f"{_gib(self.device_bytes)} usable on the GPU, {_gib(self.host_bytes)} "
                                            "of host memory" if self.device == "cuda"
                                            else f"{_gib(self.device_bytes)} of RAM usable per worker"),
                 f"  engine weights   {_gib(self.engine_bytes)}",
                 f"  sources          {_gib(self.sources_bytes)} {place}"]
        if self.backend == "vllm":
            lines += [f"  merged tensors   {_gib(self.merged_bytes)} pinned, copied by reload_weights" if self.merged_bytes
                      else "  merged tensors   streamed into reload_weights one at a time",
                      f"  KV cache         {_gib(self.kv_cache_bytes)} (max_model_len {self.max_model_len})"]
        lines.append(("  fits: " if self.fits else "  DOES NOT FIT: ") + self.reason)
        return "\n".join(lines)


def plan_memory(backend: str, size: ModelSize, source_copies: float, *, device: str, device_bytes: int,
                host_bytes: int, workers: int = 1, max_tensor_parallel: int = 1, max_model_len: int = 4096,
                kv_cache_bytes: int | None = None, headroom: float = 0.1) -> MemoryPlan:
    """The plan of one worker.

    device "cuda": every worker has `max_tensor_parallel` GPUs of `device_bytes` each and shares `host_bytes` with
    the others; the smallest tensor-parallel size (1, 2, 4, ...) whose shard and one longest sequence's KV cache
    fit is taken. device "cpu": the workers share `host_bytes`, which is also the device. `kv_cache_bytes` caps
    vLLM's KV cache (default: whatever is left on a GPU; 1 GiB on CPU, where the cache competes with the sources
    for the same RAM). `headroom` is the fraction of each device kept free for activations and the runtime.
    """
    if backend not in ("hf", "vllm") or device not in ("cuda", "cpu"):
        raise ValueError(f"unknown backend/device {backend}/{device}")
    host = host_bytes // max(1, workers)
    sources = int(size.bytes * source_copies)
    if device == "cpu":
        usable = int(host * (1 - headroom))
        kv = 0
        if backend == "vllm":
            kv = max(kv_cache_bytes if kv_cache_bytes is not None else GiB, size.kv_bytes_per_token * max_model_len)
        need = size.bytes + sources + kv  # vLLM's merged tensors are streamed (sources on the device)
        fits = need <= usable
        reason = (f"{_gib(need)} of {_gib(usable)} ({workers} worker(s) share {_gib(host_bytes)} of RAM)" if fits
                  else f"needs {_gib(need)}, has {_gib(usable)}: use fewer workers, a smaller dtype, or a GPU")
        return MemoryPlan(backend, device, usable, usable, 1, size.bytes, sources, 0, "device", kv,
                          max_model_len, fits, reason)

    usable = int(device_bytes * (1 - headroom))
    tp = 1
    while True:
        plan = _gpu_plan(backend, size, sources, usable, host, tp, max_model_len, kv_cache_bytes)
        if plan.fits or tp * 2 > max_tensor_parallel:
            return plan
        tp *= 2


def _gpu_plan(backend: str, size: ModelSize, sources: int, usable: int, host: int, tp: int, max_model_len: int,
              kv_cache_bytes: int | None) -> MemoryPlan:
    engine = -(-size.bytes // tp)
    merged = size.bytes if backend == "vllm" else 0  # host mode only: pinned merged tensors (device mode streams)
    kv_min = -(-size.kv_bytes_per_token * max_model_len // tp) if backend == "vllm" else 0

    def plan(on: str, kv: int, fits: bool, reason: str) -> MemoryPlan:
        return MemoryPlan(backend, "cuda", usable, host, tp, engine, sources, merged, on, kv, max_model_len, fits,
                          reason)

    def kv_left(used: int) -> int:
        left = usable - used
        return min(left, kv_cache_bytes) if kv_cache_bytes is not None else left

    on_device = engine + sources
    if on_device + kv_min <= usable:
        kv = kv_left(on_device) if backend == "vllm" else 0
        return MemoryPlan(backend, "cuda", usable, host, tp, engine, sources, 0, "device", kv, max_model_len, True,
                          f"sources on the GPU next to the engine ({_gib(on_device)} of {_gib(usable)})")
    if backend == "hf":
        return plan("device", 0, False, f"model + sources need {_gib(on_device)}, the GPU has {_gib(usable)}: "
                                        "use --backend vllm (sources in host memory) or a bigger GPU")
    if engine + kv_min > usable:
        return plan("host", 0, False, f"the weights ({_gib(engine)}) and one {max_model_len}-token sequence's KV "
                                      f"cache do not fit in {_gib(usable)}: more GPUs per worker (tensor parallel)")
    host_need = tp * (sources + merged)  # every rank keeps the full sources
    if host_need > host:
        return plan("host", 0, False, f"the sources do not fit on the GPU and need {_gib(host_need)} of host "
                                      f"memory, the worker has {_gib(host)}: fewer workers or more RAM")
    return plan("host", kv_left(engine), True,
                f"sources do not fit next to the engine ({_gib(on_device + kv_min)} > {_gib(usable)}); "
                f"{_gib(host_need)} of host memory")


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB // 4 else f"{n / (1 << 20):.1f} MiB"
