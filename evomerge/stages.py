"""The stages of a search: one stage (the space's genes), or coarse to fine (`search.coarse_to_fine`).

Coarse to fine searches the space's uniform view first (stage `uniform`: `Space.uniform_genes`, one coordinate
per model and parameter, every per-layer, block, module and embed/head gene of that model tied to it), then the
space's own genes (stage `per_layer`), started from the uniform stage's best point (CMA-ES's initial mean) and
seeded with its best points: its best `popsize // 2` on dev fitness (the dev Pareto front's, with several
objectives), evaluated first.

- One study, one ledger: a uniform point is recorded in the space's own genes (each tied gene holding the one
  value), so both stages' trials are ordinary points of the space; dedup, plots, holdout re-checks and export see
  them alike, and they compete for export. Each trial carries user attribute `stage`.
- Budget (documented rule): generations [0, g1) are the uniform stage, [g1, G) the per-layer one, with
  g1 = round(share * G') clipped to [1, G' - 1], G' the generations the budget allows (G, or max_evals / popsize
  when smaller), share = `uniform_share` (default 1/3). max_evals caps both stages together.
- Resume: the stage is derived from the ledger. The uniform stage is replayed from its recorded generations (all
  of them once it is done: then nothing is evaluated again), the per-layer stage's start point and seeds are
  recomputed from the recorded uniform trials (the same on every resume), then it replays its own generations.
- Never worse on dev than the best uniform merge: holdout finalists, and so export, are only trials at least as
  good on dev as the best uniform trial (ledger.py `dev_floor`); without holdout, export takes the best dev fitness
  over both stages.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

from evomerge.fitness import Objective
from evomerge.genome import Genome, TiedGenome
from evomerge.ledger import Ledger, fitness_of
from evomerge.optimizers import make_optimizer
from evomerge.pareto import non_dominated
from evomerge.scheduler import Pool, Scheduler
from evomerge.space import Gene, Space

UNIFORM, PER_LAYER = "uniform", "per_layer"


def split_generations(generations: int, popsize: int, max_evals: int | None, share: float) -> int:
    """How many generations the uniform stage gets (the module doc's rule)."""
    total = generations if max_evals is None else min(generations, math.ceil(max_evals / popsize))
    return max(1, min(total - 1, round(share * total)))


def uniform_genome(space: Space, genes: Sequence[Gene]) -> TiedGenome:
    """The space's genes tied by `Space.uniform_genes`: one coordinate per (parameter, models)."""
    groups, members = [], []
    for u in space.uniform_genes():
        idx = tuple(i for i, g in enumerate(genes) if (g.parameter, g.models) == (u.parameter, u.models))
        groups.append(Gene(u.name, u.name, u.parameter, u.models, None, None, u.low, u.high, u.init, u.step))
        members.append(idx)
    return TiedGenome(tuple(genes), tuple(groups), tuple(members))


def is_uniform(tied: TiedGenome, values: dict[str, float]) -> bool:
    """Whether every group's members hold one value (a point of the uniform stage)."""
    return all(max(values[tied.genes[i].name] for i in idx) - min(values[tied.genes[i].name] for i in idx) < 1e-9
               for idx in tied.members)


def uniform_best(trials: Sequence[Any], multi: bool, k: int) -> list[Any]:
    """The uniform stage's best completed trials, best dev fitness first: its top k (several objectives: the top k
    of its dev Pareto front). Ties go to the earlier trial, so a resume derives the same list."""
    import optuna

    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("stage") == UNIFORM
            and "duplicate_of" not in t.user_attrs]
    if multi:
        done = [done[i] for i in non_dominated([list(t.values) for t in done])]
    return sorted(done, key=lambda t: (-fitness_of(t), t.number))[:k]


