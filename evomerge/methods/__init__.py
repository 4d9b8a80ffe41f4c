"""Merge kernels: pure torch functions on any device and dtype, in a plain dict keyed by method name.

Each method is split in two so that the same arithmetic serves both merge modes:
- `prepare(base, inputs)` runs once per tensor (per run, in resident mode) and computes everything that no
  coefficient changes: task vectors `x - base`, magnitude rankings, the angle between two models;
- `combine(base, prepared, coeffs, out)` runs once per candidate with that tensor's resolved coefficients
  (`evomerge.recipe.TensorCoefficients`: per-model weight, density, gamma, epsilon; shared normalize, lambda, t,
  random_seed, ...) and writes into a preallocated `out`: sparsification at the candidate's density, sign
  consensus, weighting.
A disk merge calls both in a row; a resident worker calls `prepare` at start-up and `combine` per candidate, so the
exported model is bit-for-bit the model that was scored. Arithmetic order and rounding follow mergekit 0.1.5: a
disk merge of a deterministic method equals `mergekit-yaml` bit for bit in float32 and bfloat16 (float32 sums of 5
or more models may differ in the last bit: torch's reduction order changes there); DARE and DELLA draw their masks
from our own seeded generator (see sparsify.py), so they equal mergekit only up to its random draws.

One file per family: linear.py, generalized_task_arithmetic.py (task arithmetic, TIES, DARE, breadcrumbs, DELLA;
its sparsifiers in sparsify.py), slerp.py; chunked.py runs the weighted sums and the sign consensus over
cache-sized chunks on several threads (the memory-bound part of every merge).
"""

from __future__ import annotations

from evomerge.methods import linear, slerp
from evomerge.methods.base import Combine, MergeMethod, Prepare
from evomerge.methods.generalized_task_arithmetic import VARIANTS

METHODS: dict[str, MergeMethod] = {
    "linear": MergeMethod("linear", False, linear.prepare, linear.combine),
    **{name: MergeMethod(name, True, variant.prepare, variant.combine) for name, variant in VARIANTS.items()},
    "slerp": MergeMethod("slerp", True, slerp.prepare, slerp.combine),
}

__all__ = ["METHODS", "MergeMethod", "Prepare", "Combine"]
