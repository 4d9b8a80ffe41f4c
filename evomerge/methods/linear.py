"""Linear merge (mergekit's `linear`): a weighted average of the models themselves, no base."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from evomerge.methods.chunked import linear_sum

if TYPE_CHECKING:
    from evomerge.recipe import TensorCoefficients


def prepare(base: torch.Tensor | None, inputs: Sequence[torch.Tensor], *, consume: bool = False,
            coeffs: TensorCoefficients | None = None) -> list[torch.Tensor]:
    """Nothing to precompute: the inputs themselves."""
    return list(inputs)


def combine(base: torch.Tensor | None, tensors: Sequence[torch.Tensor], coeffs: TensorCoefficients,
            out: torch.Tensor) -> torch.Tensor:
    """out = sum_i w_i * x_i (divided by sum_i w_i when normalize), accumulated in float32 (mergekit's order)."""
    return linear_sum(list(tensors), list(coeffs.weights), bool(coeffs.shared.get("normalize", True)), out)