class StagedSearch:
    """The search's stages run in order over one ledger and one pool, one `Scheduler` each."""

    def __init__(self, space: Space, genome: Genome, ledger: Ledger, pool: Pool, objs: tuple[Objective, ...],
                 weights: dict[str, float], *, optimizer: str, seed: int, popsize: int, multi: bool,
                 progress: bool, pipeline: bool, sigma0: float = 1.0, restarts: int = 0) -> None:
        self.space, self.genome, self.ledger, self.pool = space, genome, ledger, pool
        self.objs, self.weights, self.optimizer, self.seed, self.popsize = objs, weights, optimizer, seed, popsize
        self.multi, self.progress, self.pipeline, self.sigma0, self.restarts = multi, progress, pipeline, sigma0, restarts
        self.loop: Scheduler | None = None  # the stage running now
        self.per_gen: list[float | None] = []
        self.interrupted = False

    def interrupt(self) -> None:
        """What the first Ctrl-C does: the running stage finishes what is in flight, no later stage starts."""
        self.interrupted = True
        if self.loop is not None:
            self.loop.interrupt()

    def run(self, generations: int, max_evals: int | None = None, max_minutes: float | None = None,
            target: float | None = None, started: float | None = None,
            recheck: tuple[int | None, int] = (None, 0)) -> str:
        """Run the stages (Scheduler.run's budgets over all of them); returns why it stopped."""
        started = time.monotonic() if started is None else started
        share = self.space.search.coarse_to_fine
        if share is None:
            return self._stage(None, self.genome, 0, generations, self.genome.initial(), None,
                               (max_evals, max_minutes, target, started, recheck))
        tied = uniform_genome(self.space, self.genome.genes)
        g1 = split_generations(generations, self.popsize, max_evals, share)
        n_layers = self.pool.n_layers
        seeds = [(s.name, self.space.seed_values(s, n_layers)) for s in self.space.seeds]
        # the space's seeds that are uniform points go to the uniform stage, the others to the per-layer one
        coarse = [(n, tied.encode(v)) for n, v in seeds if is_uniform(tied, v)]
        fine = [(n, self.genome.encode(v)) for n, v in seeds if not is_uniform(tied, v)]
        budget = (max_evals, max_minutes, target, started, (None, 0))  # holdout re-checks once the floor is known
        stopped = self._stage(UNIFORM, tied, 0, g1, tied.initial(), coarse, budget)
        if stopped != "done" or self.interrupted or g1 >= generations:
            return stopped
        best = uniform_best(self.ledger.trials(), self.multi, max(1, self.popsize // 2))
        x0 = self.genome.encode(best[0].params) if best else self.genome.initial()
        fine = [(f"uniform trial {t.number}", self.genome.encode(t.params)) for t in best] + fine
        return self._stage(PER_LAYER, self.genome, g1, generations, x0, fine,
                           (max_evals, max_minutes, target, started, recheck))

    def _stage(self, name: str | None, genome: Genome | TiedGenome, first: int, end: int, x0: list[float],
               seeds: list[tuple[str, list[float]]] | None, budget: tuple) -> str:
        max_evals, max_minutes, target, started, recheck = budget
        opt = make_optimizer(self.optimizer, x0=x0, stds=genome.stds(), popsize=self.popsize, seed=self.seed,
                             n_objectives=len(self.objs) if self.multi else 1, sigma0=self.sigma0,
                             restarts=self.restarts)
        self.loop = Scheduler(self.space, genome, self.ledger, opt, self.pool, self.objs, self.weights,
                              self.space.search.scalarize, self.multi, self.progress, self.pipeline, stage=name,
                              first_gen=first, seeds=seeds)
        if self.interrupted:
            self.loop.interrupted = True
        try:
            return self.loop.run(end, self.popsize, max_evals, max_minutes, target, started, recheck=recheck)
        finally:
            self.per_gen += self.loop.per_gen

    def recheck_finalists(self, k: int) -> None:
        """Re-score the top-k trials on holdout (Scheduler.recheck_finalists, at or above the uniform floor)."""
        if self.loop is not None:
            self.loop.recheck_finalists(k)
