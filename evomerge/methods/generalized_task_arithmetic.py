"""mergekit's generalized task arithmetic family: task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs,
breadcrumbs_ties, della, della_linear.

Every member merges task vectors delta_i = x_i - base the same way, and differs in two switches:
- sparsification of each delta_i before weighting: none, magnitude (TIES: keep the largest), random (DARE),
  magnitude_outliers (breadcrumbs: drop the largest gamma and the smallest), della_magprune (DELLA: random with a
  keep probability rising with magnitude);
- sign consensus (the *_ties methods and della): per element, only the weighted deltas whose sign agrees with the
  sign of their sum are summed, and `normalize` divides by the weights of those deltas only.
Then out = base + lambda * (sum / divisor if normalize). Arithmetic order follows mergekit 0.1.5.

`prepare` returns the task vectors, followed (for the magnitude-based sparsifiers) by one ranking per input;
`combine` sparsifies with the candidate's density, gamma, epsilon and seed, and merges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from evomerge.methods import sparsify as sp

if TYPE_CHECKING:
    from evomerge.recipe import TensorCoefficients

MAGNITUDE, RANDOM, MAGNITUDE_OUTLIERS, DELLA = "magnitude", "random", "magnitude_outliers", "della_magprune"
_RANKS = {MAGNITUDE: sp.descending_ranks, MAGNITUDE_OUTLIERS: sp.ascending_ranks, DELLA: sp.della_rank_norm}


@dataclass(frozen=True)
class Variant:
    """One member of the family: its sparsification (None, or one of the names above) and sign consensus."""

    sparsification: str | None
    consensus: bool

    def prepare(self, base: torch.Tensor | None, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """[delta_1..delta_n] + [ranking_1..ranking_n] for the magnitude-based sparsifiers."""
        if base is None:
            raise ValueError("generalized task arithmetic needs a base tensor")
        deltas = [x - base for x in inputs]  # [n] x shape
        rank = _RANKS.get(self.sparsification) if self.sparsification else None
        return deltas + ([rank(d) for d in deltas] if rank else [])

    def combine(self, base: torch.Tensor | None, prepared: Sequence[torch.Tensor], coeffs: TensorCoefficients,
                out: torch.Tensor) -> torch.Tensor:
        """out = base + lambda * merged (sparsified, weighted, sign-elected) task vectors."""
        if base is None:
            raise ValueError("generalized task arithmetic needs a base tensor")
        n = len(coeffs.weights)
        if self.consensus:
            return self._consensus(base, [self._sparse(prepared, i, coeffs) for i in range(n)], coeffs, out)
        # Without consensus a running sum needs one task vector at a time, never all n.
        weights = coeffs.weights
        torch.mul(self._sparse(prepared, 0, coeffs), weights[0], out=out)
        for i in range(1, n):
            out.add_(self._sparse(prepared, i, coeffs), alpha=weights[i])
        if coeffs.shared["normalize"]:
            total = sum(weights)
            if abs(total) >= 1e-8:  # mergekit leaves near-zero divisors at 1
                out.div_(total)
        lam = coeffs.shared["lambda"]
        if lam != 1:
            out.mul_(lam)
        return out.add_(base)

    def _sparse(self, prepared: Sequence[torch.Tensor], i: int, coeffs: TensorCoefficients) -> torch.Tensor:
        """Input i's task vector, sparsified with this candidate's parameters (the prepared tensor itself when
        nothing is dropped)."""
        n = len(coeffs.weights)
        delta = prepared[i]
        method = self.sparsification
        if method is None:
            return delta
        density, rescale = coeffs.per_model["density"][i], bool(coeffs.shared["rescale"])
        if method == MAGNITUDE:
            return sp.magnitude(delta, prepared[n + i], density, rescale)
        if method == MAGNITUDE_OUTLIERS:
            return sp.magnitude_outliers(delta, prepared[n + i], density, coeffs.per_model["gamma"][i], rescale)

        def draw() -> torch.Tensor:
            u = sp.uniform(int(coeffs.shared["random_seed"]), coeffs.tensor, i, delta.shape)
            return u.to(delta.device)

        if method == RANDOM:
            return sp.bernoulli(delta, density, rescale, draw)
        if method == DELLA:
            return sp.della_magprune(delta, prepared[n + i], density, coeffs.per_model["epsilon"][i], rescale, draw)
        raise ValueError(f"unknown sparsification {method!r}")

    @staticmethod
    def _consensus(base: torch.Tensor, sparse: list[torch.Tensor], coeffs: TensorCoefficients,
                   out: torch.Tensor) -> torch.Tensor:
        """TIES sign election (mergekit's get_mask with method "sum"), then the masked, normalized sum."""
        n = len(sparse)
        stack = torch.empty((n, *base.shape), dtype=base.dtype, device=base.device)  # [n, *shape]
        for i, s in enumerate(sparse):
            stack[i] = s
        del sparse
        weights = torch.tensor(coeffs.weights, dtype=stack.dtype, device=stack.device).view(n, *[1] * base.ndim)
        stack.mul_(weights)
        # Signs are -1, 0 or 1 in any dtype, so int8 (mergekit's int8_mask) gives the same mask with less memory.
        majority = (stack.sum(dim=0) >= 0).to(torch.int8) * 2 - 1  # [*shape]
        mask = stack.sign().to(torch.int8) == majority  # [n, *shape]; zeros never vote
        stack.mul_(mask)
        mixed = stack.sum(dim=0)
        del stack
        if coeffs.shared["normalize"]:
            divisor = (weights * mask).sum(dim=0)  # per element: the weights of the agreeing inputs
            divisor[divisor == 0] = 1
            mixed /= divisor
        lam = coeffs.shared["lambda"]
        if lam != 1:
            mixed *= lam
        return torch.add(base, mixed, out=out)


VARIANTS: dict[str, Variant] = {
    "task_arithmetic": Variant(None, consensus=False),
    "ties": Variant(MAGNITUDE, consensus=True),
    "dare_ties": Variant(RANDOM, consensus=True),
    "dare_linear": Variant(RANDOM, consensus=False),
    "breadcrumbs": Variant(MAGNITUDE_OUTLIERS, consensus=False),
    "breadcrumbs_ties": Variant(MAGNITUDE_OUTLIERS, consensus=True),
    "della": Variant(DELLA, consensus=True),
    "della_linear": Variant(DELLA, consensus=False),
}
