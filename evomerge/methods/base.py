"""The shape every merge kernel has: `prepare` once per tensor, `combine` once per candidate (see the package doc)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

if TYPE_CHECKING:
    from evomerge.recipe import TensorCoefficients

# prepare(base, inputs, *, consume=False, coeffs=None) -> prepared tensors (their layout is the method's own business)
Prepare = Callable[..., list[torch.Tensor]]
# combine(base, prepared, coefficients, out) -> out, written in place
Combine = Callable[[torch.Tensor | None, Sequence[torch.Tensor], "TensorCoefficients", torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MergeMethod:
    """A merge method as two pure kernels.

    `prepare(base, inputs)` gets the base tensor (None for methods without one) and the non-base inputs in recipe
    order, all of one dtype and device, and returns what `combine` needs whatever the coefficients are. With
    `consume=True` the caller hands the input tensors over and `prepare` may overwrite them (a disk merge does, so
    that task vectors take the inputs' memory instead of doubling it); the result is the same bit for bit. `coeffs`
    (the template recipe's coefficients for this tensor) lets a method precompute what depends only on settings a
    search does not vary (DARE's draws depend on the seed and the tensor name); `combine` checks them.
    `combine(base, prepared, coeffs, out)` merges one candidate's coefficients (`evomerge.recipe.TensorCoefficients`
    for this tensor) into `out` (same shape, dtype and device as base) and returns it. It modifies no input.
    """

    name: str
    needs_base: bool
    prepare: Prepare
    combine: Combine
