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
from evomerge.methods import chunked

if TYPE_CHECKING:
    from evomerge.recipe import TensorCoefficients

MAGNITUDE, RANDOM, MAGNITUDE_OUTLIERS, DELLA = "magnitude", "random", "magnitude_outliers", "della_magprune"
_RANKS = {MAGNITUDE: sp.descending_ranks, MAGNITUDE_OUTLIERS: sp.ascending_ranks, DELLA: sp.della_rank_norm}


@dataclass(frozen=True)
class Variant:
    """One member of the family: its sparsification (None, or one of the names above) and sign consensus."""

    sparsification: str | None
    consensus: bool

    def prepare(self, base: torch.Tensor | None, inputs: Sequence[torch.Tensor], *, consume: bool = False,
                coeffs: TensorCoefficients | None = None) -> list[torch.Tensor]:
        """[delta_1..delta_n] + [ranking_1..ranking_n] for the magnitude-based sparsifiers; for DARE, given the
        template's coefficients (its seed and tensor name), + [draw codes_1..n] + [L1 norm_1..n] + [seed]."""
        if base is None:
            raise ValueError("generalized task arithmetic needs a base tensor")
        deltas = [x.sub_(base) if consume else x - base for x in inputs]  # [n] x shape
        rank = _RANKS.get(self.sparsification) if self.sparsification else None
        if rank:
            return deltas + [rank(d) for d in deltas]
        if self.sparsification == RANDOM and coeffs is not None:
            seed = int(coeffs.shared["random_seed"])
            codes = [sp.draw_codes(seed, coeffs.tensor, i, d.shape).to(d.device) for i, d in enumerate(deltas)]
            norms = [torch.tensor(chunked.l1_norm(d), dtype=torch.float64) for d in deltas]
            return deltas + codes + norms + [torch.tensor(seed)]
        return deltas

    def combine(self, base: torch.Tensor | None, prepared: Sequence[torch.Tensor], coeffs: TensorCoefficients,
                out: torch.Tensor) -> torch.Tensor:
        """out = base + lambda * merged (sparsified, weighted, sign-elected) task vectors."""
        if base is None:
            raise ValueError("generalized task arithmetic needs a base tensor")
        n = len(coeffs.weights)
        merge = chunked.consensus_sum if self.consensus else chunked.weighted_sum
        args = (list(coeffs.weights), bool(coeffs.shared["normalize"]), float(coeffs.shared["lambda"]), out)
        masks = self._masks(prepared, coeffs)
        if masks is not None:
            # Rank tests and DARE draws are elementwise: done chunk by chunk inside the merge.
            return merge(base, list(prepared[:n]), *args, masks=masks)
        # Otherwise (DELLA, rescaled magnitude pruning) each task vector is sparsified whole first.
        return merge(base, [self._sparse(prepared, i, coeffs) for i in range(n)], *args)

    def _masks(self, prepared: Sequence[torch.Tensor], coeffs: TensorCoefficients) -> list | None:
        """Each input's keep-mask for the chunked kernels (None entries keep everything), or None when the
        sparsification needs whole tensors."""
        n = len(coeffs.weights)
        if self.sparsification is None:
            return [None] * n
        density = coeffs.per_model["density"]
        rescale = bool(coeffs.shared["rescale"])
        if self.sparsification == RANDOM:
            return [self._dare_mask(prepared, i, coeffs, rescale) for i in range(n)]
        if self.sparsification not in (MAGNITUDE, MAGNITUDE_OUTLIERS):
            return None
        numel = coeffs.numel or prepared[0].numel()  # the whole tensor's count, also on a tensor-parallel slice
        if self.sparsification == MAGNITUDE:
            windows = [sp.magnitude_window(numel, density[i]) for i in range(n)]
        else:
            windows = [sp.outliers_window(numel, density[i], coeffs.per_model["gamma"][i]) for i in range(n)]
        if rescale and any(w is not None and w[1] > 0 for w in windows):
            return None
        return [None if w is None else chunked.RankMask(prepared[n + i], *w) for i, w in enumerate(windows)]

    @staticmethod
    def _dare_mask(prepared: Sequence[torch.Tensor], i: int, coeffs: TensorCoefficients,
                   rescale: bool) -> chunked.CodeMask | None:
        """Input i's DARE mask: keep each element with probability `density`, then (rescale) restore the L1 norm
        (mergekit's choice; the DARE paper divides by density instead)."""
        n = len(coeffs.weights)
        density = coeffs.per_model["density"][i]
        if density >= 1:
            return None
        delta = prepared[i]
        seed = int(coeffs.shared["random_seed"])
        cached = len(prepared) == 3 * n + 1 and int(prepared[-1]) == seed
        codes = prepared[n + i] if cached else sp.draw_codes(seed, coeffs.tensor, i, delta.shape).to(delta.device)
        mask = chunked.CodeMask(codes, sp.code_threshold(density, delta.dtype))
        if not rescale:
            return mask
        before = float(prepared[2 * n + i]) if cached else chunked.l1_norm(delta)
        scale = sp.rescale_factor(before, chunked.l1_norm(delta, mask), delta.dtype)
        return chunked.CodeMask(codes, mask.below, scale)

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

        if method == DELLA:
            return sp.della_magprune(delta, prepared[n + i], density, coeffs.per_model["epsilon"][i], rescale, draw)
        raise ValueError(f"unknown sparsification {method!r}")


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
