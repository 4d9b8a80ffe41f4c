"""Sparsification of task vectors, mergekit 0.1.5's `sparsify.py` split into what a candidate changes and what it
does not.

A task vector's magnitude ranking does not depend on any coefficient, so the sort that mergekit's `magnitude`,
`magnitude_outliers` and `della_magprune` run on every call is done once, in `prepare` (`*_ranks`); per candidate
only elementwise work is left (a rank below k is kept). This costs one extra tensor per input (int32 ranks, or the
della rank in the working dtype) in a resident merge, and saves a sort per tensor and candidate.

Discrete decisions do not depend on the device: ranks come from mergekit's own sort calls run on CPU (so ties break
as they do in mergekit on CPU), and random draws from a CPU generator, moved to the tensor's device afterwards. A
merge on an accelerator may still differ from a CPU merge in the last bits (reduction order), never in a mask.

Randomness. mergekit 0.1.5 has no seed in the recipe: `mergekit-yaml --random-seed N` seeds the process-wide RNGs
(transformers' `set_seed`), and each Bernoulli draw consumes the global torch generator in whatever order the
executor runs tensors, so mergekit's masks cannot be reproduced outside a mergekit run, and a DARE/DELLA merge is
exact to mergekit only up to its random draws. Ours are keyed: element j of input i's mask for tensor T under the
recipe's `random_seed` s keeps the element when u_j < p_j, u being the float32 stream of a CPU `torch.Generator`
seeded with a hash of (s, T, i), cut to 16 bits (u = k / 65536: `draw_codes`, `uniform`; a probability's resolution
of 1/65536 changes nothing a merge can tell, and two bytes per element let a resident merge keep its draws instead
of drawing again for every candidate). A mask then depends on nothing but its seed, tensor, input position and
probabilities: the same in disk and resident merges, whatever the other tensors' coefficients, and nested across
densities (a higher density keeps a superset), which keeps the landscape the optimizer sees smooth.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable

import torch

_RESCALE_EPS = 1e-7  # mergekit's rescaled_masked_tensor tolerance
Uniforms = Callable[[], torch.Tensor]  # draws this input's float32 uniforms, shaped like the task vector


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype mergekit's random sparsifiers compute in on CPU: bfloat16 stays, everything else is float32."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


CODE_BITS = 16  # a draw is one of 2**16 equally likely values: u = k / 65536


def draw_codes(seed: int, tensor: str, index: int, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The keyed draws of input `index` for tensor `tensor` under `seed`, as int16 codes k - 32768 (k uniform in
    [0, 65536)), on CPU. Two bytes per element, so a resident merge can keep them."""
    key = hashlib.blake2b(f"{seed}\0{tensor}\0{index}".encode(), digest_size=8).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(key, "little") & (2**63 - 1))
    u = torch.rand(tuple(shape), generator=generator, dtype=torch.float32)
    return u.mul_(2**CODE_BITS).floor_().sub_(2 ** (CODE_BITS - 1)).to(torch.int16)


