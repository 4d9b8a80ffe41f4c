"""Merge kernels: pure torch functions on any device and dtype, in a plain dict keyed by method name.

Each method is split in two so that the same arithmetic serves both merge modes:
- `prepare(base, inputs)` runs once per tensor (per run, in resident mode): e.g. task vectors `x - base`;
- `combine(base, prepared, weights, shared, out)` runs once per candidate and writes into a preallocated `out`.
A disk merge calls both in a row; a resident worker calls `prepare` at start-up and `combine` per candidate, so the
exported model is bit-for-bit the model that was scored. Arithmetic order follows mergekit 0.1.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

Prepare = Callable[[torch.Tensor | None, Sequence[torch.Tensor]], list[torch.Tensor]]
Combine = Callable[[torch.Tensor | None, Sequence[torch.Tensor], Sequence[float], Mapping[str, Any], torch.Tensor],
                   torch.Tensor]


@dataclass(frozen=True)
class MergeMethod:
    """A merge method as two pure kernels (see the module docstring)."""

    name: str
    needs_base: bool
    prepare: Prepare
    combine: Combine


def _task_vectors(base: torch.Tensor | None, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    assert base is not None
    return [x - base for x in inputs]  # [n] x shape


def _task_arithmetic(base: torch.Tensor | None, deltas: Sequence[torch.Tensor], weights: Sequence[float],
                     shared: Mapping[str, Any], out: torch.Tensor) -> torch.Tensor:
    """out = base + lambda * sum_i w_i * delta_i  (divided by sum_i w_i when normalize)."""
    assert base is not None
    torch.mul(deltas[0], weights[0], out=out)
    for delta, w in zip(deltas[1:], weights[1:]):
        out.add_(delta, alpha=w)
    if shared.get("normalize"):
        total = sum(weights)
        if abs(total) >= 1e-8:  # mergekit leaves near-zero divisors at 1
            out.div_(total)
    lam = shared.get("lambda", 1.0)
    if lam != 1:
        out.mul_(lam)
    return out.add_(base)


def _identity(base: torch.Tensor | None, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return list(inputs)


def _linear(base: torch.Tensor | None, tensors: Sequence[torch.Tensor], weights: Sequence[float],
            shared: Mapping[str, Any], out: torch.Tensor) -> torch.Tensor:
    """out = sum_i w_i * x_i (divided by sum_i w_i when normalize), accumulated in at least float32."""
    acc_dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    acc = out if out.dtype == acc_dtype else torch.empty_like(out, dtype=acc_dtype)
    torch.mul(tensors[0].to(acc_dtype), weights[0], out=acc)
    for x, w in zip(tensors[1:], weights[1:]):
        acc.add_(x.to(acc_dtype), alpha=w)
    if shared.get("normalize", True):
        acc.div_(sum(weights))
    if acc is not out:
        out.copy_(acc)
    return out


METHODS: dict[str, MergeMethod] = {
    "task_arithmetic": MergeMethod("task_arithmetic", True, _task_vectors, _task_arithmetic),
    "linear": MergeMethod("linear", False, _identity, _linear),
}
