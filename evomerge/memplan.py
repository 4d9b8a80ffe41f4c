"""A worker's memory plan: everything one worker holds, item by item, and what is left for vLLM's KV cache. Pure
arithmetic on sizes read from config.json; nothing is allocated or probed here (the machine's figures are passed
in).

What one tensor-parallel rank of a worker holds on its device:
- **engine weights**: its shard of the merged model being scored;
- **sources**: the resident merge's prepared tensors (base and one task vector per input, DARE's kept draws, TIES's
  magnitude ranks: `resident_copies`), each rank keeping only the slices of its own shard (shards.py: vLLM's split
  of every weight; norms are replicated and negligible), so tensor parallelism divides them; except for the methods
  that need a whole tensor for every candidate (`sharded_sources`: DARE and DELLA, TIES/breadcrumbs with rescale),
  whose every rank keeps the whole sources. When they do not fit next to the engine they live in host memory
  instead ("host mode"), and the merge runs there;
- **stream buffers** (vLLM): the merged tensors outside the layers (embeddings, head, final norm) plus two layers'
  worth, double-buffered, that `ResidentMerge.merged` streams into `reload_weights`; whole-shaped on every rank
  (vLLM's loader takes checkpoint-shaped tensors), plus one slice-sized buffer for the column-split tensors; on the
  device with the sources there, else pinned in host memory;
- **preparation** (sources on the device, at start, after the engine has taken its KV cache): one tensor's inputs
  whole, on the device, while its prepared form is made;
- **merge scratch**: on an accelerator the kernels run over a whole tensor at once (methods/chunked.py), with a
  few scratch buffers the size of the largest tensor (the embedding, at Llama-3's vocabulary): `scratch_bytes`;
- **logits**: the log-probs of the largest scoring batch, `batch_tokens` x vocabulary in the dtype, then in
  float32 (the cast) and their log-softmax (float32): 8 bytes + the dtype's per token and vocabulary entry;
- **activations**: the largest layer's intermediates for `batch_tokens` tokens (residual, q/k/v/o, MLP gate, up
  and its product) in the dtype;
- **CUDA context** (a fixed reserve: context, cuBLAS workspaces, and NCCL buffers with tensor parallelism) and an
  **allocator margin** (a fraction of the card: fragmentation of PyTorch's caching allocator);
- **KV cache** (vLLM): whatever is left, at least one `max_model_len` sequence; the Hugging Face backend instead
  holds the generation cache of one batch (`batch_tokens` tokens).
A plan that does not fit says so, names its largest item and the way out (`MemoryPlan.refusal`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from evomerge.errors import UserError

GiB = 1 << 30
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

CUDA_CONTEXT = GiB  # CUDA context, cuBLAS/cuDNN workspaces, the runtime's own allocations per process
NCCL_RESERVE = GiB // 2  # with tensor parallelism: NCCL communicators and vLLM's all-reduce buffers per rank
ALLOCATOR_MARGIN = 0.05  # of the card, for fragmentation of the caching allocator
CPU_RUNTIME = GiB // 2  # a worker process on CPU: interpreter, torch, tokenizer, eval sets
BATCH_TOKENS = 4096  # tokens of the largest scoring batch (vLLM's max_num_batched_tokens; the HF backend's cap)


@dataclass(frozen=True)
class ModelSize:
    """One copy of a model: its parameter count and dtype, the KV cache one token takes, and the shapes the
    per-candidate buffers depend on."""

    numel: int
    dtype_bytes: int
    kv_bytes_per_token: int
    vocab: int = 0
    hidden: int = 0
    intermediate: int = 0  # the MLP's inner width (of one expert for a mixture of experts)
    layer_numel: int = 0  # parameters of one decoder layer
    outside_numel: int = 0  # parameters outside the layers: embeddings, head (untied), final norm
    largest_numel: int = 0  # the largest single tensor (the embedding at Llama-3's or Qwen's vocabulary)

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
        inter = int(c.get("moe_intermediate_size") or inter)
        mlp = experts * 3 * h * inter + h * experts  # experts + router
    else:
        mlp = 3 * h * inter  # gate, up, down
    norms = 2 * h
    if c.get("model_type", "").startswith("qwen3"):
        norms += 2 * head_dim  # q_norm, k_norm
    embed = vocab * h
    head = 0 if c.get("tie_word_embeddings", False) else vocab * h
    layer = attn + mlp + norms
    outside = embed + h + head
    numel = outside + n_layers * layer
    nbytes = _DTYPE_BYTES[dtype]
    largest = max(embed, h * heads * head_dim, h * inter)
    return ModelSize(numel, nbytes, 2 * n_layers * kv_heads * head_dim * nbytes, vocab, h, inter, layer, outside,
                     largest)


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


def sharded_sources(method: str, rescale: bool = False) -> bool:
    """Whether a rank keeps only its shard's slices of the sources (ResidentMerge with a `Shard`): not for methods
    that need a norm or a random draw over the whole tensor for every candidate (DARE and DELLA, which rescale by
    default; TIES and breadcrumbs when `rescale` is on)."""
    if method in ("dare_ties", "dare_linear", "della", "della_linear"):
        return False
    return not (rescale and method in ("ties", "breadcrumbs", "breadcrumbs_ties"))


_MASKED = ("dare_ties", "dare_linear", "ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear")
_CONSENSUS = ("ties", "dare_ties", "breadcrumbs_ties", "della")


def scratch_bytes(method: str, n_inputs: int, dtype: str) -> int:
    """Bytes of scratch per element of a tensor that the merge kernels take on an accelerator, where they run over
    the whole tensor at once (methods/chunked.py's `Scratch` slots; on CPU they are chunk-sized and negligible):
    - reduced precision (bf16/fp16) sums accumulate in a float32 buffer (slot 2: 4 bytes);
    - `weighted_sum` (task arithmetic and the masked linear methods): the running sum and a spare (slots 0, 1);
      float32 without masks is fused straight into the output (nothing);
    - `consensus_sum` (TIES family): one weighted term per input (slots 100+i), the sums, the majority sign and
      the divisor (slots 0, 1, 4, 7, 8);
    - a mask (DARE codes, TIES/breadcrumbs ranks): the keep flags and the masked term (slots 30, 31, 32 or 33, up
      to 4 bytes each);
    - `linear` in reduced precision: the float32 accumulator and the float32 promotion of each product;
    - slerp works in bounded chunks of 2^20 elements (nothing proportional to the tensor)."""
    b = _DTYPE_BYTES[dtype]
    reduced = 4 if b < 4 else 0
    if method == "slerp":
        return 0
    if method == "linear":
        return 2 * reduced
    masks = 12 if method in _MASKED else 0
    if method in _CONSENSUS:
        return (n_inputs + 5) * b + reduced + masks
    if not reduced and not masks:
        return 0
    return 2 * b + reduced + masks


@dataclass(frozen=True)
class MemoryPlan:
    """What one worker keeps where (bytes per tensor-parallel rank), and whether it fits.

    `items` are the device's (one rank's) allocations in order, the KV cache last; `host_items` what the worker
    keeps in host memory (host mode: the sources and the pinned merged tensors, for all its ranks)."""

    backend: str  # "hf" or "vllm"
    device: str  # "cuda" or "cpu"
    device_bytes: int  # memory of one device: a GPU, or the worker's share of host RAM on CPU
    host_bytes: int  # the worker's share of host RAM
    tensor_parallel: int
    items: tuple[tuple[str, int], ...]
    host_items: tuple[tuple[str, int], ...]
    sources_on: str  # "device" or "host"
    kv_cache_bytes: int  # vLLM's KV cache budget (0 for hf)
    max_model_len: int
    batch_tokens: int
    fits: bool
    reason: str
    hint: str = ""  # the way out, when it does not fit

    def item(self, name: str) -> int:
        return sum(n for k, n in self.items + self.host_items if k == name)

    @property
    def engine_bytes(self) -> int:
        return self.item("engine weights")

    @property
    def sources_bytes(self) -> int:
        """Sources of one rank (on the device), or of the whole worker (host mode)."""
        return self.item("sources")


    @property
    def total(self) -> int:
        """Device bytes planned per rank, KV cache included (on CPU: the worker's RAM)."""
        return sum(n for _, n in self.items)

    def describe(self) -> str:
        """A few lines for `evomerge search --dry-run`."""
        rank = f" per rank (tensor parallel {self.tensor_parallel})" if self.tensor_parallel > 1 else ""
        where = "on the GPU" if self.device == "cuda" else "in RAM"
        head = (f"memory plan{rank}: {_gib(self.device_bytes)} on the GPU, {_gib(self.host_bytes)} of host memory"
                if self.device == "cuda" else f"memory plan{rank}: {_gib(self.device_bytes)} of RAM per worker")
        lines = [head, f"  {where}:"]
        lines += [f"    {name:<22} {_gib(n)}" for name, n in self.items]
        if self.host_items:
            lines.append("  in host memory (pinned; the merge runs there, reload_weights copies each tensor over):")
            lines += [f"    {name:<22} {_gib(n)}" for name, n in self.host_items]
        if self.backend == "vllm":
            lines.append(f"  max_model_len {self.max_model_len}, scoring batches of {self.batch_tokens} tokens")
        lines.append(("  fits: " if self.fits else "  DOES NOT FIT: ") + self.reason)
        return "\n".join(lines)

    def refusal(self) -> UserError:
        """The one-line error of a plan that does not fit (exit 2 before any worker starts)."""
        return UserError("memory plan", f"does not fit: {self.reason}", self.hint)


def plan_memory(backend: str, size: ModelSize, source_copies: float, *, device: str, device_bytes: int,
                host_bytes: int, workers: int = 1, tensor_parallel: int | None = None, max_tensor_parallel: int = 1,
                max_model_len: int = 4096, kv_cache_bytes: int | None = None, method: str = "task_arithmetic",
                n_inputs: int = 2, batch_tokens: int = BATCH_TOKENS, sharded: bool | None = None) -> MemoryPlan:
    """The plan of one worker.

    device "cuda": every worker has `tensor_parallel` GPUs of `device_bytes` each (None: the smallest power of two
    up to `max_tensor_parallel` that fits) and shares `host_bytes` with the others. device "cpu": the workers
    share `host_bytes`, which is also the device. `kv_cache_bytes` caps vLLM's KV cache (default: whatever is left
    on a GPU; 1 GiB on CPU, where the cache competes with the sources for the same RAM). `method` and `n_inputs`
    size the merge kernels' scratch; `sharded` says whether ranks keep only their slices of the sources (default:
    `sharded_sources(method)`).
    """
    if backend not in ("hf", "vllm") or device not in ("cuda", "cpu"):
        raise ValueError(f"unknown backend/device {backend}/{device}")
    host = host_bytes // max(1, workers)
    scratch = scratch_bytes(method, n_inputs, _dtype_name(size.dtype_bytes))
    sharded = sharded_sources(method) if sharded is None else sharded
    prepare = (n_inputs + 1) * size.largest_numel * size.dtype_bytes  # one tensor's inputs, whole
    if device == "cpu":
        return _cpu_plan(backend, size, source_copies, host, host_bytes, workers, tensor_parallel or 1,
                         max_model_len, kv_cache_bytes, batch_tokens, sharded)
    sizes = [tensor_parallel] if tensor_parallel else [1 << k for k in range(8) if 1 << k <= max_tensor_parallel]
    plans = [_gpu_plan(backend, size, source_copies, scratch, device_bytes, host, tp, max_model_len, kv_cache_bytes,
                       batch_tokens, sharded, prepare) for tp in sizes or [1]]
    plan = next((p for p in plans if p.fits), plans[-1])
    if plan.fits:
        return plan
    return _with_way_out(plan, size, source_copies, scratch, device_bytes, host, max_model_len, kv_cache_bytes,
                         batch_tokens, sharded, prepare)


def _dtype_name(nbytes: int) -> str:
    return "float32" if nbytes == 4 else "bfloat16"


def _per_candidate(backend: str, size: ModelSize, tp: int, batch_tokens: int) -> list[tuple[str, int]]:
    """Logits of the largest scoring batch and the activations of one layer (per rank)."""
    b = size.dtype_bytes
    logits = batch_tokens * size.vocab * (b + 8)  # in the dtype, cast to float32, log-softmax in float32
    acts = batch_tokens * (4 * size.hidden + 3 * -(-size.intermediate // tp)) * b
    items = [("logits", logits), ("activations", acts)]
    if backend == "hf":
        items.append(("generation cache", batch_tokens * size.kv_bytes_per_token))
    return items


def _cpu_plan(backend, size, source_copies, host, host_bytes, workers, tp, max_model_len, kv_cache_bytes,
              batch_tokens, sharded) -> MemoryPlan:
    """On CPU a worker's ranks share its RAM: the engine's shards add up to one model, the sources to one set (or
    one per rank when they are not sharded), the stream buffers are per rank."""
    batch_tokens = max(batch_tokens, max_model_len)
    whole_sources = int(size.bytes * source_copies)
    items = [("engine weights", size.bytes), ("sources", whole_sources if sharded else tp * whole_sources)]
    if backend == "vllm":
        items.append(("stream buffers", tp * (size.outside_numel + 2 * size.layer_numel) * size.dtype_bytes))
    items += _per_candidate(backend, size, 1, batch_tokens)
    items.append(("runtime", CPU_RUNTIME * tp))
    kv = 0
    if backend == "vllm":
        kv = max(kv_cache_bytes if kv_cache_bytes is not None else GiB, size.kv_bytes_per_token * max_model_len)
        items.append(("KV cache", kv))
    need = sum(n for _, n in items)
    fits = need <= host
    largest = max(items, key=lambda kv_: kv_[1])
    reason = (f"{_gib(need)} of {_gib(host)} ({workers} worker(s) share {_gib(host_bytes)} of RAM)" if fits
              else f"a worker needs {_gib(need)} of RAM (largest: {largest[0]} {_gib(largest[1])}), its share is "
                   f"{_gib(host)} ({workers} worker(s) share {_gib(host_bytes)})")
    hint = "" if fits else ("use fewer --workers, a smaller dtype, or a GPU" + (
        f"; or a shorter search.max_model_len than {max_model_len}" if max_model_len > 4096 else ""))
    return MemoryPlan(backend, "cpu", host, host, tp, tuple(items), (), "device", kv, max_model_len,
                      batch_tokens, fits, reason, hint)


def _gpu_plan(backend, size, source_copies, scratch, device_bytes, host, tp, max_model_len, kv_cache_bytes,
              batch_tokens, sharded=True, prepare=0) -> MemoryPlan:
    batch_tokens = max(batch_tokens, max_model_len)  # one step takes a whole prompt (no chunked prompt log-probs)
    b = size.dtype_bytes
    engine = -(-size.bytes // tp)
    whole_sources = int(size.bytes * source_copies)
    sources = -(-whole_sources // tp) if sharded else whole_sources  # per rank: its slices, or everything
    fixed = [("CUDA context", CUDA_CONTEXT + (NCCL_RESERVE if tp > 1 else 0)),
             ("allocator margin", int(device_bytes * ALLOCATOR_MARGIN))]
    per_candidate = _per_candidate(backend, size, tp, batch_tokens)
    kv_min = -(-size.kv_bytes_per_token * max_model_len // tp) if backend == "vllm" else 0
    # whole-shaped on every rank (the loader takes checkpoint shapes), + one slice for the column-split tensors
    stream = (size.outside_numel + 2 * size.layer_numel) * b + (-(-size.largest_numel // tp) * b if tp > 1 else 0)
    on_device = [("engine weights", engine), ("sources", sources)]
    if backend == "vllm":
        on_device.append(("stream buffers", stream))
    on_device += [("merge scratch", -(-size.largest_numel // tp) * scratch), ("preparation", prepare)]
    on_device += per_candidate + fixed

    def finish(items: list[tuple[str, int]], host_items: list[tuple[str, int]], on: str) -> MemoryPlan:
        left = device_bytes - sum(n for _, n in items)
        if backend == "hf":
            fits = left >= 0
            reason = (f"model, sources and scoring on the GPU ({_gib(device_bytes - left)} of "
                      f"{_gib(device_bytes)})" if fits else _short(items, device_bytes, left))
            return MemoryPlan(backend, "cuda", device_bytes, host, tp, tuple(items), (), on, 0, max_model_len,
                              batch_tokens, fits, reason,
                              "" if fits else "use --backend vllm (sources in host memory) or a bigger GPU")
        kv = max(0, min(left, kv_cache_bytes) if kv_cache_bytes is not None else left)
        host_need = sum(n for _, n in host_items)
        if left < kv_min:
            fits, reason = False, (f"one {max_model_len}-token sequence's KV cache needs {_gib(kv_min)} per rank, "
                                   + _short(items, device_bytes, left))
        elif host_need > host:
            fits, reason = False, (f"host mode needs {_gib(host_need)} of host memory (largest: sources "
                                   f"{_gib(dict(host_items)['sources'])}), the worker has {_gib(host)}")
        else:
            fits = True
            reason = (f"sources on the GPU; {_gib(kv)} left for the KV cache" if on == "device" else
                      f"sources do not fit next to the engine; {_gib(host_need)} of host memory, {_gib(kv)} left "
                      "for the KV cache")
        items = items + [("KV cache", kv)]
        return MemoryPlan(backend, "cuda", device_bytes, host, tp, tuple(items), tuple(host_items), on, kv,
                          max_model_len, batch_tokens, fits, reason)

    device_plan = finish(on_device, [], "device")
    if device_plan.fits or backend == "hf":
        return device_plan
    # host mode: every rank's sources and stream buffers in pinned host memory; the merge runs on the CPU (chunked
    # kernels: no scratch to speak of) and vLLM's loader copies each streamed tensor's slice to the device
    host_items = [("sources", whole_sources if sharded else tp * whole_sources), ("stream buffers", tp * stream)]
    return finish([("engine weights", engine)] + per_candidate + fixed, host_items, "host")


def _short(items: list[tuple[str, int]], device_bytes: int, left: int) -> str:
    name, n = max(items, key=lambda kv: kv[1])
    return (f"the rest takes {_gib(device_bytes - left)} of the GPU's {_gib(device_bytes)} (largest: {name} "
            f"{_gib(n)})")


def _with_way_out(plan: MemoryPlan, size, source_copies, scratch, device_bytes, host, max_model_len,
                  kv_cache_bytes, batch_tokens, sharded, prepare) -> MemoryPlan:
    """Add the way out to a plan that does not fit: the tensor-parallel size that would fit, a shorter
    max_model_len, more host memory."""
    def fits(tp: int, length: int) -> bool:
        return _gpu_plan(plan.backend, size, source_copies, scratch, device_bytes, host, tp, length, kv_cache_bytes,
                         batch_tokens, sharded, prepare).fits

    ways = []
    if plan.backend == "hf":
        ways.append("use --backend vllm (sources in host memory) or a bigger GPU")
    else:
        tp_fit = next((tp for tp in (2, 4, 8, 16, 32, 64) if tp > plan.tensor_parallel and fits(tp, max_model_len)),
                      None)
        if tp_fit:
            ways.append(f"--tensor-parallel {tp_fit}")
        length = next((n for n in (2048, 1024, 512) if n < max_model_len and fits(plan.tensor_parallel, n)), None)
        if length:
            ways.append(f"a shorter search.max_model_len ({length})")
        if plan.sources_on == "host" and "host memory" in plan.reason:
            ways.append("fewer --workers per node or more host RAM for host mode")
    return MemoryPlan(**{**plan.__dict__, "hint": "way out: " + ("; or ".join(ways) or "a bigger GPU")})


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB // 4 else f"{n / (1 << 20):.1f} MiB"
