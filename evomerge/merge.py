"""Recipe + kernels -> merged weights, either as a model directory on disk or in place in resident tensors.

Both modes run the same `prepare` and `combine` kernels from methods.py on tensors of the recipe's dtype, so a
model exported to disk is bit-for-bit the one a worker scored in memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch

from evomerge.architecture import num_layers
from evomerge.errors import UserError
from evomerge.methods import METHODS
from evomerge.recipe import Recipe
from evomerge.tensors import ModelFiles, torch_dtype, write_model_dir


@dataclass(frozen=True)
class MergeReport:
    """What a disk merge wrote."""

    out_dir: Path
    n_tensors: int
    seconds: float


@dataclass
class _Sources:
    recipe: Recipe
    files: dict[str, ModelFiles]
    n_layers: int

    @property
    def reference(self) -> ModelFiles:
        """The model whose config, tokenizer and chat template the merged model takes: the first non-base input
        (put the instruct model first)."""
        return self.files[self.recipe.inputs[0].model]


def _open_sources(recipe: Recipe) -> _Sources:
    files = {name: ModelFiles.open(name) for name in recipe.sources}
    layers = {name: num_layers(f.config) for name, f in files.items()}
    if len(set(layers.values())) != 1:
        raise UserError("models", f"layer counts differ: {layers}", "merge models of one architecture")
    ref_names = set(files[recipe.inputs[0].model].names())
    for name, f in files.items():
        if set(f.names()) != ref_names:
            missing = sorted(ref_names ^ set(f.names()))[0]
            raise UserError(name, f"tensor names differ from the other models (e.g. {missing})",
                            "merge models of one architecture")
    return _Sources(recipe, files, next(iter(layers.values())))


def _inputs(src: _Sources, name: str, dtype: torch.dtype) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    recipe = src.recipe
    base = src.files[recipe.base_model].get(name, dtype) if recipe.base_model else None
    inputs = [src.files[m.model].get(name, dtype) for m in recipe.inputs]
    shapes = {tuple(t.shape) for t in inputs + ([base] if base is not None else [])}
    if len(shapes) != 1:
        raise UserError(name, f"shapes differ across models: {sorted(shapes)}", "merge models of one architecture")
    return base, inputs


def merge_to_disk(recipe: Recipe, out_dir: str | Path) -> MergeReport:
    """Merge tensor by tensor (each source tensor is read lazily and dropped after use) into a model directory."""
    start = time.perf_counter()
    src = _open_sources(recipe)
    method = METHODS[recipe.merge_method]
    dtype = torch_dtype(recipe.dtype)
    names = src.reference.names()

    def merged() -> Iterator[tuple[str, torch.Tensor]]:
        for name in names:
            base, inputs = _inputs(src, name, dtype)
            prepared = method.prepare(base, inputs)
            coeffs = recipe.coefficients(name, src.n_layers)
            out = torch.empty_like(inputs[0])
            yield name, method.combine(base, prepared, coeffs, out)

    config = dict(src.reference.config)
    config["torch_dtype"] = recipe.dtype
    config.pop("dtype", None)
    out = write_model_dir(Path(out_dir), merged(), config=config, side_files_from=src.reference.path)
    return MergeReport(out, len(names), time.perf_counter() - start)


class ResidentMerge:
    """Source tensors prepared once on a device; every candidate recipe is merged in place into `targets`.

    `targets` are the live parameters of a model being scored (name -> tensor of the recipe's dtype). Per
    candidate nothing proportional to the model is allocated: `combine` writes straight into the targets.
    """

    def __init__(self, recipe: Recipe, targets: Mapping[str, torch.Tensor], device: str | torch.device = "cpu"):
        src = _open_sources(recipe)
        self.method = METHODS[recipe.merge_method]
        self.sources = recipe.sources
        self.n_layers = src.n_layers
        dtype = torch_dtype(recipe.dtype)
        self.targets = dict(targets)
        self._prepared: dict[str, tuple[torch.Tensor | None, list[torch.Tensor]]] = {}
        for name in src.reference.names():
            if name not in self.targets:
                raise UserError(name, "tensor not found in the model being scored", "architectures differ")
            base, inputs = _inputs(src, name, dtype)
            base = base.to(device) if base is not None else None
            self._prepared[name] = (base, self.method.prepare(base, [t.to(device) for t in inputs]))

    @torch.no_grad()
    def apply(self, recipe: Recipe) -> None:
        """Write the merge of `recipe` (same models and method as at construction) into the targets."""
        if recipe.sources != self.sources or METHODS[recipe.merge_method] is not self.method:
            raise ValueError("a resident merge serves one set of models and one method")
        for name, (base, prepared) in self._prepared.items():
            coeffs = recipe.coefficients(name, self.n_layers)
            self.method.combine(base, prepared, coeffs, self.targets[name])
