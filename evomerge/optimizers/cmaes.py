"""pycma's CMA-ES in the unit box, with optional IPOP restarts (population doubled at each restart)."""

from __future__ import annotations

from typing import Sequence

FAILED_LOSS = 1e30  # what a failed candidate is worth to a minimizer: worse than anything real


class CmaEs:
    """pycma's CMA-ES; `seed` fixes every candidate (same seed, same asks for the same tells)."""

    multi_objective = False

    def __init__(self, x0: Sequence[float], stds: Sequence[float], *, popsize: int, seed: int,
                 sigma0: float = 1.0, restarts: int = 0) -> None:
        self.x0, self.stds, self.sigma0, self.seed = list(x0), list(stds), sigma0, seed
        self.popsize, self.restarts_left, self.restarts_done = popsize, restarts, 0
        self._es = self._new(popsize)
        self._asked_by: dict[tuple[float, ...], int] = {}  # point -> the restart that asked it
        self._told_since_ask = False

    def _new(self, popsize: int):
        import warnings

        with warnings.catch_warnings():  # pycma warns when matplotlib is absent; plotting is not its job here
            warnings.simplefilter("ignore")
            import cma

        opts = {"bounds": [0.0, 1.0], "popsize": popsize,
                "seed": self.seed * 1000 + self.restarts_done + 1,  # pycma treats seed 0 as "random"
                "CMA_stds": self.stds, "verbose": -9, "verb_log": 0, "verb_disp": 0,
                # no mirrored samples (pycma's default below popsize 6): they are injected into the next full ask,
                # and the search may ask a generation in parts (points asked early, then the rest)
                "CMA_mirrors": 0}
        return cma.CMAEvolutionStrategy(self.x0, self.sigma0, opts)

    def ask(self, n: int | None = None) -> list[list[float]]:
        """`n` candidates (default: a generation), unit coordinates inside the box. Points of the next generation
        may be asked before this one is told (the search's pipeline): pycma keeps every asked point, and the later
        tell uses such a point as sampled from the distribution one update earlier."""
        xs = [list(map(float, x)) for x in self._es.ask(n)]
        self._told_since_ask = False
        for x in xs:
            self._asked_by[tuple(x)] = self.restarts_done
        return xs

    def inject(self, xs: Sequence[Sequence[float]]) -> None:
        """Make the next ask start with these points (e.g. seed candidates), used as given."""
        import numpy as np

        self._es.inject([np.asarray(x, dtype=float) for x in xs], force=True)

    def tell(self, xs: Sequence[Sequence[float]], values: Sequence[Sequence[float] | None]) -> None:
        """Report a generation's objective values (None for failed candidates); restart when converged."""
        import numpy as np

        # points asked before a restart (pipelined) and told after it are dropped: the fresh strategy starts
        # without them, and is told only its own points (if enough of them for a generation's update)
        current = [self._asked_by.pop(tuple(map(float, x)), self.restarts_done) == self.restarts_done for x in xs]
        xs = [x for x, c in zip(xs, current) if c]
        values = [v for v, c in zip(values, current) if c]
        if len(xs) < max(3, self.popsize // 2):  # pycma refuses an update from fewer than three points
            return
        if self._told_since_ask:
            # two tells in a row (a pipelined run's last generations): pycma takes one tell per ask, so draw (and
            # drop) a generation in between; deterministic, so a replay does the same
            self._es.ask()
        losses = [FAILED_LOSS if v is None else -float(v[0]) for v in values]
        self._es.tell([np.asarray(x) for x in xs], losses)
        self._told_since_ask = True
        if self.restarts_left > 0 and self._es.stop() and "maxiter" not in self._es.stop():
            self.restarts_left -= 1
            self.restarts_done += 1
            self.popsize *= 2  # IPOP
            self._es = self._new(self.popsize)
            self._told_since_ask = False

    def replay(self, xs: Sequence[Sequence[float]], values: Sequence[Sequence[float] | None]) -> list[list[float]]:
        """Re-ask a recorded generation and tell its recorded values; returns what was asked (the caller checks it
        equals the record: same seed and same tells give the same asks)."""
        asked = self.ask()
        self.tell(asked, values)
        return asked

    @property
    def converged(self) -> bool:
        return bool(self._es.stop()) and self.restarts_left == 0
