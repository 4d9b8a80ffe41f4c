"""Search-space YAML -> a validated, named description of what is fixed and what is free.

Relative paths in a space file are resolved against the directory of that file, so a space runs the same from any
working directory. Pure except for `load_space` (reads the YAML) and `layer_count` (reads one config.json).

Schema (see search_spaces/quickstart.yaml):
    models:      list of {name, role: base|instruct|language, path, language?}
    build:       optional {miniature: DIR, seed: N}: build the tiny miniature models there when absent
    merge:       {method, dtype?, parameters?: method-wide values, fixed?: {model name: {param: value}}}
    genes:       list of {parameter, model, granularity: global|per_layer, low, high, init, step, name?}
    eval:        {sets: [{path, weight?}], split?: dev, max_items?: N}
    search:      {optimizer?: cmaes, popsize?: N, generations?: N, sigma0?: x}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from evomerge.errors import UserError
from evomerge.recipe import METHOD_DEFAULTS, METHODS_NEEDING_BASE, ModelEntry, Recipe

ROLES = ("base", "instruct", "language")
GRANULARITIES = ("global", "per_layer")
OPTIMIZERS = ("cmaes",)


@dataclass(frozen=True)
class ModelSpec:
    """One model of the space: a short name, its role and its resolved path."""

    name: str
    role: str
    path: str
    language: str | None = None


@dataclass(frozen=True)
class GeneSpec:
    """A free parameter family as written in the YAML (one gene, or one per layer)."""

    name: str
    parameter: str
    model: str
    granularity: str
    low: float
    high: float
    init: float
    step: float


@dataclass(frozen=True)
class Gene:
    """One optimizer dimension: a bounded value for one parameter of one model (at one layer, or all)."""

    name: str
    parameter: str
    model: str
    layer: int | None
    low: float
    high: float
    init: float
    step: float


@dataclass(frozen=True)
class EvalSetRef:
    """An eval set the fitness uses, and its weight in the scalar fitness."""

    path: str
    weight: float = 1.0


@dataclass(frozen=True)
class SearchSettings:
    """Optimizer settings."""

    optimizer: str = "cmaes"
    popsize: int = 6
    generations: int = 4
    sigma0: float | None = None


@dataclass(frozen=True)
class Space:
    """A validated search space."""

    source: str
    models: tuple[ModelSpec, ...]
    method: str
    dtype: str
    method_parameters: Mapping[str, Any]
    fixed: Mapping[str, Mapping[str, Any]]
    genes: tuple[GeneSpec, ...]
    eval_sets: tuple[EvalSetRef, ...]
    eval_split: str = "dev"
    max_items: int | None = None
    search: SearchSettings = field(default_factory=SearchSettings)
    build_miniature: str | None = None
    build_seed: int = 0

    def model(self, name: str) -> ModelSpec:
        """A model by its short name."""
        return next(m for m in self.models if m.name == name)

    @property
    def base(self) -> ModelSpec | None:
        return next((m for m in self.models if m.role == "base"), None)

    @property
    def merged_models(self) -> tuple[ModelSpec, ...]:
        """The non-base models, instruct first (the merged model takes its config, tokenizer, chat template)."""
        return tuple(sorted((m for m in self.models if m.role != "base"), key=lambda m: m.role != "instruct"))

    def expand(self, n_layers: int) -> list[Gene]:
        """The optimizer's dimensions, in a fixed documented order: genes as listed, layers ascending."""
        out: list[Gene] = []
        for g in self.genes:
            layers: list[int | None] = list(range(n_layers)) if g.granularity == "per_layer" else [None]
            for layer in layers:
                name = g.name if layer is None else f"{g.name}[{layer}]"
                out.append(Gene(name, g.parameter, g.model, layer, g.low, g.high, g.init, g.step))
        return out

    def recipe(self, values: Mapping[str, float], n_layers: int) -> Recipe:
        """Genes' values (by gene name) -> a mergekit-compatible recipe. Deterministic.

        A per_layer gene becomes a list of n_layers numbers, which mergekit reads as one value per layer (tensors
        outside the layers take the first entry, mergekit's rule); a global gene becomes a scalar.
        """
        params: dict[str, dict[str, Any]] = {m.name: dict(self.fixed.get(m.name, {})) for m in self.merged_models}
        for gene in self.expand(n_layers):
            value = float(values[gene.name])
            slot = params[gene.model]
            if gene.layer is None:
                slot[gene.parameter] = value
            else:
                slot.setdefault(gene.parameter, [0.0] * n_layers)
                if not isinstance(slot[gene.parameter], list):
                    slot[gene.parameter] = [0.0] * n_layers
                slot[gene.parameter][gene.layer] = value
        base = self.base.path if self.base and self.method in METHODS_NEEDING_BASE else None
        models = tuple(ModelEntry(m.path, params[m.name]) for m in self.merged_models)
        return Recipe(self.method, models, base, dict(self.method_parameters), self.dtype)


