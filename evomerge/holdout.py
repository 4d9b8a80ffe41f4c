"""Holdout scores: one scorer and one record for the search's finalist re-check and the quickstart's table.

A holdout score is a merge scored on the holdout split of the run's eval sets, turned into objectives and a
scalar fitness by the same code that turns dev scores into them (fitness.py, under the space's objectives,
weights and scalarization). Two callers, one path:

- the search's finalist re-check (scheduler.py): a worker scores the finalist's recipe on holdout
  (`Evaluator.evaluate` with split "holdout", which runs `evaluation.score`), and `holdout_result` + `record`
  store it in the ledger;
- the quickstart (quickstart.py): `HoldoutScorer` scores recipes on resident models (the same `Evaluator`,
  started on the holdout split; this process's and a helper process's), keeping each item's value for the paired
  bootstrap; the searched trials it scores are stored with `record`, as finalists are, so `export`, `status` and
  the dashboard read them.

The record is the ledger's study attribute `holdout:<trial>` (`{"fitness", "scores"}`; finished trials are
immutable); export picks the trial with the best holdout fitness (ledger.py `best`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from evomerge.fitness import Objective, objectives as compute_objectives, scalarize
from evomerge.scorers import SetScores


@dataclass(frozen=True)
class HoldoutResult:
    """One merge's holdout scores: per set, per objective, the scalar fitness, and (from `HoldoutScorer`) each
    item's value of the metrics that are means over items ("set.metric" -> values, in item order)."""

    scores: Mapping[str, SetScores]
    objectives: Mapping[str, float]
    fitness: float
    items: Mapping[str, tuple[float, ...]] = field(default_factory=dict, compare=False, repr=False)

    def score_dicts(self) -> dict[str, dict[str, Any]]:
        """The per-set scores as the ledger stores them (as dev scores are: `asdict(SetScores)`)."""
        return {name: asdict(s) for name, s in self.scores.items()}


def holdout_result(scores: Mapping[str, SetScores], objs: Sequence[Objective], weights: Mapping[str, float] | None,
                   how: str, items: Mapping[str, Sequence[float]] | None = None) -> HoldoutResult:
    """Holdout scores -> objectives and fitness, as the search computes them on dev."""
    values = compute_objectives(scores, objs)
    return HoldoutResult(dict(scores), values, scalarize(values, weights, how),
                         {k: tuple(v) for k, v in (items or {}).items()})


def record(ledger: Any, number: int, result: HoldoutResult) -> None:
    """Store trial `number`'s holdout result in the run's ledger (what export, status and plots read)."""
    ledger.set_holdout(number, result.fitness, result.score_dicts())


# how an exported trial was chosen (export's manifest `chosen`), in the words `status` and `export` print
_CHOSEN = {"holdout": "chosen on holdout", "dev": "chosen on dev fitness (no holdout re-check)",
           "--trial": "chosen with --trial"}


def which_fitness(chosen: str, dev: float | None, holdout: float | None, digits: int = 4, why: str = "") -> str:
    """How a trial was chosen (and `why`, in brackets) and both of its fitnesses, each named as the search's last
    line names them ("chosen on holdout: holdout 0.8000, dev 0.8139"), so that neither is taken for the other;
    `chosen` is "holdout", "dev" or "--trial" (anything else reads "how chosen unrecorded"); no holdout, no holdout
    figure."""
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    hold = f"holdout {f(holdout)}, " if holdout is not None else ""
    return f"{_CHOSEN.get(chosen, 'how chosen unrecorded')}{f' ({why})' if why else ''}: {hold}dev {f(dev)}"


def recorded_objectives(entry: Mapping[str, Any], objs: Sequence[Objective]) -> dict[str, float]:
    """A ledger holdout entry's objectives, recomputed from its stored per-set scores."""
    scores = {name: SetScores(dict(s["values"]), int(s.get("n", 0))) for name, s in entry["scores"].items()}
    return compute_objectives(scores, objs)


def score_sets(backend: Any, prepared: Sequence[Any]) -> tuple[dict[str, SetScores], dict[str, tuple[float, ...]]]:
    """Score prepared sets with the backend's current weights: per-set scores (`evaluation.score_set`'s numbers)
    and each item's value per "set.metric". Non-finite scores (a collapsed merge) raise."""
    from evomerge.evaluation import score_set_items

    scores: dict[str, SetScores] = {}
    items: dict[str, tuple[float, ...]] = {}
    for p in prepared:
        scores[p.name], per_item = score_set_items(backend, p)
        items.update({f"{p.name}.{m}": tuple(v) for m, v in per_item.items()})
    if not all(math.isfinite(v) for sc in scores.values() for v in sc.values.values()):
        raise RuntimeError("non-finite scores (collapsed model)")
    return scores, items


