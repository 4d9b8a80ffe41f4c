"""Evaluate candidates: merge in memory from resident source tensors, then score. The Ray actor is a thin shell.

A worker loads the source models once (`Evaluator.start`); each candidate is then only an in-memory merge (no file
reads: `ResidentMerge.apply`, or its twin inside a vLLM engine) and a scoring pass. Any exception inside a
candidate becomes a failed `CandidateResult` with its reason: one bad candidate never takes the worker or the run
down. Scores that are NaN or infinite (a collapsed merge) are a failure too, so the optimizer sees the worst value.
A worker that dies is replaced by the driver (pool.py), which retries its candidate once.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from evomerge.memplan import MemoryPlan
from evomerge.results import Candidate, CandidateResult  # noqa: F401 - also imported from here
from evomerge.scorers import SetScores


@dataclass(frozen=True)
class EvaluatorSpec:
    """Everything a worker needs to start: a template recipe (fixes models and method), eval sets, item choice."""

    recipe: Mapping[str, Any]  # mergekit dict
    eval_sets: tuple[str, ...]
    split: str = "dev"
    max_items: int | None = None
    seed: int = 0
    threads: int = 1
    backend: str = "hf"  # "hf" or "vllm" (backends/select.py resolves "auto" before workers start)
    memory: MemoryPlan | None = None  # vLLM: KV cache budget, where the sources live, tensor parallel size
    first_pass_items: int | None = None  # items per set of the cheap first pass (None: no first pass)
    objectives: tuple = ()  # fitness.Objective specs, to compute a first-pass fitness inside the worker
    objective_weights: Mapping[str, float] | None = None
    scalarize: str = "mean"


class Evaluator:
    """A scoring backend with resident sources + prepared eval sets; `evaluate` is the per-candidate hot path.

    `apply(recipe)` puts a candidate's weights into the backend: a `ResidentMerge` into the Hugging Face model's
    live parameters, or a merge and in-place reload inside the vLLM engine (backends/select.py).
    """

    def __init__(self, backend, apply: Callable[[Any], None], prepared, worker: str,
                 spec: EvaluatorSpec | None = None) -> None:
        self.backend, self.apply, self.worker, self.spec = backend, apply, worker, spec
        self.prepared_by_split = {spec.split if spec else "dev": prepared}

    @property
    def prepared(self):
        return self.prepared_by_split[self.spec.split if self.spec else "dev"]

    def _prepared(self, split: str):
        """The eval sets of one split, tokenized on first use (holdout only when finalists are re-checked)."""
        if split not in self.prepared_by_split:
            from evomerge import evaluation
            from evomerge.evalsets import load_evalset

            spec = self.spec
            if split == "first_pass":  # a seeded handful of the search split's items
                sets = [evaluation.prepare(self.backend, load_evalset(p), spec.split, spec.first_pass_items,
                                           spec.seed + 1) for p in spec.eval_sets]
            else:
                sets = [evaluation.prepare(self.backend, load_evalset(p), split, None, spec.seed)
                        for p in spec.eval_sets]
            self.prepared_by_split[split] = sets
        return self.prepared_by_split[split]

    @classmethod
    def start(cls, spec: EvaluatorSpec, worker: str = "") -> "Evaluator":
        """Load sources and eval sets once (the only I/O a worker does)."""
        import torch

        from evomerge import evaluation
        from evomerge.backends.select import start_backend
        from evomerge.evalsets import load_evalset
        from evomerge.recipe import Recipe

        torch.set_num_threads(spec.threads)
        template = Recipe.from_mergekit(dict(spec.recipe))
        backend, apply = start_backend(spec.backend, template, spec.memory)
        prepared = [evaluation.prepare(backend, load_evalset(p), spec.split, spec.max_items, spec.seed)
                    for p in spec.eval_sets]
        return cls(backend, apply, prepared, worker or f"pid{os.getpid()}", spec)

    def evaluate(self, candidate: Candidate) -> CandidateResult:
        """Merge the candidate into the resident model and score it; failures come back as values."""
        _test_kill_hook(candidate.number)
        started = time.time()
        result = self._evaluate(candidate)
        return replace(result, started_at=started, finished_at=time.time())

    def _evaluate(self, candidate: Candidate) -> CandidateResult:
        from evomerge import evaluation
        from evomerge.recipe import Recipe

        t0 = time.perf_counter()
        try:
            self.apply(Recipe.from_mergekit(dict(candidate.recipe)))
            t1 = time.perf_counter()
            first = None
            if candidate.prune_below is not None and self.spec and self.spec.first_pass_items:
                first, why, fp_scores = self._first_pass(candidate.prune_below)
                if why:
                    return CandidateResult(candidate.number, fp_scores, None, t1 - t0, time.perf_counter() - t1,
                                           self.worker, pruned=why, first_pass=first)
            pruned, race = None, ()
            if candidate.race is not None and self.spec is not None:
                scores, pruned, race = self._race(candidate.race, candidate.split)
            else:
                scores = evaluation.score(self.backend, self._prepared(candidate.split))
            t2 = time.perf_counter()
        except Exception as e:  # noqa: BLE001 - a candidate's failure is data, not a crash
            return CandidateResult(candidate.number, error=error_text(e), worker=self.worker)
        if not all(math.isfinite(v) for sc in scores.values() for v in sc.values.values()):
            return CandidateResult(candidate.number, error="non-finite scores (collapsed model)",
                                   merge_seconds=t1 - t0, score_seconds=t2 - t1, worker=self.worker)
        return CandidateResult(candidate.number, scores, None, t1 - t0, t2 - t1, self.worker, pruned=pruned,
                               first_pass=first, race=race)

    def _race(self, race, split: str) -> tuple[Mapping[str, SetScores], str | None, tuple[dict, ...]]:
        """Score the dev items in batches until racing.py says the candidate cannot reach the bar: (the scores of
        the items scored, why it was pruned or None, each batch's step)."""
        from evomerge import evaluation, racing

        prepared = self._prepared(split)
        totals = {p.name: evaluation.n_items(p) for p in prepared}
        scores, steps, why = racing.run(race, evaluation.score_batches(self.backend, prepared, race.batches), totals,
                                        self.spec.objectives, self.spec.objective_weights, self.spec.scalarize)
        return scores, why, tuple(s.as_dict() for s in steps)

    def _first_pass(self, prune_below: float) -> tuple[float, str | None, Mapping[str, SetScores]]:
        """Score a handful of dev items; (first-pass fitness, the reason to prune or None, the scores)."""
        from evomerge import evaluation
        from evomerge.fitness import objectives, scalarize

        scores = evaluation.score(self.backend, self._prepared("first_pass"))
        f = scalarize(objectives(scores, self.spec.objectives), self.spec.objective_weights, self.spec.scalarize)
        if not math.isfinite(f):
            return f, "first pass: non-finite scores (collapsed model)", scores
        if f < prune_below:
            return f, f"first pass {f:.4f} < {prune_below:.4f} on {self.spec.first_pass_items} items per set", scores
        return f, None, scores


def error_text(e: BaseException, frames: int = 4) -> str:
    """What a failed trial keeps of an exception: its whole message first (its first line is the summary), then
    the traceback's last `frames` frames (where it was raised)."""
    message = "".join(traceback.format_exception_only(type(e), e)).strip()
    tail = traceback.format_tb(e.__traceback__)[-frames:]
    if not tail:
        return message
    return f"{message}\nTraceback (most recent call last, last {len(tail)} frames):\n" + "".join(tail).rstrip()


def redirect_output(path: str | os.PathLike) -> None:
    """Send this process's stdout and stderr to `path` (appended), at the file-descriptor level: what C code and
    child processes write (vLLM's engine and its tensor-parallel ranks inherit fds 1 and 2) goes there too."""
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed or replaced streams have nothing pending
            pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def _test_kill_hook(number: int) -> None:
    """Test hook (tests/test_worker_faults.py): with EVOMERGE_TEST_KILL_WORKER_ON_TRIAL=<n> and
    EVOMERGE_TEST_KILL_MARKER=<path>, the worker process that first starts evaluating trial n dies on the spot
    (os._exit, as an out-of-memory kill would), once across all processes: whoever creates the marker file dies.
    Unset (always, outside tests) it does nothing."""
    target = os.environ.get("EVOMERGE_TEST_KILL_WORKER_ON_TRIAL")
    marker = os.environ.get("EVOMERGE_TEST_KILL_MARKER")
    if target is None or marker is None or int(target) != number:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)


