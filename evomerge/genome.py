"""Genes <-> the vector the optimizer sees.

The optimizer works in a unit box: coordinate i is z_i = (value_i - low_i) / (high_i - low_i) in [0, 1]. The map is
affine per gene, so it has no mirror optima or flat regions (unlike abs()/clamp() transforms); bounds are kept by
the optimizer's own box handling. Step sizes map to per-coordinate standard deviations step_i / (high_i - low_i).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from evomerge.space import Gene


@dataclass(frozen=True)
class Genome:
    """The codec between named gene values and unit-box vectors."""

    genes: tuple[Gene, ...]

    @property
    def dim(self) -> int:
        return len(self.genes)

    def initial(self) -> list[float]:
        """The initial point in unit coordinates."""
        return [(g.init - g.low) / (g.high - g.low) for g in self.genes]

    def stds(self) -> list[float]:
        """Per-coordinate initial standard deviations in unit coordinates."""
        return [g.step / (g.high - g.low) for g in self.genes]

    def decode(self, z: Sequence[float]) -> dict[str, float]:
        """Unit vector -> gene values (clipped into the bounds against float round-off)."""
        if len(z) != self.dim:
            raise ValueError(f"expected {self.dim} coordinates, got {len(z)}")
        return {g.name: min(g.high, max(g.low, g.low + float(x) * (g.high - g.low))) for g, x in zip(self.genes, z)}

    def encode(self, values: Mapping[str, float]) -> list[float]:
        """Gene values -> unit vector."""
        return [(float(values[g.name]) - g.low) / (g.high - g.low) for g in self.genes]