class HoldoutScorer:
    """Resident models that score recipes on the holdout split of a space's eval sets (the worker's `Evaluator`,
    one thread, the run's item seed): one in this process and, with `processes` > 1, one in each of
    `processes` - 1 helper processes (spawned at once, so they load while this one scores) that take a share of
    `score_all`'s recipes. A recipe's scores do not depend on which process scored it: the same code, items and
    thread count."""

    def __init__(self, space: Any, objs: Sequence[Objective], weights: Mapping[str, float] | None, how: str,
                 template: Mapping[str, Any], seed: int, backend: str = "hf", processes: int = 1) -> None:
        from evomerge.worker import EvaluatorSpec

        self.objs, self.weights, self.how = tuple(objs), weights, how
        spec = EvaluatorSpec(recipe=dict(template), eval_sets=tuple(ref.path for ref in space.eval_sets),
                             split="holdout", seed=seed, threads=1, backend=backend)
        self.helpers = max(0, processes - 1)
        self._pool: Any = None
        if self.helpers:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.helpers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_helper, initargs=(spec, self.objs, weights, how))
            for _ in range(self.helpers):
                self._pool.submit(int)  # start every helper now: each loads its model while this process does
        self.evaluator = _start_evaluator(spec, "holdout")
        self.count = 0

    def score(self, recipe: Mapping[str, Any], label: str = "recipe") -> HoldoutResult:
        """Merge `recipe` (mergekit dict) into this process's resident model and score it on holdout; a failure
        names `label`."""
        self.count += 1
        return _score_recipe(self.evaluator, recipe, label, self.objs, self.weights, self.how)

    def score_all(self, jobs: Sequence[tuple[Mapping[str, Any], str]]) -> list[HoldoutResult]:
        """Every (recipe, label) scored, results in the jobs' order: this process takes jobs from the front, each
        helper one at a time from the back, so nobody waits while work is left. A helper that dies hands its job
        back to this process; a scoring failure names its label, wherever it happened."""
        from concurrent.futures import FIRST_COMPLETED, CancelledError, wait
        from concurrent.futures.process import BrokenProcessPool

        results: list[HoldoutResult | None] = [None] * len(jobs)
        pending = list(range(len(jobs)))
        running: dict[Any, int] = {}  # a helper's future -> its job
        while pending or running:
            while self._pool is not None and pending and len(running) < self.helpers:
                try:
                    future = self._pool.submit(_helper_score, *jobs[pending[-1]])
                except BrokenProcessPool:  # a helper that could not start, or died between calls
                    self._close_pool()
                    break
                running[future] = pending.pop()
            if pending:
                i = pending.pop(0)
                results[i] = self.score(*jobs[i])
            else:
                wait(running, return_when=FIRST_COMPLETED)
            for future in [f for f in running if f.done()]:
                i = running.pop(future)
                try:
                    results[i] = future.result()
                    self.count += 1
                except (BrokenProcessPool, CancelledError):  # the helper is gone, not the recipe's fault: here
                    self._close_pool()
                    pending.append(i)
        return [r for r in results if r is not None]

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        self._close_pool()
        self.evaluator = None


def _start_evaluator(spec: Any, name: str) -> Any:
    from transformers.utils import logging as hf_logging

    from evomerge.worker import Evaluator

    hf_logging.disable_progress_bar()  # a "Loading weights" bar in the middle of a report is noise
    return Evaluator.start(spec, worker=name)


def _score_recipe(evaluator: Any, recipe: Mapping[str, Any], label: str, objs: Sequence[Objective],
                  weights: Mapping[str, float] | None, how: str) -> HoldoutResult:
    from evomerge.recipe import Recipe

    try:
        evaluator.apply(Recipe.from_mergekit(dict(recipe)))
        scores, items = score_sets(evaluator.backend, evaluator.prepared)
    except Exception as e:  # noqa: BLE001 - name the point whose scoring failed
        raise RuntimeError(f"scoring {label} on holdout failed: {e}") from e
    return holdout_result(scores, objs, weights, how, items)


_HELPER: tuple[Any, ...] = ()  # in a helper process: (evaluator, objectives, weights, scalarization)


def _start_helper(spec: Any, objs: Sequence[Objective], weights: Mapping[str, float] | None, how: str) -> None:
    global _HELPER
    _HELPER = (_start_evaluator(spec, "holdout-helper"), objs, weights, how)


def _helper_score(recipe: Mapping[str, Any], label: str) -> HoldoutResult:
    evaluator, objs, weights, how = _HELPER
    return _score_recipe(evaluator, recipe, label, objs, weights, how)


# -- the dashboard's note ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteRow:
    """One row of the holdout table in the study's note."""

    kind: str  # e.g. finalist, source, grid, uniform, front
    label: str
    objectives: Mapping[str, float]  # on holdout
    fitness: float | None = None  # on holdout
    dev: float | None = None  # the trial's dev fitness, for searched points


def markdown_table(rows: Sequence[NoteRow], names: Sequence[str]) -> str:
    """The holdout table as markdown (what optuna-dashboard renders in the study's note)."""

    def f(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.4f}"

    head = ["kind", "point", *names, "holdout fitness", "dev fitness"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r.kind, r.label, *(f(r.objectives.get(n)) for n in names), f(r.fitness),
                                         f(r.dev)]) + " |")
    return "\n".join(lines)


def finalists_note(ledger: Any, objs: Sequence[Objective]) -> str:
    """The search's note: every trial re-scored on holdout (finalists, best holdout fitness first), seed
    candidates named as such (the run's baselines), and the trial export takes."""
    from evomerge.ledger import fitness_of

    hold = ledger.holdout()
    by_number = {t.number: t for t in ledger.trials()}
    rows = []
    for number in sorted(hold, key=lambda n: -hold[n]["fitness"]):
        t = by_number.get(number)
        seed = t.user_attrs.get("seed_candidate") if t is not None else None
        rows.append(NoteRow("seed " + seed if seed else "finalist", f"trial {number}",
                            recorded_objectives(hold[number], objs), hold[number]["fitness"],
                            fitness_of(t) if t is not None and t.values else None))
    if not rows:
        return ""
    best = rows[0].label
    return "\n\n".join([
        "## Holdout re-check",
        f"The top trials by dev fitness re-scored on the holdout split. Export takes **{best}** "
        "(best holdout fitness); dev fitness is what the optimizer saw.",
        markdown_table(rows, [o.name for o in objs])])
