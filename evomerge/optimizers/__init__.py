"""Optimizers behind one ask/tell face, working in the genome's unit box; higher objective values are better.

`make_optimizer(name, ...)` picks one: `cmaes` (pycma, the default), `tpe`, `gp`, `nsga2`, `optuna-cmaes` (Optuna's
samplers) and `random` (the baseline). A generation is `ask()` -> evaluate -> `tell(xs, values)`, where each value is
a tuple of objective values (one for single-objective optimizers) or None for a failed candidate. A generation may
also be asked in parts (`ask(n)`), some of it before the previous generation is told: the search hands a worker
that would otherwise wait one point of the next generation at a time. `replay` feeds
recorded generations back in, so a resumed run continues from the optimizer state it would have had.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from evomerge.errors import UserError
from evomerge.optimizers.cmaes import CmaEs
from evomerge.optimizers.optuna_samplers import OPTUNA_SAMPLERS, OptunaSampler

Values = Sequence[float] | None


class Optimizer(Protocol):
    """The face every optimizer shows the search loop."""

    multi_objective: bool
    popsize: int  # the current generation size (cmaes: doubles at each IPOP restart)

    def ask(self, n: int | None = None) -> list[list[float]]: ...

    def tell(self, xs: Sequence[Sequence[float]], values: Sequence[Values]) -> None: ...

    def inject(self, xs: Sequence[Sequence[float]]) -> None: ...

    def replay(self, xs: Sequence[Sequence[float]], values: Sequence[Values]) -> list[list[float]]: ...


OPTIMIZERS = ("cmaes", *OPTUNA_SAMPLERS)


MIN_POPSIZE = {"cmaes": 3}  # pycma updates its distribution from three or more points of a generation


def check_popsize(name: str, popsize: int) -> None:
    """Refuse a population the named optimizer cannot learn from (before a run exists)."""
    least = MIN_POPSIZE.get(name, 1)
    if popsize < least:
        raise UserError("search.popsize", f"{name} needs at least {least} candidates per generation, got {popsize}",
                        f"set search.popsize (or --popsize) to {least} or more")


def make_optimizer(name: str, *, x0: Sequence[float], stds: Sequence[float], popsize: int, seed: int,
                   n_objectives: int = 1, sigma0: float = 1.0, restarts: int = 0) -> Optimizer:
    """Build the named optimizer for a genome with initial point x0 and per-coordinate deviations stds."""
    if name == "cmaes":
        if n_objectives != 1:
            raise ValueError("cmaes optimizes one scalar; scalarize the objectives or use nsga2")
        return CmaEs(x0, stds, popsize=popsize, seed=seed, sigma0=sigma0, restarts=restarts)
    return OptunaSampler(name, dim=len(x0), popsize=popsize, seed=seed, n_objectives=n_objectives)


__all__ = ["CmaEs", "MIN_POPSIZE", "OPTIMIZERS", "Optimizer", "OptunaSampler", "check_popsize", "make_optimizer"]
