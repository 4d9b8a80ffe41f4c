"""Tensor parallelism: which slice of each checkpoint tensor one vLLM rank keeps, and which merges can be done on
slices.

vLLM splits every weight of a decoder over its tensor-parallel ranks when it loads it (vLLM 0.16-0.32:
`model_executor/layers/linear.py`, `vocab_parallel_embedding.py`, `parameter.py`). A rank's loader narrows the
checkpoint tensor it is handed to the rows or columns below, so a rank only ever reads that slice:

    tensor                          split                 rank r of tp keeps
    q_proj (weight, bias)           output dim (0)        heads [r*H/tp, (r+1)*H/tp)        (fused into qkv_proj:
    k_proj, v_proj (weight, bias)   output dim (0)        KV >= tp: heads [r*KV/tp, ...)      each part on its own)
                                                          KV <  tp: head r // (tp/KV)  (each KV head replicated)
    gate_proj, up_proj              output dim (0)        rows [r*I/tp, (r+1)*I/tp)         (fused into gate_up_proj)
    o_proj, down_proj (weight)      input dim (1)         columns [r*n/tp, (r+1)*n/tp)
    embed_tokens, lm_head           vocabulary (0)        rows [r*P/tp, (r+1)*P/tp) of the vocabulary padded to P,
                                                          a multiple of 64, cut to the real rows
    everything else (norms, q_norm/k_norm, row-parallel biases)   the whole tensor (replicated)

H, KV: attention and key/value heads, I: intermediate size (config.json). The table holds for the built-in
"decoder" family (Llama, Mistral, Qwen2, Qwen3, Gemma 1-3 text). Every other tensor, and every tensor of another
family (a multimodal checkpoint's vision tower splits by its own head counts), is kept whole: handing a rank the
whole tensor is always right, since its loader cuts it. A tensor whose shape does not match the config is kept
whole too.

A merge may run on slices when every candidate's arithmetic is elementwise once `prepare` has seen the whole tensor
(`ResidentMerge` prepares whole tensors, then keeps the slices): linear, task arithmetic, slerp (its angle is
computed whole), TIES and breadcrumbs without rescaling (their magnitude ranks are global, computed whole, and the
kept count uses the whole tensor's element count: `TensorCoefficients.numel`), DARE without rescaling (the draws
of the whole tensor, drawn once and sliced). Rescaling (DARE's and DELLA's default) divides by the L1 norm of the
whole masked task vector, which changes with every candidate's densities, and DELLA draws per candidate over the
whole tensor: those merges keep whole tensors on every rank.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import torch

    from evomerge.architecture import Family

VOCAB_PADDING = 64  # vLLM's DEFAULT_VOCAB_PADDING_SIZE
SHARDABLE_FAMILIES = ("decoder",)

_QKV = re.compile(r"\.self_attn\.([qkv])_proj\.(weight|bias)$")
_COLUMN = re.compile(r"\.mlp\.(gate|up)_proj\.(weight|bias)$")
_ROW = re.compile(r"\.(self_attn\.o_proj|mlp\.down_proj)\.weight$")
_VOCAB = re.compile(r"(?:^|\.)(embed_tokens|lm_head)\.weight$")


@dataclass(frozen=True)
class Cut:
    """The part of a tensor one rank keeps: indices [start, stop) of dimension `dim`."""

    dim: int
    start: int
    stop: int

    def of(self, t: "torch.Tensor") -> "torch.Tensor":
        """The slice of `t` (a view)."""
        return t.narrow(self.dim, self.start, self.stop - self.start)

    def shape(self, whole: tuple[int, ...]) -> tuple[int, ...]:
        """The slice's shape for a tensor of shape `whole`."""
        return tuple(self.stop - self.start if d == self.dim else n for d, n in enumerate(whole))


# rules(text config, tensor name, whole shape, rank, world) -> the rank's cut, or None to keep the tensor whole
Rules = Callable[[Mapping[str, Any], str, tuple[int, ...], int, int], "Cut | None"]


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


def pad_vocab(rows: int, pad_to: int = VOCAB_PADDING) -> int:
    """vLLM's padded vocabulary size."""
    return -(-rows // pad_to) * pad_to


def vllm_cut(config: Mapping[str, Any], name: str, shape: tuple[int, ...], rank: int, world: int) -> Cut | None:
    """The slice of checkpoint tensor `name` that vLLM's loader of rank `rank` of `world` reads (see the module
    docstring), or None when the rank reads it whole."""
    if world == 1 or not shape:
        return None
    cfg = _text_config(config)
    heads = cfg.get("num_attention_heads")
    hidden = cfg.get("hidden_size")
    if not isinstance(heads, int) or not isinstance(hidden, int) or heads < 1:
        return None
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    m = _QKV.search(name)
    if m:
        if heads % world:
            return None
        if m.group(1) == "q":
            if shape[0] != heads * head_dim:
                return None
            rows = heads // world * head_dim
            return Cut(0, rank * rows, (rank + 1) * rows)
        if shape[0] != kv * head_dim:
            return None
        if world >= kv:  # one head per rank, each head replicated over world // kv ranks
            if world % kv:
                return None
            group = rank // (world // kv)
            return Cut(0, group * head_dim, (group + 1) * head_dim)
        if kv % world:
            return None
        rows = kv // world * head_dim
        return Cut(0, rank * rows, (rank + 1) * rows)
    if _COLUMN.search(name):
        inter = cfg.get("intermediate_size")
        if shape[0] != inter or inter % world:
            return None
        rows = inter // world
        return Cut(0, rank * rows, (rank + 1) * rows)
    if _ROW.search(name):
        if len(shape) != 2 or shape[1] % world:
            return None
        cols = shape[1] // world
        return Cut(1, rank * cols, (rank + 1) * cols)
    if _VOCAB.search(name):
        vocab = cfg.get("vocab_size")
        if shape[0] != vocab:
            return None
        per_rank = pad_vocab(vocab) // world
        if pad_vocab(vocab) % world:
            return None
        start, stop = min(rank * per_rank, vocab), min((rank + 1) * per_rank, vocab)
        return Cut(0, start, stop)
    return None


@dataclass(frozen=True)
class Shard:
    """One tensor-parallel rank: its index, the number of ranks, and the rules that say which slice of each tensor
    it keeps (default: vLLM's split)."""

    rank: int
    world: int
    rules: Rules = vllm_cut

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} of {self.world}")

    def cut(self, config: Mapping[str, Any], family: "Family", name: str, shape: tuple[int, ...]) -> Cut | None:
        """This rank's slice of tensor `name` (None: the whole tensor)."""
        if self.world == 1 or family.name not in SHARDABLE_FAMILIES:
            return None
        return self.rules(config, name, tuple(shape), self.rank, self.world)


def sliceable(method: str, shared: Mapping[str, Any], draws_kept: bool) -> bool:
    """Whether every candidate of `method` (with the template's method-wide settings `shared`) can be merged on
    slices of the prepared tensors and equal the slices of the whole merge, bit for bit (see the module docstring).
    `draws_kept`: DARE's draws were made once at preparation (ResidentMerge's keep_draws)."""
    if method in ("linear", "task_arithmetic", "slerp"):
        return True
    if method in ("ties", "breadcrumbs", "breadcrumbs_ties"):
        return not shared.get("rescale", False)
    if method in ("dare_ties", "dare_linear"):
        return draws_kept and not shared.get("rescale", False)
    return False  # della, della_linear; and any method added later until it is checked here