def actor_class(num_cpus: float = 1, num_gpus: float = 0):
    """The Ray actor around an Evaluator (ray is imported only here, when a search starts).

    Its calls run in order: the constructor only sends the process's output to the worker's log, `ready` says
    the actor is placed, `start` loads the engine and sources (its failure is the pool's "could not start"),
    then `evaluate` runs candidates."""
    import ray

    # no restarts by Ray: the driver replaces a dead worker itself and decides what happens to its candidate
    @ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)
    class WorkerActor:
        def __init__(self, worker: str, log_path: str | None = None) -> None:
            if log_path:
                redirect_output(log_path)
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {worker}: pid {os.getpid()} on {os.uname().nodename}",
                  flush=True)
            self.worker = worker
            self.evaluator: Evaluator | None = None

        def ready(self) -> int:
            return os.getpid()

        def start(self, spec: EvaluatorSpec) -> str:
            try:
                self.evaluator = Evaluator.start(spec, self.worker)
            except BaseException:
                traceback.print_exc()  # the whole account in the worker's log; the driver quotes its first line
                sys.stderr.flush()
                raise
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.worker}: started ({spec.backend})", flush=True)
            return self.worker

        def evaluate(self, candidate: Candidate) -> CandidateResult:
            if self.evaluator is None:  # the pool hands out candidates only after `start` returned
                raise RuntimeError(f"{self.worker} was not started")
            return self.evaluator.evaluate(candidate)

    return WorkerActor