def uniform(seed: int, tensor: str, index: int, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The same draws as float32 uniforms u = k / 65536 in [0, 1) (exact): element j is kept when u_j < p_j."""
    codes = draw_codes(seed, tensor, index, shape)
    return codes.to(torch.float32).add_(2 ** (CODE_BITS - 1)).div_(2**CODE_BITS)


def code_threshold(density: float, dtype: torch.dtype) -> int:
    """The code below which a DARE draw keeps its element: u < p  <=>  k < ceil(p * 65536), with p the density in
    mergekit's working dtype (exact: p * 65536 is exact in double precision)."""
    p = float(torch.tensor(density, dtype=work_dtype(dtype)))
    return math.ceil(p * 2**CODE_BITS) - 2 ** (CODE_BITS - 1)


def rescale_factor(before: float, after: float, dtype: torch.dtype) -> float | None:
    """mergekit's L1 rescale `before / after` in the working dtype, or None when either norm is below its eps."""
    work = work_dtype(dtype)
    b, a = torch.tensor(before, dtype=work), torch.tensor(after, dtype=work)
    if b < _RESCALE_EPS or a < _RESCALE_EPS:
        return None
    return float(b / a)


# --- prepare: coefficient-free rankings (computed on CPU, returned on the task vector's device) ---------------------
def _inverse(order: torch.Tensor) -> torch.Tensor:
    """rank[order[j]] = j, as int32 where it fits."""
    dtype = torch.int32 if order.numel() < 2**31 else torch.int64
    rank = torch.empty(order.numel(), dtype=dtype)
    rank[order] = torch.arange(order.numel(), dtype=dtype)
    return rank


def descending_ranks(delta: torch.Tensor) -> torch.Tensor:
    """Flat rank of each element in mergekit's `argsort(|delta|, descending=True)` (magnitude pruning)."""
    w = delta.detach().abs().reshape(-1).to("cpu").float()
    return _inverse(torch.argsort(w, descending=True)).to(delta.device)


def ascending_ranks(delta: torch.Tensor) -> torch.Tensor:
    """Flat rank of each element in mergekit's `sort(|delta|).indices` (magnitude_outliers / breadcrumbs)."""
    w = delta.detach().abs().reshape(-1).to("cpu").float()
    return _inverse(torch.sort(w, descending=False).indices).to(delta.device)


def della_rank_norm(delta: torch.Tensor) -> torch.Tensor:
    """mergekit's della_magprune row-wise rank in [0, 1] (0 = smallest magnitude of its row), shaped [rows, cols]
    (a 1-D tensor is one row), in `work_dtype`."""
    work = work_dtype(delta.dtype)
    x = delta.detach().to("cpu")
    if x.ndim < 2:
        x = x.unsqueeze(0)
    sorted_indices = torch.argsort(x.abs(), dim=1, descending=False)
    ranks = sorted_indices.argsort(dim=1).to(work) + 1
    min_ranks = ranks.min(dim=1, keepdim=True).values
    max_ranks = ranks.max(dim=1, keepdim=True).values
    return ((ranks - min_ranks) / (max_ranks - min_ranks)).clamp(0, 1).to(delta.device)


# --- combine: per-candidate masks -----------------------------------------------------------------------------------
def _rescaled(tensor: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    """tensor * mask, scaled back to the tensor's L1 norm when `rescale` (mergekit's RescaleNorm.l1)."""
    masked = tensor * mask
    if not rescale:
        return masked
    before, after = tensor.abs().sum(), masked.abs().sum()
    if before < _RESCALE_EPS or after < _RESCALE_EPS:
        return masked
    return masked * (before / after)


def magnitude_window(numel: int, density: float) -> tuple[int, int] | None:
    """The ranks (descending magnitude) TIES keeps: [0, max(1, int(density * n))); None keeps everything."""
    if density >= 1:
        return None
    if density <= 0 or numel == 0:
        return (0, 0)
    return (0, max(1, int(density * numel)))


def outliers_window(numel: int, density: float, gamma: float) -> tuple[int, int] | None:
    """The ranks (ascending magnitude) breadcrumbs keeps: drop the int(gamma * n) largest, then the smallest, keeping
    int(density * n); fewer outliers are dropped when density + gamma > 1; density >= 1 keeps everything (None)."""
    if density >= 1:
        return None
    target_n = int(density * numel)
    n_top = int(gamma * numel)
    n_bot = max(0, numel - target_n - n_top)
    return (n_bot, n_bot + target_n)


def in_window(ranks: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """The keep-mask of a rank window (bool, shaped like `ranks`)."""
    lo, hi = window
    keep = ranks < hi
    if lo > 0:
        keep &= ranks >= lo
    return keep


def magnitude(delta: torch.Tensor, ranks: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """Keep the max(1, int(density * n)) largest magnitudes (TIES)."""
    window = magnitude_window(delta.numel(), density)
    if window is None:
        return delta
    if window[1] == 0:
        return torch.zeros_like(delta)
    return _rescaled(delta, in_window(ranks, window).view(delta.shape), rescale)


def magnitude_outliers(delta: torch.Tensor, ranks: torch.Tensor, density: float, gamma: float,
                       rescale: bool) -> torch.Tensor:
    """Drop the int(gamma * n) largest magnitudes, then the smallest, keeping int(density * n) (breadcrumbs)."""
    window = outliers_window(delta.numel(), density, gamma)
    if window is None:
        return delta
    return _rescaled(delta, in_window(ranks, window).view(delta.shape), rescale)


def della_magprune(delta: torch.Tensor, rank_norm: torch.Tensor, density: float, epsilon: float, rescale: bool,
                   draw: Uniforms) -> torch.Tensor:
    """Keep each element with probability density - epsilon + 2 * epsilon * (its row-wise magnitude rank) (DELLA)."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError("epsilon must be chosen such that density +/- epsilon is in (0, 1)")
    work = work_dtype(delta.dtype)
    x = delta if delta.ndim >= 2 else delta.unsqueeze(0)
    probs = (density - epsilon) + rank_norm * 2 * epsilon
    mask = draw().view(x.shape) < probs
    return _rescaled(x.to(work), mask, rescale).to(delta.dtype).reshape(delta.shape)
