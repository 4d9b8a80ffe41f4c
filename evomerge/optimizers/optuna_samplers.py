"""Optuna's samplers (TPE, GP, NSGA-II, CMA-ES, random) driven by ask/tell on a private in-memory study.

The private study works in the unit box (`z0..zN` in [0, 1]); the run's ledger is a separate study in gene units.
Its state is just its trials, so `replay` (adding the recorded trials) restores it on resume.
"""

from __future__ import annotations

from typing import Sequence

OPTUNA_SAMPLERS = ("tpe", "gp", "nsga2", "optuna-cmaes", "random")


def _sampler(name: str, seed: int, popsize: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=popsize)
    if name == "optuna-cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, popsize=popsize)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


class OptunaSampler:
    """An Optuna sampler asked for a generation of `popsize` candidates at a time."""

    def __init__(self, name: str, *, dim: int, popsize: int, seed: int, n_objectives: int = 1) -> None:
        import optuna
        from optuna.distributions import FloatDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.name, self.popsize = name, popsize
        self.multi_objective = n_objectives > 1
        self.study = optuna.create_study(directions=["maximize"] * n_objectives, sampler=_sampler(name, seed, popsize))
        self.dists = {f"z{i}": FloatDistribution(0.0, 1.0) for i in range(dim)}
        self._pending: dict[tuple[float, ...], list] = {}  # asked, not yet told: point -> its open trials

    def ask(self, n: int | None = None) -> list[list[float]]:
        """`n` (default popsize) candidates; may be called again before the last ones are told (the search's
        pipeline asks generation g+1 while g finishes; Optuna's samplers see g's trials as running)."""
        trials = [self.study.ask(self.dists) for _ in range(n or self.popsize)]
        xs = [[t.params[k] for k in self.dists] for t in trials]
        for x, t in zip(xs, trials):
            self._pending.setdefault(tuple(x), []).append(t)
        return xs

    def inject(self, xs: Sequence[Sequence[float]]) -> None:
        for x in xs:
            self.study.enqueue_trial({k: float(v) for k, v in zip(self.dists, x)})

    def tell(self, xs: Sequence[Sequence[float]], values: Sequence[Sequence[float] | None]) -> None:
        import optuna

        for x, v in zip(xs, values):
            waiting = self._pending.get(tuple(x))
            if not waiting:
                raise ValueError("told a point that was not asked")
            trial = waiting.pop(0)
            if not waiting:
                del self._pending[tuple(x)]
            if v is None:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(trial, list(v) if self.multi_objective else float(v[0]))

    def replay(self, xs: Sequence[Sequence[float]], values: Sequence[Sequence[float] | None]) -> list[list[float]]:
        import optuna

        for x, v in zip(xs, values):
            params = {k: float(min(1.0, max(0.0, c))) for k, c in zip(self.dists, x)}
            if v is None:
                t = optuna.trial.create_trial(params=params, distributions=self.dists,
                                              state=optuna.trial.TrialState.FAIL)
            else:
                t = optuna.trial.create_trial(params=params, distributions=self.dists, values=list(v))
            self.study.add_trial(t)
        return [list(x) for x in xs]
