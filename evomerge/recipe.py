"""A merge recipe: what to merge, how, and with which coefficient for every tensor.

The recipe is mergekit's YAML schema (the `models:` form), so an exported recipe runs unchanged with
`mergekit-yaml`, and a mergekit YAML file is a valid input to `evomerge merge`. Pure: no torch, no file reads
beyond the YAML text handed in.

Parameter values follow mergekit 0.1.5 exactly:
- a scalar applies to every tensor;
- a list of numbers is a gradient over the decoder layers: layer i of L gets the value at
  t = i / (L - 1) (t = 1 when L == 1), linearly interpolated between neighbouring list entries; tensors outside
  the layers (embeddings, final norm, lm_head) are planned with t = 0, i.e. they take the first entry;
- a list of `{filter: S, value: V}` conditions picks the first whose filter is a substring of the tensor name
  (no filter, or "*", matches everything), then evaluates V as above.
A model's own `parameters` take precedence over the recipe-wide `parameters`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from evomerge.architecture import place_of
from evomerge.errors import UserError

# Methods this version can merge, with their defaults (mergekit's).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"normalize": True},
    "task_arithmetic": {"normalize": False, "lambda": 1.0},
}
METHODS_NEEDING_BASE = {"task_arithmetic"}
DTYPES = ("float32", "bfloat16", "float16")
_TOP_KEYS = {"merge_method", "models", "base_model", "parameters", "dtype", "tokenizer_source", "name"}


@dataclass(frozen=True)
class ModelEntry:
    """One input model and its own parameters (e.g. `weight`)."""

    model: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorCoefficients:
    """The resolved coefficients of one output tensor: one weight per non-base input, plus shared parameters."""

    models: tuple[str, ...]
    weights: tuple[float, ...]
    shared: Mapping[str, Any]


@dataclass(frozen=True)
class Recipe:
    """A validated merge recipe in mergekit's `models:` form."""

    merge_method: str
    models: tuple[ModelEntry, ...]
    base_model: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    tokenizer_source: str | None = None

    def __post_init__(self) -> None:
        if self.merge_method not in METHOD_DEFAULTS:
            raise UserError("merge_method", f"unknown method {self.merge_method!r}",
                            f"use one of {', '.join(sorted(METHOD_DEFAULTS))}")
        if self.merge_method in METHODS_NEEDING_BASE and not self.base_model:
            raise UserError("base_model", f"{self.merge_method} needs a base_model",
                            "name the shared pre-trained ancestor of the models")
        if self.dtype not in DTYPES:
            raise UserError("dtype", f"unknown dtype {self.dtype!r}", f"use one of {', '.join(DTYPES)}")
        if not self.inputs:
            raise UserError("models", "no model to merge besides the base", "list at least one model")

    @property
    def inputs(self) -> tuple[ModelEntry, ...]:
        """The non-base models, in recipe order (the order the merge sums them in)."""
        return tuple(m for m in self.models if m.model != self.base_model)

    @property
    def sources(self) -> tuple[str, ...]:
        """Every model the merge reads, base first."""
        names = [self.base_model] if self.base_model else []
        return tuple(names + [m.model for m in self.inputs])

    def coefficients(self, tensor_name: str, n_layers: int) -> TensorCoefficients:
        """Resolve every parameter for one tensor, the way mergekit does."""
        place = place_of(tensor_name)
        if place.layer is None:
            t = 0.0
        else:
            t = place.layer / (n_layers - 1) if n_layers > 1 else 1.0
        weights = []
        for entry in self.inputs:
            setting = entry.parameters.get("weight", self.parameters.get("weight"))
            if setting is None:
                raise UserError(f"models[{entry.model}].parameters.weight", "missing", "give every model a weight")
            weights.append(float(evaluate_setting(setting, tensor_name, t)))
        shared = dict(METHOD_DEFAULTS[self.merge_method])
        for key in shared:
            if key in self.parameters:
                shared[key] = evaluate_setting(self.parameters[key], tensor_name, t)
        return TensorCoefficients(tuple(m.model for m in self.inputs), tuple(weights), shared)

    # --- mergekit YAML in and out -------------------------------------------------------------------------
    def to_mergekit(self) -> dict[str, Any]:
        """The recipe as a mergekit configuration dict (dump it with yaml.safe_dump)."""
        out: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model:
            out["base_model"] = self.base_model
        out["models"] = [{"model": m.model, "parameters": _plain(m.parameters)} if m.parameters
                         else {"model": m.model} for m in self.models]
        if self.parameters:
            out["parameters"] = _plain(self.parameters)
        out["dtype"] = self.dtype
        if self.tokenizer_source:
            out["tokenizer_source"] = self.tokenizer_source
        return out

    @classmethod
    def from_mergekit(cls, data: Any, where: str = "recipe") -> "Recipe":
        """Validate a mergekit configuration dict (`models:` form)."""
        if not isinstance(data, dict):
            raise UserError(where, "expected a mapping at the top level", "see search_spaces/ for examples")
        unknown = set(data) - _TOP_KEYS
        if "slices" in data:
            raise UserError(f"{where}: slices", "the slices form is not supported yet", "use the models: form")
        if unknown:
            raise UserError(f"{where}: {sorted(unknown)[0]}", "unknown key", f"known keys: {', '.join(sorted(_TOP_KEYS))}")
        models = data.get("models")
        if not isinstance(models, list) or not models:
            raise UserError(f"{where}: models", "must be a non-empty list", "e.g. - model: path/to/model")
        entries = []
        for i, m in enumerate(models):
            if not isinstance(m, dict) or not isinstance(m.get("model"), str):
                raise UserError(f"{where}: models[{i}]", "must be a mapping with a 'model' path", "- model: path")
            params = m.get("parameters") or {}
            if not isinstance(params, dict):
                raise UserError(f"{where}: models[{i}].parameters", "must be a mapping", "e.g. {weight: 0.5}")
            for key, value in params.items():
                _check_setting(value, f"{where}: models[{i}].parameters.{key}")
            entries.append(ModelEntry(m["model"], params))
        params = data.get("parameters") or {}
        if not isinstance(params, dict):
            raise UserError(f"{where}: parameters", "must be a mapping", "e.g. {normalize: true}")
        return cls(
            merge_method=str(data.get("merge_method", "")),
            models=tuple(entries),
            base_model=data.get("base_model"),
            parameters=params,
            dtype=str(data.get("dtype", "float32")),
            tokenizer_source=data.get("tokenizer_source"),
        )


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """mergekit's resolution of one parameter setting for one tensor at layer position t in [0, 1]."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, list) and setting and all(isinstance(e, (int, float)) and not isinstance(e, bool)
                                                     for e in setting):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    if isinstance(setting, list):
        for cond in setting:
            flt = cond.get("filter")
            if flt is None or flt == "*" or flt in tensor_name:
                return evaluate_setting(cond["value"], tensor_name, t)
        return None
    raise ValueError(f"unexpected parameter setting {setting!r}")


def _check_setting(value: Any, where: str) -> None:
    if isinstance(value, bool) or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise UserError(where, "must be finite", "use a number")
        return
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value:
        if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in value):
            return
        for cond in value:
            if not isinstance(cond, dict) or "value" not in cond or set(cond) - {"filter", "value"}:
                raise UserError(where, "a list must hold numbers or {filter, value} conditions",
                                "e.g. [{filter: self_attn, value: 0.5}, {value: 1.0}]")
            _check_setting(cond["value"], where)
        return
    raise UserError(where, f"unsupported value {value!r}", "use a number, a list of numbers or filter conditions")


def _plain(obj: Any) -> Any:
    """Mappings and sequences as plain dicts/lists with Python floats (for YAML dumping)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        return float(obj)
    return obj


def load_recipe_yaml(path: "str | Any") -> Recipe:
    """Read a mergekit-format YAML recipe file."""
    import yaml
    from pathlib import Path

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise UserError(str(p), "no such file", "check the path") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(str(p), f"malformed YAML{at}", "fix the syntax") from None
    return Recipe.from_mergekit(data, where=str(p))


def dump_recipe_yaml(recipe: Recipe, header: Sequence[str] = ()) -> str:
    """The recipe as mergekit YAML text, with optional comment lines on top."""
    import yaml

    lines = [f"# {h}" for h in header]
    return "\n".join(lines + [yaml.safe_dump(recipe.to_mergekit(), sort_keys=False, default_flow_style=None)])
