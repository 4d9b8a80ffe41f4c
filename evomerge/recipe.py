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
A per-model parameter (weight, density, gamma, epsilon) is read from the model's own `parameters`, then from the
recipe-wide `parameters`, then the method's default; a method-wide parameter (normalize, lambda, t, ...) from the
recipe-wide `parameters` only. A filter list that matches no condition falls through to the next source.
Unlike mergekit, which ignores parameter names its method does not know, a recipe with one is refused (a typo such
as `desnity` would otherwise silently merge densely).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from evomerge.architecture import place_of
from evomerge.errors import UserError

# Methods this version can merge, with mergekit 0.1.5's parameter names and defaults. A default of None marks a
# required parameter. Method-wide (shared) parameters are read from the recipe's `parameters` only; per-model
# parameters from the model's own `parameters`, falling back to the recipe's.
REQUIRED = None


def _gta(normalize: bool, rescale: bool, randomized: bool = False) -> dict[str, Any]:
    """Shared parameters of mergekit's generalized task arithmetic family (task_arithmetic, ties, dare, ...)."""
    shared: dict[str, Any] = {"int8_mask": False, "normalize": normalize, "rescale": rescale, "lambda": 1.0}
    if randomized:
        # Not a mergekit parameter (mergekit seeds its global RNG from the CLI's --random-seed and ignores unknown
        # recipe keys): ours, so that a recipe alone fixes the random masks. See evomerge/methods/sparsify.py.
        shared["random_seed"] = 0
    return shared


METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"normalize": True},
    "task_arithmetic": _gta(normalize=False, rescale=False),
    "ties": _gta(normalize=True, rescale=False),
    "dare_ties": _gta(normalize=False, rescale=True, randomized=True),
    "dare_linear": _gta(normalize=False, rescale=True, randomized=True),
    "breadcrumbs": _gta(normalize=False, rescale=False),
    "breadcrumbs_ties": _gta(normalize=False, rescale=False),
    "della": _gta(normalize=True, rescale=True, randomized=True),
    "della_linear": _gta(normalize=False, rescale=True, randomized=True),
    "slerp": {"t": REQUIRED},
}
_GTA_PER_MODEL = {"weight": REQUIRED, "density": 1.0}
PER_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"weight": REQUIRED},
    "task_arithmetic": dict(_GTA_PER_MODEL),
    "ties": dict(_GTA_PER_MODEL),
    "dare_ties": dict(_GTA_PER_MODEL),
    "dare_linear": dict(_GTA_PER_MODEL),
    "breadcrumbs": {**_GTA_PER_MODEL, "gamma": 0.01},
    "breadcrumbs_ties": {**_GTA_PER_MODEL, "gamma": 0.01},
    "della": {**_GTA_PER_MODEL, "epsilon": 0.15},
    "della_linear": {**_GTA_PER_MODEL, "epsilon": 0.15},
    "slerp": {},
}
METHODS_NEEDING_BASE = {m for m in METHOD_DEFAULTS if m != "linear"}
_DELLA = {"della", "della_linear"}
_PARAM_TYPES: dict[str, type] = {"normalize": bool, "int8_mask": bool, "rescale": bool, "lambda": float,
                                 "t": float, "random_seed": int, "weight": float, "density": float,
                                 "gamma": float, "epsilon": float}
# Value ranges checked when a recipe is built: (low, high, low inclusive, high inclusive). Every number a setting
# can produce lies between its list entries, so checking the entries checks every tensor's value.
_RANGES: dict[str, tuple[float, float, bool, bool]] = {"density": (0.0, 1.0, False, True),
                                                        "gamma": (0.0, 1.0, True, False),
                                                        "epsilon": (0.0, 0.5, True, False)}
DTYPES = ("float32", "bfloat16", "float16")
_TOP_KEYS = {"merge_method", "models", "base_model", "parameters", "dtype", "tokenizer_source", "name"}


