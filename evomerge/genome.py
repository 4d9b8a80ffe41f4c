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


@dataclass(frozen=True)
class TiedGenome:
    """Genes tied in groups: one optimizer coordinate per group (a bounded `Gene` of its own), every member gene
    taking the group's value (clipped into its own bounds). `genes` are the members, so values decode and encode
    in the full space's names: a tied point is an ordinary point of the untied genome (coarse to fine's uniform
    stage, stages.py). Encoding averages a group's members."""

    genes: tuple[Gene, ...]
    groups: tuple[Gene, ...]
    members: tuple[tuple[int, ...], ...]  # indices into `genes`, one tuple per group; together every gene once

    @property
    def dim(self) -> int:
        return len(self.groups)

    def initial(self) -> list[float]:
        return Genome(self.groups).initial()

    def stds(self) -> list[float]:
        return Genome(self.groups).stds()

    def decode(self, z: Sequence[float]) -> dict[str, float]:
        """Unit vector (one coordinate per group) -> every member gene's value."""
        group_values = Genome(self.groups).decode(z)
        out: dict[str, float] = {}
        for group, idx in zip(self.groups, self.members):
            for i in idx:
                g = self.genes[i]
                out[g.name] = min(g.high, max(g.low, group_values[group.name]))
        return {g.name: out[g.name] for g in self.genes}

    def encode(self, values: Mapping[str, float]) -> list[float]:
        """Member values -> unit vector (each group's mean)."""
        means = {group.name: sum(float(values[self.genes[i].name]) for i in idx) / len(idx)
                 for group, idx in zip(self.groups, self.members)}
        return Genome(self.groups).encode(means)
