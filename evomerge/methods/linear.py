"""Linear merge (mergekit's `linear`): a weighted average of the models themselves, no base."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from evomerge.recipe import TensorCoefficients


def prepare(base: torch.Tensor | None, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Nothing to precompute: the inputs themselves."""
    return list(inputs)


def combine(base: torch.Tensor | None, tensors: Sequence[torch.Tensor], coeffs: TensorCoefficients,
            out: torch.Tensor) -> torch.Tensor:
    """out = sum_i w_i * x_i (divided by sum_i w_i when normalize), accumulated in at least float32."""
    weights = coeffs.weights
    acc_dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    acc = out if out.dtype == acc_dtype else torch.empty_like(out, dtype=acc_dtype)
    torch.mul(tensors[0].to(acc_dtype), weights[0], out=acc)
    for x, w in zip(tensors[1:], weights[1:]):
        acc.add_(x.to(acc_dtype), alpha=w)
    if coeffs.shared.get("normalize", True):
        acc.div_(sum(weights))
    if acc is not out:
        out.copy_(acc)
    return out
