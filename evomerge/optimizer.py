"""Optimizers behind one ask/tell face, in the unit box of genome.py. Higher fitness is better.

CMA-ES is pycma's, with its own box handling (bounds [0, 1]) and per-coordinate initial deviations from the genes'
step sizes. pycma minimizes, so it is told the negated fitness; failed candidates are told the worst value.
"""

from __future__ import annotations

from typing import Sequence

FAILED_LOSS = 1e30  # what a failed candidate is worth to a minimizer: worse than anything real


class CmaEs:
    """pycma's CMA-ES; `seed` fixes every candidate (same seed, same asks for the same tells)."""

    def __init__(self, x0: Sequence[float], stds: Sequence[float], *, popsize: int, seed: int,
                 sigma0: float = 1.0) -> None:
        import warnings

        with warnings.catch_warnings():  # pycma warns when matplotlib is absent; plotting is not its job here
            warnings.simplefilter("ignore")
            import cma

        opts = {"bounds": [0.0, 1.0], "popsize": popsize, "seed": seed + 1,  # pycma treats seed 0 as "random"
                "CMA_stds": list(stds), "verbose": -9, "verb_log": 0, "verb_disp": 0}
        self._es = cma.CMAEvolutionStrategy(list(x0), sigma0, opts)

    def ask(self) -> list[list[float]]:
        """One generation of candidates (unit coordinates, inside the box)."""
        return [list(map(float, x)) for x in self._es.ask()]

    def inject(self, xs: Sequence[Sequence[float]]) -> None:
        """Make the next asks start with these points (e.g. seed candidates), used as given."""
        import numpy as np

        self._es.inject([np.asarray(x, dtype=float) for x in xs], force=True)

    def tell(self, xs: Sequence[Sequence[float]], fitness: Sequence[float | None]) -> None:
        """Report the generation's fitness (None for failed candidates)."""
        import numpy as np

        losses = [FAILED_LOSS if f is None else -float(f) for f in fitness]
        self._es.tell([np.asarray(x) for x in xs], losses)
