"""A merge recipe: what to merge, how, and with which coefficient for every tensor.

The recipe is mergekit's YAML schema, so an exported recipe runs unchanged with `mergekit-yaml`, and a mergekit
YAML file is a valid input to `evomerge merge`. Pure: no torch, no file reads beyond the YAML text handed in.
Both of mergekit's forms are read: `models:` (what evomerge writes) and `slices:` (what mergekit-evolve writes), the
latter as long as every output layer is the same input layer of every model (see `Slice`); a recipe read in one
form is written back in that form.

Parameter values follow mergekit 0.1.5 exactly:
- a scalar applies to every tensor;
- a list of numbers is a gradient over the decoder layers: layer i of L gets the value at
  t = i / (L - 1) (t = 1 when L == 1), linearly interpolated between neighbouring list entries; tensors outside
  the layers (embeddings, final norm, lm_head) are planned with t = 0, i.e. they take the first entry;
- a list of `{filter: S, value: V}` conditions picks the first whose filter is a substring of the tensor name
  (no filter, or "*", matches everything), then evaluates V as above.
A per-model parameter (weight, density, gamma, epsilon) is read from the model's own `parameters`, then from the
recipe-wide `parameters`, then the method's default; a method-wide parameter (normalize, lambda, t, ...) from the
recipe-wide `parameters` only. In the slices form a slice's `parameters` come between the two, and t runs over the
slice's own layers (i / (n - 1) for its i-th of n layers); tensors outside the layers take the first slice's
settings (embeddings) or the last slice's (final norm, lm_head), at t = 0. A filter list that matches no condition
falls through to the next source.
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
_TOP_KEYS = {"merge_method", "models", "slices", "base_model", "parameters", "dtype", "tokenizer_source", "name"}
_SLICE_KEYS = {"sources", "base_model", "parameters"}
_SOURCE_KEYS = {"model", "layer_range", "parameters"}
_SLICES_SUPPORTED = ("supported: each slice's sources share one layer_range and the slices follow one another "
                     "from layer 0 to the last, so that no layer is moved, repeated or dropped")


@dataclass(frozen=True)
class ModelEntry:
    """One input model and its own parameters (e.g. `weight`)."""

    model: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Slice:
    """One entry of mergekit's `slices:` form: decoder layers [start, end) of every model, merged with this slice's
    settings. `models` are the slice's sources as written (each with its own parameters), `parameters` the
    slice-wide ones. Only slices that keep every layer in place are read (each source's layer_range is [start, end)
    and the slices tile the layers in order), so the merged model has the inputs' architecture."""

    start: int
    end: int
    models: tuple[ModelEntry, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def entry(self, model: str) -> tuple[int, ModelEntry]:
        """This slice's source `model`: (its index in the slice, the entry)."""
        return next((i, m) for i, m in enumerate(self.models) if m.model == model)


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
    """A validated merge recipe in mergekit's `models:` form, or its `slices:` form: then `slices` holds the
    per-slice settings and `models` lists the models (those of the first slice, in its order) without parameters."""

    merge_method: str
    models: tuple[ModelEntry, ...]
    base_model: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    tokenizer_source: str | None = None
    slices: tuple[Slice, ...] = ()

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

    def _contexts(self) -> list[tuple[list[tuple[str, ModelEntry]], list[tuple[str, Mapping[str, Any]]]]]:
        """Where settings live, one context per slice (one in the models form): every model's own parameters (with
        the field naming them), then the wider scopes, nearest first."""
        if not self.slices:
            return [([(f"models[{i}].parameters", m) for i, m in enumerate(self.models)],
                     [("parameters", self.parameters)])]
        return [([(f"slices[{s}].sources[{j}].parameters", m) for j, m in enumerate(sl.models)],
                 [(f"slices[{s}].parameters", sl.parameters), ("parameters", self.parameters)])
                for s, sl in enumerate(self.slices)]

    def _check_parameters(self) -> None:
        shared, per_model = METHOD_DEFAULTS[self.merge_method], PER_MODEL_DEFAULTS[self.merge_method]
        known = ", ".join(sorted({*shared, *per_model}))
        if self.slices and any(m.parameters for m in self.models):
            raise UserError("models", "a slices recipe keeps its parameters in the slices",
                            "set them under each slice's sources or parameters")
        contexts = self._contexts()
        for own, wide in contexts:
            for where, entry in own:
                for key in entry.parameters:
                    if key in shared:
                        raise UserError(f"{where}.{key}", f"{key} is a method-wide parameter of {self.merge_method}",
                                        f"set it under the {'slice' if self.slices else 'recipe'}'s parameters")
                    if key not in per_model:
                        raise UserError(f"{where}.{key}", f"unknown parameter for {self.merge_method}",
                                        f"known: {known}")
            for where, params in wide:
                for key in params:
                    if key not in shared and key not in per_model:
                        raise UserError(f"{where}.{key}", f"unknown parameter for {self.merge_method}",
                                        f"known: {known}")
            for key, default in shared.items():
                if default is REQUIRED and not any(key in params for _, params in wide):
                    raise UserError(f"{wide[0][0]}.{key}", "missing", f"{self.merge_method} needs {key}")
            for where, entry in own:
                if entry.model == self.base_model:
                    continue
                for key, default in per_model.items():
                    if default is REQUIRED and key not in entry.parameters and \
                            not any(key in params for _, params in wide):
                        raise UserError(f"{where}.{key}", "missing", f"give every model a {key}")
        scopes = {where: params for own, wide in contexts for where, params in
                  [(w, e.parameters) for w, e in own] + wide}
        for where, params in scopes.items():
            for key, setting in params.items():
                if key in _RANGES:
                    low, high, low_in, high_in = _RANGES[key]
                    for v in _numbers(setting):
                        if not ((low <= v if low_in else low < v) and (v <= high if high_in else v < high)):
                            interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
                            raise UserError(f"{where}.{key}", f"{v} is outside {interval}",
                                            f"keep {key} inside {interval}")
        for where, params in scopes.items():
            seed = params.get("random_seed")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise UserError(f"{where}.random_seed", f"must be one integer, got {seed!r}", "e.g. random_seed: 0")

    @property
    def inputs(self) -> tuple[ModelEntry, ...]:
        """The non-base models, in recipe order (the order the merge sums them in)."""
        return tuple(m for m in self.models if m.model != self.base_model)

    @property
    def sources(self) -> tuple[str, ...]:
        """Every model the merge reads, base first."""
        names = [self.base_model] if self.base_model else []
        return tuple(names + [m.model for m in self.inputs])

    def _locate(self, tensor_name: str, n_layers: int) -> tuple[float, str, list[tuple[str, ModelEntry]],
                                                                    list[Mapping[str, Any]]]:
        """For one tensor: its position t for gradients, the field of its nearest wide scope, each input's own
        settings (in `inputs` order, with the field naming them) and the wide scopes, nearest first."""
        place = place_of(tensor_name)
        if not self.slices:
            if place.layer is None:
                t = 0.0
            else:
                t = place.layer / (n_layers - 1) if n_layers > 1 else 1.0
            own = [(f"models[{self.models.index(m)}].parameters", m) for m in self.inputs]
            return t, "parameters", own, [self.parameters]
        if self.slices[-1].end != n_layers:
            raise UserError(f"slices[{len(self.slices) - 1}]",
                            f"the slices cover layers 0-{self.slices[-1].end - 1} but the models have {n_layers}",
                            f"end the last layer_range at {n_layers}")
        if place.layer is None:  # mergekit: embeddings before the first slice, norm and lm_head after the last
            s, t = (0 if place.kind == "embed" else len(self.slices) - 1), 0.0
        else:
            s = next(i for i, sl in enumerate(self.slices) if sl.start <= place.layer < sl.end)
            n = self.slices[s].end - self.slices[s].start
            t = (place.layer - self.slices[s].start) / (n - 1) if n > 1 else 1.0
        sl = self.slices[s]
        own = []
        for m in self.inputs:
            j, entry = sl.entry(m.model)
            own.append((f"slices[{s}].sources[{j}].parameters", entry))
        return t, f"slices[{s}].parameters", own, [sl.parameters, self.parameters]

    def coefficients(self, tensor_name: str, n_layers: int) -> TensorCoefficients:
        """Resolve every parameter for one tensor, the way mergekit does: a model's own setting, then the slice's
        (slices form), then the recipe's, then the method's default; a filter list that matches nothing falls
        through to the next of these."""
        t, where_wide, own, wide = self._locate(tensor_name, n_layers)
        shared = {}
        for key, default in METHOD_DEFAULTS[self.merge_method].items():
            shared[key] = self._resolve(key, default, wide, tensor_name, t, f"{where_wide}.{key}")
        per_model: dict[str, list[float]] = {key: [] for key in PER_MODEL_DEFAULTS[self.merge_method]}
        for where, entry in own:
            for key, default in PER_MODEL_DEFAULTS[self.merge_method].items():
                value = self._resolve(key, default, [entry.parameters, *wide], tensor_name, t, f"{where}.{key}")
                per_model[key].append(value)
        if self.merge_method in _DELLA:
            for (where, _), d, e in zip(own, per_model["density"], per_model["epsilon"]):
                if d < 1 and not (0 < d - e and d + e < 1):  # mergekit raises a ValueError mid-merge here
                    raise UserError(f"{where}.epsilon",
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
        """The recipe as a mergekit configuration dict (dump it with yaml.safe_dump), in the form it was read in."""
        out: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model:
            out["base_model"] = self.base_model
        if self.slices:
            out["slices"] = [_with_parameters({"sources": [_with_parameters(
                {"model": m.model, "layer_range": [sl.start, sl.end]}, m.parameters) for m in sl.models]},
                sl.parameters) for sl in self.slices]
        else:
            out["models"] = [_with_parameters({"model": m.model}, m.parameters) for m in self.models]
        if self.parameters:
            out["parameters"] = _plain(self.parameters)
        out["dtype"] = self.dtype
        if self.tokenizer_source:
            out["tokenizer_source"] = self.tokenizer_source
        return out

    @classmethod
    def from_mergekit(cls, data: Any, where: str = "recipe") -> "Recipe":
        """Validate a mergekit configuration dict (`models:` or `slices:` form)."""
        if not isinstance(data, dict):
            raise UserError(where, "expected a mapping at the top level", "see search_spaces/ for examples")
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise UserError(f"{where}: {sorted(unknown)[0]}", "unknown key", f"known keys: {', '.join(sorted(_TOP_KEYS))}")
        base_model = data.get("base_model")
        slices: tuple[Slice, ...] = ()
        if "slices" in data:
            if "models" in data:
                raise UserError(f"{where}: models", "a recipe has either models or slices, not both",
                                "keep one of the two")
            slices, base_model = _read_slices(data["slices"], base_model, where)
            models = tuple(ModelEntry(m.model) for m in slices[0].models)
        else:
            listed = data.get("models")
            if not isinstance(listed, list) or not listed:
                raise UserError(f"{where}: models", "must be a non-empty list", "e.g. - model: path/to/model")
            models = tuple(_read_model(m, f"{where}: models[{i}]") for i, m in enumerate(listed))
        return cls(
            merge_method=str(data.get("merge_method", "")),
            models=models,
            base_model=base_model,
            parameters=_read_parameters(data.get("parameters"), f"{where}: parameters", "{normalize: true}"),
            dtype=str(data.get("dtype", "float32")),
            tokenizer_source=data.get("tokenizer_source"),
            slices=slices,
        )


def _read_parameters(params: Any, where: str, example: str = "{weight: 0.5}") -> dict[str, Any]:
    """A `parameters` mapping (absent: empty), every setting's shape checked."""
    params = params or {}
    if not isinstance(params, dict):
        raise UserError(where, "must be a mapping", f"e.g. {example}")
    for key, value in params.items():
        _check_setting(value, f"{where}.{key}")
    return params


def _read_model(m: Any, where: str, keys: set[str] | None = None) -> ModelEntry:
    """One `models:` entry, or one slice source (whose layer_range the caller reads; `keys`: the known ones)."""
    if not isinstance(m, dict) or not isinstance(m.get("model"), str):
        raise UserError(where, "must be a mapping with a 'model' path", "- model: path")
    unknown = set(m) - keys if keys is not None else set()  # a models: entry may carry mergekit-evolve's layer_range
    if unknown:
        raise UserError(f"{where}.{sorted(unknown)[0]}", "unknown key", f"known keys: {', '.join(sorted(keys))}")
    return ModelEntry(m["model"], _read_parameters(m.get("parameters"), f"{where}.parameters"))


def _read_slices(data: Any, base_model: Any, where: str) -> tuple[tuple[Slice, ...], Any]:
    """mergekit's `slices:` list as Slices, and the base model (the recipe's, or the one every slice names).
    Slices that move, repeat or drop layers (frankenmerges) are refused: evomerge merges layer i into layer i."""
    if not isinstance(data, list) or not data:
        raise UserError(f"{where}: slices", "must be a non-empty list",
                        "e.g. - sources: [{model: path, layer_range: [0, 32]}, ...]")
    out: list[Slice] = []
    bases: set[Any] = set()
    for s, sl in enumerate(data):
        at = f"{where}: slices[{s}]"
        if not isinstance(sl, dict):
            raise UserError(at, "must be a mapping with sources", "- sources: [{model: path, layer_range: [0, 32]}]")
        unknown = set(sl) - _SLICE_KEYS
        if unknown:
            raise UserError(f"{at}.{sorted(unknown)[0]}", "unknown key (not supported)",
                            f"known keys: {', '.join(sorted(_SLICE_KEYS))}")
        sources = sl.get("sources")
        if not isinstance(sources, list) or not sources:
            raise UserError(f"{at}.sources", "must be a non-empty list", "- model: path\n  layer_range: [0, 32]")
        entries, ranges = [], []
        for j, src in enumerate(sources):
            entries.append(_read_model(src, f"{at}.sources[{j}]", _SOURCE_KEYS))
            lr = src.get("layer_range")
            if not (isinstance(lr, list) and len(lr) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                   for x in lr) and 0 <= lr[0] < lr[1]):
                raise UserError(f"{at}.sources[{j}].layer_range", f"must be [first, end) layer numbers, got {lr!r}",
                                "e.g. layer_range: [0, 32]")
            ranges.append(tuple(lr))
        if len(set(ranges)) > 1:
            listed = ", ".join(f"{e.model} {list(r)}" for e, r in zip(entries, ranges))
            raise UserError(at, f"its sources cover different layers ({listed})", _SLICES_SUPPORTED)
        start, end = ranges[0]
        expected = out[-1].end if out else 0
        if start != expected:
            raise UserError(at, f"starts at layer {start}, not {expected}", _SLICES_SUPPORTED)
        names = [e.model for e in entries]
        if len(set(names)) != len(names):
            raise UserError(at, "lists a model twice", "list each model once per slice")
        if out and set(names) != {m.model for m in out[0].models}:
            raise UserError(at, "merges other models than slices[0]", "every slice merges the same models")
        bases.add(sl.get("base_model") or base_model)
        out.append(Slice(start, end, tuple(entries),
                         _read_parameters(sl.get("parameters"), f"{at}.parameters", "{normalize: true}")))
    if len(bases) > 1:
        raise UserError(f"{where}: slices", f"the slices have different base models ({sorted(map(str, bases))})",
                        "use one base_model for the whole recipe")
    return tuple(out), bases.pop()


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


def _with_parameters(entry: dict[str, Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """`entry` with a `parameters` key when there are any (as plain YAML values)."""
    return {**entry, "parameters": _plain(parameters)} if parameters else entry


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
