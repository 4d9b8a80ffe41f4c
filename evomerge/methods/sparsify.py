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
seeded with a hash of (s, T, i) (`uniform`). A mask then depends on nothing but its seed, tensor, input position and
probabilities: the same in disk and resident merges, whatever the other tensors' coefficients, and nested across
densities (a higher density keeps a superset), which keeps the landscape the optimizer sees smooth.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch

_RESCALE_EPS = 1e-7  # mergekit's rescaled_masked_tensor tolerance
Uniforms = Callable[[], torch.Tensor]  # draws this input's float32 uniforms, shaped like the task vector


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype mergekit's random sparsifiers compute in on CPU: bfloat16 stays, everything else is float32."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def uniform(seed: int, tensor: str, index: int, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The keyed float32 uniforms in [0, 1) of input `index` for tensor `tensor` under `seed` (on CPU)."""
    key = hashlib.blake2b(f"{seed}\0{tensor}\0{index}".encode(), digest_size=8).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(key, "little") & (2**63 - 1))
    return torch.rand(tuple(shape), generator=generator, dtype=torch.float32)


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


def magnitude(delta: torch.Tensor, ranks: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """Keep the max(1, int(density * n)) largest magnitudes (TIES)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    return _rescaled(delta, (ranks < k).view(delta.shape), rescale)


def magnitude_outliers(delta: torch.Tensor, ranks: torch.Tensor, density: float, gamma: float,
                       rescale: bool) -> torch.Tensor:
    """Drop the int(gamma * n) largest magnitudes, then the smallest, keeping int(density * n) (breadcrumbs).
    Fewer outliers are dropped when density + gamma > 1; density >= 1 drops nothing at all (mergekit's rule)."""
    if density >= 1:
        return delta
    n = delta.numel()
    target_n = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target_n - n_top)
    return _rescaled(delta, ((ranks >= n_bot) & (ranks < n_bot + target_n)).view(delta.shape), rescale)


def bernoulli(delta: torch.Tensor, density: float, rescale: bool, draw: Uniforms) -> torch.Tensor:
    """Keep each element with probability `density` (DARE). `rescale` restores the L1 norm (mergekit's choice;
    the DARE paper divides by density instead)."""
    if density >= 1:
        return delta
    work = work_dtype(delta.dtype)
    p = float(torch.tensor(density, dtype=work))  # mergekit draws against full_like(density, dtype=work)
    mask = draw() < p
    return _rescaled(delta.to(work), mask, rescale).to(delta.dtype)


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