# ---------------------------------------------------------------------------------------------------------------
_TOP = {"models", "build", "merge", "genes", "eval", "search"}


def _mapping(obj: Any, where: str, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise UserError(where, "must be a mapping", f"keys: {', '.join(sorted(allowed))}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise UserError(f"{where}.{unknown[0]}", "unknown key", f"known keys: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(obj))
    if missing:
        raise UserError(f"{where}.{missing[0]}", "missing", "this key is required")
    return obj


def _number(obj: Any, where: str) -> float:
    if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not math.isfinite(obj):
        raise UserError(where, f"must be a finite number, got {obj!r}", "write e.g. 0.5")
    return float(obj)


def _resolve(path: Any, where: str, root: Path) -> str:
    if not isinstance(path, str) or not path:
        raise UserError(where, "must be a path string", "write a path relative to the space file")
    p = Path(path).expanduser()
    return str((p if p.is_absolute() else root / p).resolve())


def parse_space(data: Any, source: str) -> Space:
    """Validate a parsed space YAML; `source` is the file it came from (relative paths resolve against it)."""
    root = Path(source).parent
    top = _mapping(data, source, _TOP, {"models", "merge", "genes", "eval"})
    where = lambda key: f"{source}: {key}"  # noqa: E731 - short local formatter

    if not isinstance(top["models"], list) or not top["models"]:
        raise UserError(where("models"), "must be a non-empty list", "list the base, instruct and language models")
    models: list[ModelSpec] = []
    for i, m in enumerate(top["models"]):
        m = _mapping(m, where(f"models[{i}]"), {"name", "role", "path", "language"}, {"name", "role", "path"})
        if m["role"] not in ROLES:
            raise UserError(where(f"models[{i}].role"), f"unknown role {m['role']!r}", f"use one of {', '.join(ROLES)}")
        if m["role"] == "language" and not m.get("language"):
            raise UserError(where(f"models[{i}].language"), "missing", "tag a language model with its language code")
        models.append(ModelSpec(str(m["name"]), m["role"], _resolve(m["path"], where(f"models[{i}].path"), root),
                                m.get("language")))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UserError(where("models"), "model names must be unique", "rename the duplicates")
    roles = [m.role for m in models]
    if roles.count("instruct") != 1:
        raise UserError(where("models"), "exactly one model must have role instruct", "set role: instruct")
    if roles.count("base") > 1:
        raise UserError(where("models"), "at most one model may have role base", "keep one shared ancestor")

    merge = _mapping(top["merge"], where("merge"), {"method", "dtype", "parameters", "fixed"}, {"method"})
    method = merge["method"]
    if method not in METHOD_DEFAULTS:
        raise UserError(where("merge.method"), f"unknown method {method!r}", f"use one of {', '.join(sorted(METHOD_DEFAULTS))}")
    if method in METHODS_NEEDING_BASE and "base" not in roles:
        raise UserError(where("merge.method"), f"{method} needs a model with role base", "add the shared ancestor")
    params = merge.get("parameters") or {}
    _mapping(params, where("merge.parameters"), set(METHOD_DEFAULTS[method]))
    fixed = merge.get("fixed") or {}
    _mapping(fixed, where("merge.fixed"), set(names))
    for k, v in fixed.items():
        _mapping(v, where(f"merge.fixed.{k}"), {"weight"})

    if not isinstance(top["genes"], list) or not top["genes"]:
        raise UserError(where("genes"), "must be a non-empty list", "declare at least one free parameter")
    genes: list[GeneSpec] = []
    keys = {"name", "parameter", "model", "granularity", "low", "high", "init", "step"}
    for i, g in enumerate(top["genes"]):
        w = f"genes[{i}]"
        g = _mapping(g, where(w), keys, {"parameter", "model", "low", "high"})
        if g["model"] not in names or next(m for m in models if m.name == g["model"]).role == "base":
            raise UserError(where(f"{w}.model"), f"{g['model']!r} is not a merged model", f"use one of {', '.join(n for n, r in zip(names, roles) if r != 'base')}")
        if g["parameter"] != "weight":
            raise UserError(where(f"{w}.parameter"), f"unsupported parameter {g['parameter']!r}", "use weight")
        gran = g.get("granularity", "global")
        if gran not in GRANULARITIES:
            raise UserError(where(f"{w}.granularity"), f"unknown granularity {gran!r}", f"use one of {', '.join(GRANULARITIES)}")
        low, high = _number(g["low"], where(f"{w}.low")), _number(g["high"], where(f"{w}.high"))
        if not low < high:
            raise UserError(where(f"{w}.high"), f"bounds are inverted or empty ({low} >= {high})", "make low < high")
        init = _number(g.get("init", (low + high) / 2), where(f"{w}.init"))
        if not low <= init <= high:
            raise UserError(where(f"{w}.init"), f"{init} is outside [{low}, {high}]", "move init inside the bounds")
        step = _number(g.get("step", (high - low) / 4), where(f"{w}.step"))
        if step <= 0:
            raise UserError(where(f"{w}.step"), "must be positive", "e.g. a quarter of the range")
        name = str(g.get("name", f"{g['parameter']}_{g['model']}"))
        genes.append(GeneSpec(name, g["parameter"], g["model"], gran, low, high, init, step))
    if len({g.name for g in genes}) != len(genes):
        raise UserError(where("genes"), "gene names must be unique", "give the genes distinct names")
    free = {(g.model, g.parameter) for g in genes}
    for m in models:
        if m.role != "base" and (m.name, "weight") not in free and "weight" not in fixed.get(m.name, {}):
            raise UserError(where("merge.fixed"), f"model {m.name!r} has neither a weight gene nor a fixed weight",
                            f"add merge.fixed.{m.name}.weight or a gene")

    ev = _mapping(top["eval"], where("eval"), {"sets", "split", "max_items"}, {"sets"})
    if not isinstance(ev["sets"], list) or not ev["sets"]:
        raise UserError(where("eval.sets"), "must be a non-empty list", "list eval-set directories")
    sets = []
    for i, s in enumerate(ev["sets"]):
        s = _mapping(s, where(f"eval.sets[{i}]"), {"path", "weight"}, {"path"})
        sets.append(EvalSetRef(_resolve(s["path"], where(f"eval.sets[{i}].path"), root),
                               _number(s.get("weight", 1.0), where(f"eval.sets[{i}].weight"))))
    split = ev.get("split", "dev")
    if split not in ("dev", "holdout"):
        raise UserError(where("eval.split"), f"unknown split {split!r}", "use dev (holdout is for re-checks)")
    max_items = ev.get("max_items")
    if max_items is not None and (not isinstance(max_items, int) or max_items < 1):
        raise UserError(where("eval.max_items"), "must be a positive integer", "e.g. 32")

    s = _mapping(top.get("search") or {}, where("search"), {"optimizer", "popsize", "generations", "sigma0"})
    settings = SearchSettings()
    if s.get("optimizer", "cmaes") not in OPTIMIZERS:
        raise UserError(where("search.optimizer"), f"unknown optimizer {s['optimizer']!r}", f"use one of {', '.join(OPTIMIZERS)}")
    for key in ("popsize", "generations"):
        if key in s and (not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < 1):
            raise UserError(where(f"search.{key}"), "must be a positive integer", "e.g. 6")
    settings = SearchSettings(s.get("optimizer", "cmaes"), s.get("popsize", settings.popsize),
                              s.get("generations", settings.generations),
                              _number(s["sigma0"], where("search.sigma0")) if "sigma0" in s else None)

    build = top.get("build")
    mini, seed = None, 0
    if build is not None:
        build = _mapping(build, where("build"), {"miniature", "seed"}, {"miniature"})
        mini = _resolve(build["miniature"], where("build.miniature"), root)
        seed = build.get("seed", 0)
        if not isinstance(seed, int):
            raise UserError(where("build.seed"), "must be an integer", "e.g. 0")
    return Space(source, tuple(models), method, str(merge.get("dtype", "float32")), dict(params),
                 {k: dict(v) for k, v in fixed.items()}, tuple(genes), tuple(sets), split, max_items, settings,
                 mini, seed)


def load_space(path: str | Path) -> Space:
    """Read and validate a search-space YAML file."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise UserError(str(p), "no such file", "check the path to the search space") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(str(p), f"malformed YAML{at}", "fix the syntax") from None
    return parse_space(data, str(p.resolve()))


def layer_count(space: Space) -> int:
    """Decoder layers of the space's models, read from the instruct model's config.json (no weights)."""
    from evomerge.architecture import num_layers

    instruct = next(m for m in space.models if m.role == "instruct")
    cfg = Path(instruct.path) / "config.json"
    if not cfg.is_file():
        raise UserError(instruct.path, "model not found (no config.json)", "build or download it, or fix the path")
    return num_layers(json.loads(cfg.read_text()))