@dataclass(frozen=True)
class ModelEntry:
    """One input model and its own parameters (e.g. `weight`)."""

    model: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorCoefficients:
    """The resolved coefficients of one output tensor.

    `per_model` holds every per-model parameter of the method (weight, density, gamma, epsilon), one value per
    non-base input in recipe order; `weights` is `per_model["weight"]` (empty for slerp, which has none); `shared`
    holds the method-wide parameters with defaults filled in; `tensor` is the tensor's name (randomized methods key
    their random masks on it). `numel` is the whole tensor's element count when the kernels are handed a slice of it
    (a tensor-parallel rank's part, `evomerge/shards.py`): methods that keep a share of the whole tensor's elements
    (TIES, breadcrumbs) count from it. None: the tensors handed over are whole.
    """

    models: tuple[str, ...]
    weights: tuple[float, ...]
    shared: Mapping[str, Any]
    per_model: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    tensor: str = ""
    numel: int | None = None


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
        if self.merge_method == "linear" and self.base_model:
            # mergekit would add the base as one more weighted input; say so rather than differ silently
            raise UserError("base_model", "linear takes no base_model",
                            "list that model under models with a weight instead")
        if self.dtype not in DTYPES:
            raise UserError("dtype", f"unknown dtype {self.dtype!r}", f"use one of {', '.join(DTYPES)}")
        if not self.inputs:
            raise UserError("models", "no model to merge besides the base", "list at least one model")
        if self.merge_method == "slerp" and len(self.inputs) != 1:
            raise UserError("models", f"slerp merges base_model with exactly one other model, got {len(self.inputs)}",
                            "list the base model and one other model")
        self._check_parameters()

    def _check_parameters(self) -> None:
        shared, per_model = METHOD_DEFAULTS[self.merge_method], PER_MODEL_DEFAULTS[self.merge_method]
        known = ", ".join(sorted({*shared, *per_model}))
        scopes = [(f"models[{i}].parameters", m.parameters) for i, m in enumerate(self.models)]
        for where, params in scopes:
            for key in params:
                if key in shared:
                    raise UserError(f"{where}.{key}", f"{key} is a method-wide parameter of {self.merge_method}",
                                    "set it under the recipe's parameters")
                if key not in per_model:
                    raise UserError(f"{where}.{key}", f"unknown parameter for {self.merge_method}", f"known: {known}")
        for key in self.parameters:
            if key not in shared and key not in per_model:
                raise UserError(f"parameters.{key}", f"unknown parameter for {self.merge_method}", f"known: {known}")
        for key, default in shared.items():
            if default is REQUIRED and key not in self.parameters:
                raise UserError(f"parameters.{key}", "missing", f"{self.merge_method} needs {key}")
        for entry in self.inputs:
            for key, default in per_model.items():
                if default is REQUIRED and key not in entry.parameters and key not in self.parameters:
                    raise UserError(f"models[{self.models.index(entry)}].parameters.{key}", "missing",
                                    f"give every model a {key}")
        for where, params in scopes + [("parameters", self.parameters)]:
            for key, setting in params.items():
                if key in _RANGES:
                    low, high, low_in, high_in = _RANGES[key]
                    for v in _numbers(setting):
                        if not ((low <= v if low_in else low < v) and (v <= high if high_in else v < high)):
                            interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
                            raise UserError(f"{where}.{key}", f"{v} is outside {interval}",
                                            f"keep {key} inside {interval}")
        seed = self.parameters.get("random_seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise UserError("parameters.random_seed", f"must be one integer, got {seed!r}", "e.g. random_seed: 0")

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
        """Resolve every parameter for one tensor, the way mergekit does: a model's own setting, then the recipe's,
        then the method's default; a filter list that matches nothing falls through to the next of these."""
        place = place_of(tensor_name)
        if place.layer is None:
            t = 0.0
        else:
            t = place.layer / (n_layers - 1) if n_layers > 1 else 1.0
        shared = {}
        for key, default in METHOD_DEFAULTS[self.merge_method].items():
            shared[key] = self._resolve(key, default, [self.parameters], tensor_name, t, f"parameters.{key}")
        per_model: dict[str, list[float]] = {key: [] for key in PER_MODEL_DEFAULTS[self.merge_method]}
        for entry in self.inputs:
            where = f"models[{self.models.index(entry)}].parameters"
            for key, default in PER_MODEL_DEFAULTS[self.merge_method].items():
                value = self._resolve(key, default, [entry.parameters, self.parameters], tensor_name, t,
                                      f"{where}.{key}")
                per_model[key].append(value)
        if self.merge_method in _DELLA:
            for entry, d, e in zip(self.inputs, per_model["density"], per_model["epsilon"]):
                if d < 1 and not (0 < d - e and d + e < 1):  # mergekit raises a ValueError mid-merge here
                    raise UserError(f"models[{self.models.index(entry)}].parameters.epsilon",
                                    f"density +/- epsilon must lie inside (0, 1); density {d:g}, epsilon {e:g} "
                                    f"at {tensor_name}", "keep epsilon below min(density, 1 - density)")
        frozen = {key: tuple(values) for key, values in per_model.items()}
        return TensorCoefficients(tuple(m.model for m in self.inputs), frozen.get("weight", ()), shared, frozen,
                                  tensor_name)

    @staticmethod
    def _resolve(key: str, default: Any, scopes: Sequence[Mapping[str, Any]], tensor_name: str, t: float,
                 where: str) -> Any:
        for scope in scopes:
            if key in scope:
                value = evaluate_setting(scope[key], tensor_name, t)
                if value is not None:
                    return _coerce(key, value, where)
        if default is REQUIRED:
            raise UserError(where, "missing", f"set {key} for every tensor (a filter list needs a catch-all entry)")
        return default

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


def _numbers(setting: Any) -> list[float]:
    """Every number a (checked) setting contains: scalars, gradient entries, filter values."""
    if isinstance(setting, bool) or isinstance(setting, str):
        return []
    if isinstance(setting, (int, float)):
        return [float(setting)]
    if isinstance(setting, dict):
        return _numbers(setting.get("value"))
    if isinstance(setting, (list, tuple)):
        return [v for item in setting for v in _numbers(item)]
    return []


def _coerce(key: str, value: Any, where: str) -> Any:
    """A resolved value as its parameter's type (mergekit validates with pydantic the same way)."""
    kind = _PARAM_TYPES.get(key, float)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    else:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    raise UserError(where, f"expected a {kind.__name__}, got {value!r}", f"write {key} as a {kind.__name__}")


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
    from pathlib import Path

    from evomerge.yamlfile import load_yaml

    p = Path(path)
    data = load_yaml(p, "a mergekit YAML recipe")
    return Recipe.from_mergekit(data, where=str(p))


def dump_recipe_yaml(recipe: Recipe, header: Sequence[str] = ()) -> str:
    """The recipe as mergekit YAML text, with optional comment lines on top."""
    import yaml

    lines = [f"# {h}" for h in header]
    return "\n".join(lines + [yaml.safe_dump(recipe.to_mergekit(), sort_keys=False, default_flow_style=None)])
