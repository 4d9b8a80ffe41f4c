"""Search-space YAML -> a validated, named description of what is fixed and what is free.

Pure except for `load_space` (reads the YAML). Relative paths resolve against the space file's directory, so a
space runs the same from any working directory.

Schema: `SPACE_KEYS` below, every key with its type, default, meaning and an example, the table `parse_space`
reads; rendered as docs/reference.md (`python -m evomerge.reference`). Every shipped file in search_spaces/ is an
example. In short: `models` (roles base, instruct, language), `build?`, `merge` (method, dtype, fixed values),
`genes` (free parameters at a granularity, with bounds), `seeds?`, `eval` (sets and weights), `search?`.

How genes become a recipe (deterministic; `Space.recipe`):
- a `global` gene without `tensors` sets the parameter for every tensor of its model(s);
- layer granularities set each decoder layer's value: `per_layer` (one gene per layer), `blocks` (count genes, layer
  l in block floor(l * count / L)), `control_points` (count genes interpolated linearly over t = l / (L - 1), the
  same rule as mergekit's gradient lists); with `modules: [attn, mlp]` attention and MLP tensors get separate genes
  (a layer's norms follow its attention gene);
- `tensors: embed` / `tensors: lm_head` genes set the input embeddings / output head alone;
- tensors not covered by any gene (the final norm; embeddings and lm_head without genes of their own) take the
  model's fixed value when one is given, else its global gene, else the first layer's value (mergekit's rule for
  tensors outside the layers).
The result is written in mergekit's own terms: scalars, per-layer lists and `{filter, value}` conditions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from evomerge.errors import UserError
from evomerge.recipe import METHODS_NEEDING_BASE, ModelEntry, Recipe
from evomerge.reference import REQUIRED, Derived, Key, names, required

ROLES = ("base", "instruct", "language")
GRANULARITIES = ("global", "per_layer", "blocks", "control_points")
MODULES = ("attn", "mlp")
TENSOR_GROUPS = ("embed", "lm_head")
OPTIMIZERS = ("cmaes", "tpe", "gp", "nsga2", "optuna-cmaes", "random")
# mergekit's per-model and method-wide parameters that a gene may make free, per method.
PER_MODEL_PARAMS: dict[str, tuple[str, ...]] = {
    "linear": ("weight",), "task_arithmetic": ("weight",), "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"), "dare_linear": ("weight", "density"),
    "breadcrumbs": ("weight", "density", "gamma"), "breadcrumbs_ties": ("weight", "density", "gamma"),
    "della": ("weight", "density", "epsilon"), "della_linear": ("weight", "density", "epsilon"), "slerp": (),
}
SHARED_PARAMS: dict[str, tuple[str, ...]] = {
    "linear": (), "task_arithmetic": ("lambda",), "ties": ("lambda",), "dare_ties": ("lambda",),
    "dare_linear": ("lambda",), "breadcrumbs": ("lambda",), "breadcrumbs_ties": ("lambda",), "della": ("lambda",),
    "della_linear": ("lambda",), "slerp": ("t",),
}
_FILTER = {"embed": "embed_tokens", "lm_head": "lm_head", "mlp": "mlp", "layers": "layers."}


@dataclass(frozen=True)
class ModelSpec:
    """One model of the space: a short name, its role, and a local directory or a Hugging Face id."""

    name: str
    role: str
    ref: str  # an absolute local path, or a hub id when `hub` is true
    hub: bool = False
    language: str | None = None

    @property
    def path(self) -> str:
        return self.ref


@dataclass(frozen=True)
class GeneSpec:
    """A gene family as written in the YAML (expands into one or more optimizer dimensions)."""

    name: str
    parameter: str
    models: tuple[str, ...]  # () = a method-wide parameter
    granularity: str
    low: float
    high: float
    init: float
    step: float
    count: int | None = None
    modules: tuple[str, ...] = ()
    tensors: str | None = None

    def dims(self, n_layers: int) -> list[tuple[str, str | None, int | None]]:
        """(dimension name, module kind, index) for every optimizer dimension of this family, in order."""
        if self.granularity == "global":
            return [(self.name, None, None)]
        n = {"per_layer": n_layers, "blocks": self.count, "control_points": self.count}[self.granularity]
        tag = {"per_layer": "", "blocks": "b", "control_points": "p"}[self.granularity]
        kinds: Sequence[str | None] = self.modules or (None,)
        return [(f"{self.name}{'.' + k if k else ''}[{tag}{i}]", k, i) for k in kinds for i in range(n)]

    def layer_values(self, values: Sequence[float], n_layers: int) -> list[float]:
        """This family's per-layer values from its dimensions' values (one module kind's slice)."""
        if self.granularity == "per_layer":
            return list(values)
        if self.granularity == "blocks":
            return [values[l * len(values) // n_layers] for l in range(n_layers)]
        out = []  # control points: mergekit's gradient interpolation
        for l in range(n_layers):
            t = l / (n_layers - 1) if n_layers > 1 else 1.0
            scaled = t * (len(values) - 1)
            i0 = int(scaled)
            i1 = min(len(values) - 1, i0 + 1)
            out.append((1 - (scaled - i0)) * values[i0] + (scaled - i0) * values[i1])
        return out


@dataclass(frozen=True)
class Gene:
    """One optimizer dimension: a bounded value, the family it belongs to and what it covers."""

    name: str
    family: str
    parameter: str
    models: tuple[str, ...]
    module: str | None
    index: int | None
    low: float
    high: float
    init: float
    step: float

    @property
    def model(self) -> str:
        return ",".join(self.models) if self.models else "*"

    @property
    def layer(self) -> int | None:
        return self.index


@dataclass(frozen=True)
class SeedCandidate:
    """A point evaluated before the optimizer's own (e.g. the paper's uniform settings)."""

    name: str
    values: Mapping[str, float]


@dataclass(frozen=True)
class EvalSetRef:
    """An eval set the fitness uses, and its weight in the scalar fitness."""

    path: str
    weight: float = 1.0


@dataclass(frozen=True)
class SearchSettings:
    """Optimizer, objectives and budget settings (`search:` in the YAML)."""

    optimizer: str = "cmaes"
    popsize: int = 6
    generations: int = 4
    sigma0: float | None = None
    restarts: int = 0  # cmaes: IPOP restarts (population doubles at each)
    objectives: Mapping[str, Any] | None = None  # {name: [{set, metric?, weight?}]}; default: one per eval set
    objective_weights: Mapping[str, float] | None = None  # weights of the objectives in the scalar fitness
    scalarize: str = "mean"  # mean or min (the worst objective)
    max_evals: int | None = None
    max_minutes: float | None = None
    target: float | None = None  # stop once the scalar fitness reaches this
    finalists: int = 3  # top trials re-scored on the holdout split at the end (0: none)
    first_pass_items: int | None = None  # cheap first pass: score this many dev items per set first ...
    first_pass_min_fraction: float = 0.5  # ... and prune when that scores below this fraction of the best first pass
    recheck_every: int | None = None  # also re-score the finalists on holdout every K generations
    pipeline: bool = True  # dispatch generation g+1 while g's last candidates finish (no barrier; search.py)
    tensor_parallel: int | None = None  # vLLM ranks (GPUs) per worker; None: the smallest that fits (memplan.py)
    max_model_len: int | None = None  # longest prompt + answer the engine serves (None: the model's, at most 4096)
    coarse_to_fine: float | None = None  # share of the generations for the uniform stage (None: one stage; stages.py)
    racing: Racing | None = None  # score dev items in batches and stop a candidate that cannot reach the bar


@dataclass(frozen=True)
class Racing:
    """`search.racing` (racing.py): the batches a candidate's dev items are scored in, the confidence of the bound
    that stops it, and how many leaders a single-objective search protects (None: `finalists`, at least 1)."""

    batches: int = 4
    confidence: float = 0.95
    keep: int | None = None

    def keep_for(self, finalists: int) -> int:
        return self.keep if self.keep is not None else max(1, finalists)


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
    seeds: tuple[SeedCandidate, ...] = ()

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
        """The optimizer's dimensions, in a fixed documented order: families as listed, then module kind, then
        layer/block/point ascending."""
        self.check_layers(n_layers)
        return [Gene(name, g.name, g.parameter, g.models, kind, idx, g.low, g.high, g.init, g.step)
                for g in self.genes for name, kind, idx in g.dims(n_layers)]

    def check_layers(self, n_layers: int) -> None:
        """Granularities that need more layers than the models have are errors."""
        for g in self.genes:
            if g.granularity == "blocks" and g.count > n_layers:
                raise UserError(f"{self.source}: genes[{g.name}].count", f"{g.count} blocks for {n_layers} layers",
                                f"use at most {n_layers}")
            if g.granularity == "control_points" and g.count > n_layers:
                raise UserError(f"{self.source}: genes[{g.name}].count", f"{g.count} points for {n_layers} layers",
                                f"use at most {n_layers}, or per_layer")

    def seed_values(self, seed: SeedCandidate, n_layers: int) -> dict[str, float]:
        """A seed candidate's value for every dimension (unnamed ones at their init)."""
        genes = self.expand(n_layers)
        out = {g.name: g.init for g in genes}
        for key, value in seed.values.items():
            hit = [g for g in genes if g.name == key or g.family == key]
            if not hit:
                raise UserError(f"{self.source}: seeds[{seed.name}].values.{key}", "no such gene",
                                "use a gene family name or a dimension name (see `evomerge space show`)")
            for g in hit:
                if not g.low <= value <= g.high:
                    raise UserError(f"{self.source}: seeds[{seed.name}].values.{key}",
                                    f"{value} is outside [{g.low}, {g.high}]", "move it inside the gene's bounds")
                out[g.name] = float(value)
        return out

    def uniform_genes(self) -> tuple[GeneSpec, ...]:
        """The space's uniform view: one global gene per (parameter, model or tied models) its genes set, named
        `w_<model>` for a weight (else `<parameter>_<model>`, `<parameter>_all` method-wide). Every layer, block,
        module and tensor group of that model takes the one value; bounds, init and step are those of the first
        gene family that sets it. What coarse to fine searches first (stages.py) and the quickstart's baseline."""
        out: dict[tuple[str, tuple[str, ...]], GeneSpec] = {}
        for g in self.genes:
            key = (g.parameter, g.models)
            if key not in out:
                who = "_".join(g.models) if g.models else "all"
                name = f"w_{who}" if g.parameter == "weight" else f"{g.parameter}_{who}"
                out[key] = GeneSpec(name, g.parameter, g.models, "global", g.low, g.high, g.init, g.step)
        return tuple(out.values())

    def recipe(self, values: Mapping[str, float], n_layers: int) -> Recipe:
        """Gene values (by dimension name) -> a mergekit-compatible recipe. Deterministic; see the module doc."""
        slots: dict[tuple[str | None, str], _Slot] = {}
        for g in self.genes:
            for model in g.models or (None,):
                slot = slots.setdefault((model, g.parameter), _Slot(n_layers))
                dims = g.dims(n_layers)
                if g.tensors:
                    slot.set_group(g.tensors, float(values[dims[0][0]]))
                elif g.granularity == "global":
                    slot.set_all(float(values[dims[0][0]]))
                else:
                    for kind in g.modules or (None,):
                        vals = [float(values[name]) for name, k, _ in dims if k == kind]
                        slot.set_layers(kind, g.layer_values(vals, n_layers))
        params: dict[str, dict[str, Any]] = {m.name: dict(self.fixed.get(m.name, {})) for m in self.merged_models}
        shared = dict(self.method_parameters)
        for (model, param), slot in slots.items():
            fixed = self.fixed.get(model, {}).get(param) if model else self.method_parameters.get(param)
            setting = slot.compile(fixed)
            if model is None:
                shared[param] = setting
            else:
                params[model][param] = setting
        base = self.base.ref if self.base and self.method in METHODS_NEEDING_BASE | {"slerp"} else None
        models = tuple(ModelEntry(m.ref, params[m.name]) for m in self.merged_models)
        return Recipe(self.method, models, base, shared, self.dtype)


class _Slot:
    """The values one (model, parameter) takes across the model, assembled from genes, then written as a
    mergekit setting."""

    def __init__(self, n_layers: int) -> None:
        self.n = n_layers
        self.layers: dict[str, list[float] | None] = {"attn": None, "mlp": None}
        self.groups: dict[str, float | None] = {"embed": None, "lm_head": None}
        self.all: float | None = None

    def set_all(self, v: float) -> None:
        self.all = v

    def set_group(self, group: str, v: float) -> None:
        self.groups[group] = v

    def set_layers(self, kind: str | None, vals: list[float]) -> None:
        for k in ([kind] if kind else list(self.layers)):
            self.layers[k] = vals

    def compile(self, fixed: Any) -> Any:
        fallback = float(fixed) if isinstance(fixed, (int, float)) and not isinstance(fixed, bool) else None
        base_value = self.all if self.all is not None else fallback
        attn = self.layers["attn"] or self.layers["mlp"]
        mlp = self.layers["mlp"] or self.layers["attn"]
        if attn is None:
            attn = mlp = [base_value] * self.n
        other = base_value if base_value is not None else attn[0]  # mergekit: outside tensors take entry 0
        embed = self.groups["embed"] if self.groups["embed"] is not None else other
        head = self.groups["lm_head"] if self.groups["lm_head"] is not None else other
        conds: list[dict[str, Any]] = []
        if embed != other:
            conds.append({"filter": _FILTER["embed"], "value": embed})
        if head != other:
            conds.append({"filter": _FILTER["lm_head"], "value": head})
        if mlp != attn:
            conds.append({"filter": _FILTER["mlp"], "value": _squash(mlp)})
        if attn[0] == other:
            conds.append({"value": _squash(attn)})
        else:
            conds += [{"filter": _FILTER["layers"], "value": _squash(attn)}, {"value": other}]
        return conds[0]["value"] if len(conds) == 1 else conds


def _squash(vals: list[float]) -> float | list[float]:
    return vals[0] if all(v == vals[0] for v in vals) else list(vals)


# ---------------------------------------------------------------------------------------------------------------
DTYPES = ("float32", "bfloat16", "float16")
METHOD_FLAGS = ("normalize", "int8_mask", "rescale", "random_seed")  # merge.parameters any method takes
_S = SearchSettings()
# Every key of a space, section by section ("models[]": each entry of the models list), described once: parse_space
# reads each section's allowed and required keys from here and docs/reference.md is generated from it
# (evomerge/reference.py). A new key: add a Key to its section (and read it in parse_space).
SPACE_SECTIONS: dict[str, str] = {
    "": "A space is one YAML mapping.",
    "models[]": "Each model of the merge. Give exactly one of `path` and `hf`.",
    "build": "Build the tiny miniature models (evomerge/miniature) when the directory is absent.",
    "merge": "The merge method and what stays fixed.",
    "genes[]": "A gene family: one free parameter, expanded into one or more optimizer dimensions by its "
               "granularity. Give `model`, `models` (tied: one gene shared) or neither (a method-wide parameter).",
    "seeds[]": "A candidate evaluated before the optimizer's own (e.g. the paper's uniform settings).",
    "eval": "The eval sets the fitness uses.",
    "eval.sets[]": "One eval set (a directory with card.yaml and items.jsonl; see the eval-set card below).",
    "search": "Optimizer, objectives and budget; every key is optional.",
    "search.first_pass": "A cheap first pass that prunes poor candidates before they are scored in full.",
    "search.coarse_to_fine": "The mapping form of `coarse_to_fine`.",
    "search.racing": "The mapping form of `racing`: each candidate's dev items in batches, stopped early when a "
                     "confidence bound says it cannot reach the leaders (single objective) or the front (several).",
}
SPACE_KEYS: dict[str, tuple[Key, ...]] = {
    "": (
        Key("models", list, "The models: one `instruct`, at most one `base`, any number of `language` models.",
            "[{name: eu, role: language, language: eu, path: ../models/latxa}]", REQUIRED, shape="(see models[])"),
        Key("build", dict, "Optional: build the miniature models first.", "{miniature: ../miniature/tiny}",
            shape="(see build)"),
        Key("merge", dict, "The merge method and its fixed values.", "{method: task_arithmetic}", REQUIRED,
            shape="(see merge)"),
        Key("genes", list, "The free parameters (at least one).", "[{parameter: weight, model: eu, low: 0, high: 1}]",
            REQUIRED, shape="(see genes[])"),
        Key("seeds", list, "Candidates evaluated first.", "[{name: uniform, values: {w_eu: 1.0}}]", (),
            shape="(see seeds[])"),
        Key("eval", dict, "The eval sets.", "{sets: [{path: ../eval_sets/belebele_eu}]}", REQUIRED,
            shape="(see eval)"),
        Key("search", dict, "Optimizer, objectives and budget.", "{optimizer: cmaes, popsize: 8, generations: 10}",
            {}, shape="(see search)")),
    "models[]": (
        Key("name", str, "Short name genes and seeds refer to; unique.", "eu", REQUIRED),
        Key("role", str, "`base`: the shared pre-trained ancestor; `instruct`: exactly one, whose config, "
            "tokenizer and chat template the merged model takes; `language`: a language-adapted model.",
            "language", REQUIRED, choices=ROLES),
        Key("path", str, "A local model directory (relative to the space file).", "../models/latxa-8b"),
        Key("hf", str, "A Hugging Face id, fetched through the local hub cache.", "HiTZ/Latxa-Llama-3.1-8B"),
        Key("language", str, "Language code; required for role `language`.", "eu")),
    "build": (
        Key("miniature", str, "Directory of the miniature models (relative to the space file).",
            "../miniature/tiny", REQUIRED),
        Key("seed", int, "Seed of the miniature build.", "0", 0)),
    "merge": (
        Key("method", str, "mergekit 0.1.5's merge method.", "task_arithmetic", REQUIRED,
            choices=tuple(sorted(PER_MODEL_PARAMS))),
        Key("dtype", str, "Dtype of the merge and of scoring.", "bfloat16", "float32", choices=DTYPES),
        Key("parameters", dict, "Method-wide fixed values: the method's shared parameter ("
            + "; ".join(f"{m}: {', '.join(p)}" for m, p in SHARED_PARAMS.items() if p)
            + f") and {', '.join(METHOD_FLAGS)}.", "{lambda: 1.0, normalize: false}", {}),
        Key("fixed", dict, "Per-model fixed values, by model name: "
            + "; ".join(f"{m}: {', '.join(p)}" for m, p in PER_MODEL_PARAMS.items() if p)
            + ". Each merged model needs a weight gene or a fixed weight.", "{instruct: {weight: 1.0}}", {},
            shape="{model: {parameter: value}}")),
    "genes[]": (
        Key("name", str, "The family's name (dimensions are NAME, NAME[i], NAME.attn[b0], ...); unique.", "w_eu",
            Derived("PARAMETER_MODELS (e.g. `weight_eu`)")),
        Key("parameter", str, "The free parameter: per-model (weight, density, gamma, epsilon) or method-wide "
            "(lambda, slerp's t), as the method has it.", "weight", REQUIRED),
        Key("model", str, "The one merged model the gene sets.", "eu"),
        Key("models", list, "Several merged models tied to one gene.", "[eu, ca]", shape="of model names"),
        Key("granularity", str, "`global`: one value; `per_layer`: one per decoder layer; `blocks`: `count` "
            "contiguous groups of layers; `control_points`: `count` points interpolated linearly over the layers.",
            "control_points", "global", choices=GRANULARITIES),
        Key("count", int, "Blocks or control points (at least 2 points); only with those granularities.", "4"),
        Key("modules", list, "Separate genes for attention and MLP tensors (a layer's norms follow attention); "
            "layer granularities only.", "[attn, mlp]", (), shape="of attn, mlp (both)"),
        Key("tensors", str, "Set the input embeddings or the output head alone (a global gene).", "embed",
            choices=TENSOR_GROUPS),
        Key("low", float, "Lower bound.", "0.0", REQUIRED),
        Key("high", float, "Upper bound (> low; density bounds lie in (0, 1]).", "1.0", REQUIRED),
        Key("init", float, "Initial value, within the bounds.", "0.5", Derived("(low + high) / 2")),
        Key("step", float, "Initial standard deviation of the optimizer (positive).", "0.25",
            Derived("(high - low) / 4"))),
    "seeds[]": (
        Key("name", str, "The seed's name in the ledger.", "uniform", Derived("`seed<i>`")),
        Key("values", dict, "Values by gene family or dimension name, within the gene's bounds; unnamed "
            "dimensions take their init.", "{w_eu: 1.0, w_instruct: 1.0}", REQUIRED, shape="{gene: number}")),
    "eval": (
        Key("sets", list, "The eval sets (at least one).", "[{path: ../eval_sets/belebele_eu, weight: 2}]",
            REQUIRED, shape="(see eval.sets[])"),
        Key("split", str, "The split the search scores (holdout is for the finalists' re-check).", "dev", "dev",
            choices=("dev", "holdout")),
        Key("max_items", int, "A seeded subset of at most this many items per set (positive).", "100")),
    "eval.sets[]": (
        Key("path", str, "The eval-set directory (relative to the space file).", "../eval_sets/belebele_eu",
            REQUIRED),
        Key("weight", float, "Its weight in the scalar fitness.", "1.0", 1.0)),
    "search": (
        Key("optimizer", str, "pycma's CMA-ES or an Optuna sampler.", "cmaes", _S.optimizer, choices=OPTIMIZERS),
        Key("popsize", int, "Candidates per generation (cmaes: at least 3).", "8", _S.popsize),
        Key("generations", int, "Generations.", "10", _S.generations),
        Key("sigma0", float, "CMA-ES initial step in the unit box.", "0.3", Derived("from the genes' steps")),
        Key("restarts", int, "CMA-ES IPOP restarts (the population doubles at each).", "2", _S.restarts),
        Key("objectives", dict, "Named objectives, each a list of {set, metric?, weight?}; nsga2 needs two or "
            "more.", "{eu: [{set: belebele_eu}], chat: [{set: ifeval_en, metric: prompt_acc}]}",
            Derived("one per eval set"), shape="{name: [{set, metric?, weight?}]}"),
        Key("objective_weights", dict, "Weights of the objectives in the scalar fitness.", "{eu: 2, chat: 1}",
            Derived("equal"), shape="{objective: number}"),
        Key("scalarize", str, "Fold the objectives by their weighted mean, or their minimum.", "min", _S.scalarize,
            choices=("mean", "min")),
        Key("max_evals", int, "Stop after this many evaluations in all.", "200", _S.max_evals),
        Key("max_minutes", float, "Stop after this much wall time.", "120", _S.max_minutes),
        Key("target", float, "Stop once the scalar fitness reaches this.", "0.8", _S.target),
        Key("finalists", int, "Top trials re-scored on holdout at the end (0: none).", "3", _S.finalists),
        Key("first_pass", dict, "Score `items` dev items per set first; prune below `min_fraction` of the best "
            "first pass so far.", "{items: 20, min_fraction: 0.5}", None, shape="(see search.first_pass)"),
        Key("recheck_every", int, "Also re-score the finalists on holdout every K generations.", "5",
            _S.recheck_every),
        Key("pipeline", bool, "Ask the next generation as soon as this one is dispatched (false: a barrier at "
            "each generation's end).", "false", _S.pipeline),
        Key("tensor_parallel", int, "vLLM ranks (GPUs) per worker.", "2", Derived("the smallest that fits")),
        Key("max_model_len", int, "Longest prompt + answer the engine serves.", "4096",
            Derived("the model's, at most 4096")),
        Key("coarse_to_fine", (bool, dict), "First search the uniform view (one global gene per model and "
            "parameter) for a share of the generations (true: a third), then the space's own genes seeded with "
            "its best points.", "{uniform_share: 0.25}", False, shape="(see search.coarse_to_fine)"),
        Key("racing", (bool, dict), "Score each candidate's dev items in batches and stop it once a confidence bound "
            "says it cannot reach the leaders or the front (PRUNED; true: the defaults below). Replaces "
            "`first_pass`.", "{batches: 4, confidence: 0.95}", False, shape="(see search.racing)")),
    "search.first_pass": (
        Key("items", int, "Dev items per set in the first pass (positive).", "20", REQUIRED),
        Key("min_fraction", float, "Prune when the first pass scores below this fraction of the best, in (0, 1].",
            "0.5", _S.first_pass_min_fraction)),
    "search.racing": (
        Key("batches", int, "Batches of each set's dev items (2 or more; the bound is checked after each but the "
            "last).", "4", Racing.batches),
        Key("confidence", float, "One-sided confidence of the bound, in [0.5, 1): the most a candidate that would "
            "have made the cut is pruned with is 1 - confidence.", "0.95", Racing.confidence),
        Key("keep", int, "Single objective: the leaders a candidate must be able to join (the k-th best fitness "
            "so far is the bar).", "3", Derived("search.finalists, at least 1"))),
    "search.coarse_to_fine": (
        Key("uniform_share", float, "Share of the generations for the uniform stage, in (0, 1).", "0.33",
            REQUIRED),),
}


def _section(name: str) -> tuple[set[str], set[str]]:
    """A section's allowed and required keys, from SPACE_KEYS."""
    return names(SPACE_KEYS[name]), required(SPACE_KEYS[name])
_HUB_ID = __import__("re").compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _mapping(obj: Any, where: str, allowed: set[str], required: set[str] = frozenset(),
             sep: str = ".") -> dict[str, Any]:
    """`obj` as a mapping with only `allowed` keys and every `required` one; `sep` joins `where` and a key in
    messages ("file.yaml: key" at the top level, "merge.method" below it)."""
    if not isinstance(obj, dict):
        raise UserError(where, "must be a mapping", f"keys: {', '.join(sorted(allowed))}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise UserError(f"{where}{sep}{unknown[0]}", "unknown key", f"known keys: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(obj))
    if missing:
        raise UserError(f"{where}{sep}{missing[0]}", "missing", "this key is required")
    return obj


def _number(obj: Any, where: str) -> float:
    if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not math.isfinite(obj):
        raise UserError(where, f"must be a finite number, got {obj!r}", "write e.g. 0.5")
    return float(obj)


def _flag(obj: Any, where: str) -> bool:
    if not isinstance(obj, bool):
        raise UserError(where, f"must be true or false, not {obj!r}", "write true or false")
    return obj


def _posint(obj: Any, where: str) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int) or obj < 1:
        raise UserError(where, f"must be a positive integer, got {obj!r}", "e.g. 4")
    return obj


def _resolve(path: Any, where: str, root: Path) -> str:
    if not isinstance(path, str) or not path:
        raise UserError(where, "must be a path string", "write a path relative to the space file")
    p = Path(path).expanduser()
    return str((p if p.is_absolute() else root / p).resolve())


def parse_space(data: Any, source: str) -> Space:
    """Validate a parsed space YAML; `source` is the file it came from (relative paths resolve against it)."""
    root = Path(source).parent
    top = _mapping(data, source, *_section(""), sep=": ")

    def where(key: str) -> str:
        return f"{source}: {key}"

    models = _parse_models(top["models"], where, root)
    names = [m.name for m in models]
    roles = {m.name: m.role for m in models}

    merge = _mapping(top["merge"], where("merge"), *_section("merge"))
    method = merge["method"]
    if method not in PER_MODEL_PARAMS:
        raise UserError(where("merge.method"), f"unknown method {method!r}", f"use one of {', '.join(sorted(PER_MODEL_PARAMS))}")
    if method in METHODS_NEEDING_BASE | {"slerp"} and "base" not in roles.values():
        raise UserError(where("merge.method"), f"{method} needs a model with role base", "add the shared ancestor")
    if method == "slerp" and len(models) != 2:
        raise UserError(where("models"), "slerp merges exactly two models (base and one other)", "list two models")
    dtype = str(merge.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise UserError(where("merge.dtype"), f"unknown dtype {dtype!r}", "use float32, bfloat16 or float16")
    params = merge.get("parameters") or {}
    _mapping(params, where("merge.parameters"),
             set(SHARED_PARAMS[method]) | set(METHOD_FLAGS))
    fixed = merge.get("fixed") or {}
    _mapping(fixed, where("merge.fixed"), set(names))
    for k, v in fixed.items():
        _mapping(v, where(f"merge.fixed.{k}"), set(PER_MODEL_PARAMS[method]))
        for p, x in v.items():
            _number(x, where(f"merge.fixed.{k}.{p}"))

    genes = _parse_genes(top["genes"], where, method, roles)
    _check_coverage(genes, models, fixed, params, method, where)
    seeds = _parse_seeds(top.get("seeds") or [], where)

    ev = _mapping(top["eval"], where("eval"), *_section("eval"))
    if not isinstance(ev["sets"], list) or not ev["sets"]:
        raise UserError(where("eval.sets"), "must be a non-empty list", "list eval-set directories")
    sets = []
    for i, s in enumerate(ev["sets"]):
        s = _mapping(s, where(f"eval.sets[{i}]"), *_section("eval.sets[]"))
        sets.append(EvalSetRef(_resolve(s["path"], where(f"eval.sets[{i}].path"), root),
                               _number(s.get("weight", 1.0), where(f"eval.sets[{i}].weight"))))
    split = ev.get("split", "dev")
    if split not in ("dev", "holdout"):
        raise UserError(where("eval.split"), f"unknown split {split!r}", "use dev (holdout is for re-checks)")
    max_items = _posint(ev["max_items"], where("eval.max_items")) if ev.get("max_items") is not None else None

    s = _mapping(top.get("search") or {}, where("search"), *_section("search"))
    if s.get("optimizer", "cmaes") not in OPTIMIZERS:
        raise UserError(where("search.optimizer"), f"unknown optimizer {s['optimizer']!r}", f"use one of {', '.join(OPTIMIZERS)}")
    d = SearchSettings()
    objectives = s.get("objectives")
    if objectives is not None:
        _mapping(objectives, where("search.objectives"), set(objectives) if isinstance(objectives, dict) else set())
        if not objectives:
            raise UserError(where("search.objectives"), "empty", "name at least one objective, or drop the key")
    ow = s.get("objective_weights")
    if ow is not None:
        _mapping(ow, where("search.objective_weights"), set(objectives or {}))
        ow = {k: _number(v, where(f"search.objective_weights.{k}")) for k, v in ow.items()}
    if s.get("scalarize", "mean") not in ("mean", "min"):
        raise UserError(where("search.scalarize"), f"unknown scalarization {s['scalarize']!r}", "use mean or min")
    if s.get("optimizer") == "nsga2" and not objectives:
        raise UserError(where("search.objectives"), "nsga2 needs objectives", "declare search.objectives (two or more)")
    if "finalists" in s and (not isinstance(s["finalists"], int) or isinstance(s["finalists"], bool) or s["finalists"] < 0):
        raise UserError(where("search.finalists"), "must be a non-negative integer", "e.g. 3, or 0 for none")
    fp = s.get("first_pass")
    fp_items, fp_frac = None, d.first_pass_min_fraction
    if fp is not None:
        fp = _mapping(fp, where("search.first_pass"), *_section("search.first_pass"))
        fp_items = _posint(fp["items"], where("search.first_pass.items"))
        fp_frac = _number(fp.get("min_fraction", fp_frac), where("search.first_pass.min_fraction"))
        if not 0 < fp_frac <= 1:
            raise UserError(where("search.first_pass.min_fraction"), "must be in (0, 1]", "e.g. 0.5")
    coarse = _coarse_to_fine(s.get("coarse_to_fine", False), where("search.coarse_to_fine"))
    racing = _racing(s.get("racing", False), where("search.racing"))
    if racing is not None and fp is not None:
        raise UserError(where("search.racing"), "racing replaces first_pass", "keep one of search.racing and "
                        "search.first_pass")
    settings = SearchSettings(
        s.get("optimizer", "cmaes"),
        _posint(s["popsize"], where("search.popsize")) if "popsize" in s else d.popsize,
        _posint(s["generations"], where("search.generations")) if "generations" in s else d.generations,
        _number(s["sigma0"], where("search.sigma0")) if "sigma0" in s else None,
        int(_number(s["restarts"], where("search.restarts"))) if "restarts" in s else 0,
        objectives, ow, s.get("scalarize", "mean"),
        _posint(s["max_evals"], where("search.max_evals")) if "max_evals" in s else None,
        _number(s["max_minutes"], where("search.max_minutes")) if "max_minutes" in s else None,
        _number(s["target"], where("search.target")) if "target" in s else None,
        s.get("finalists", d.finalists), fp_items, fp_frac,
        _posint(s["recheck_every"], where("search.recheck_every")) if "recheck_every" in s else None,
        _flag(s.get("pipeline", d.pipeline), where("search.pipeline")),
        _posint(s["tensor_parallel"], where("search.tensor_parallel")) if s.get("tensor_parallel") is not None
        else None,
        _posint(s["max_model_len"], where("search.max_model_len")) if s.get("max_model_len") is not None else None,
        coarse, racing)

    build = top.get("build")
    mini, seed = None, 0
    if build is not None:
        build = _mapping(build, where("build"), *_section("build"))
        mini = _resolve(build["miniature"], where("build.miniature"), root)
        seed = build.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UserError(where("build.seed"), "must be an integer", "e.g. 0")
    return Space(source, models, method, dtype, dict(params), {k: dict(v) for k, v in fixed.items()},
                 genes, tuple(sets), split, max_items, settings, mini, seed, seeds)


def _racing(raw: Any, where: str) -> Racing | None:
    """`search.racing`: false (off), true (the defaults) or {batches?, confidence?, keep?}."""
    if isinstance(raw, bool):
        return Racing() if raw else None
    r = _mapping(raw, where, *_section("search.racing"))
    batches = _posint(r.get("batches", Racing.batches), f"{where}.batches")
    if batches < 2:
        raise UserError(f"{where}.batches", f"{batches} batch cannot race", "use 2 or more, e.g. 4")
    confidence = _number(r.get("confidence", Racing.confidence), f"{where}.confidence")
    if not 0.5 <= confidence < 1:
        raise UserError(f"{where}.confidence", f"{confidence} is not in [0.5, 1)", "e.g. 0.95")
    keep = _posint(r["keep"], f"{where}.keep") if "keep" in r else None
    return Racing(batches, confidence, keep)


def _coarse_to_fine(raw: Any, where: str) -> float | None:
    """`search.coarse_to_fine`: false (one stage), true (the uniform stage gets a third of the generations) or
    {uniform_share: F} with 0 < F < 1."""
    if isinstance(raw, bool):
        return 1 / 3 if raw else None
    c = _mapping(raw, where, *_section("search.coarse_to_fine"))
    share = _number(c["uniform_share"], f"{where}.uniform_share")
    if not 0 < share < 1:
        raise UserError(f"{where}.uniform_share", f"{share} is not in (0, 1)", "e.g. 0.33: a third of the generations")
    return share


def _parse_models(raw: Any, where, root: Path) -> tuple[ModelSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise UserError(where("models"), "must be a non-empty list", "list the base, instruct and language models")
    models: list[ModelSpec] = []
    for i, m in enumerate(raw):
        w = f"models[{i}]"
        m = _mapping(m, where(w), *_section("models[]"))
        if m["role"] not in ROLES:
            raise UserError(where(f"{w}.role"), f"unknown role {m['role']!r}", f"use one of {', '.join(ROLES)}")
        if m["role"] == "language" and not m.get("language"):
            raise UserError(where(f"{w}.language"), "missing", "tag a language model with its language code")
        if ("path" in m) == ("hf" in m):
            raise UserError(where(w), "give exactly one of path (a local directory) or hf (a Hugging Face id)",
                            "e.g. hf: meta-llama/Llama-3.1-8B-Instruct")
        if "hf" in m:
            if not isinstance(m["hf"], str) or not _HUB_ID.match(m["hf"]):
                raise UserError(where(f"{w}.hf"), f"{m['hf']!r} is not a Hugging Face id", "write ORG/NAME")
            models.append(ModelSpec(str(m["name"]), m["role"], m["hf"], True, m.get("language")))
        else:
            models.append(ModelSpec(str(m["name"]), m["role"], _resolve(m["path"], where(f"{w}.path"), root), False,
                                    m.get("language")))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UserError(where("models"), "model names must be unique", "rename the duplicates")
    roles = [m.role for m in models]
    if roles.count("instruct") != 1:
        raise UserError(where("models"), "exactly one model must have role instruct", "set role: instruct")
    if roles.count("base") > 1:
        raise UserError(where("models"), "at most one model may have role base", "keep one shared ancestor")
    return tuple(models)


def _parse_genes(raw: Any, where, method: str, roles: Mapping[str, str]) -> tuple[GeneSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise UserError(where("genes"), "must be a non-empty list", "declare at least one free parameter")
    merged = [n for n, r in roles.items() if r != "base"]
    genes: list[GeneSpec] = []
    for i, g in enumerate(raw):
        w = f"genes[{i}]"
        g = _mapping(g, where(w), *_section("genes[]"))
        param = g["parameter"]
        if "model" in g and "models" in g:
            raise UserError(where(w), "give model or models, not both", "models: [a, b] ties one gene to several")
        models = [g["model"]] if "model" in g else list(g.get("models") or [])
        if param in PER_MODEL_PARAMS[method]:
            if not models:
                raise UserError(where(f"{w}.model"), f"{param} is a per-model parameter", f"name one of {', '.join(merged)}")
            for m in models:
                if m not in merged:
                    raise UserError(where(f"{w}.model"), f"{m!r} is not a merged model", f"use one of {', '.join(merged)}")
        elif param in SHARED_PARAMS[method]:
            if models:
                raise UserError(where(f"{w}.model"), f"{param} is a method-wide parameter of {method}", "drop model/models")
        else:
            allowed = PER_MODEL_PARAMS[method] + SHARED_PARAMS[method]
            raise UserError(where(f"{w}.parameter"), f"{method} has no free parameter {param!r}",
                            f"use one of {', '.join(allowed)}")
        gran = g.get("granularity", "global")
        if gran not in GRANULARITIES:
            raise UserError(where(f"{w}.granularity"), f"unknown granularity {gran!r}", f"use one of {', '.join(GRANULARITIES)}")
        count = None
        if gran in ("blocks", "control_points"):
            if "count" not in g:
                raise UserError(where(f"{w}.count"), f"missing (granularity {gran})", "e.g. count: 4")
            count = _posint(g["count"], where(f"{w}.count"))
            if gran == "control_points" and count < 2:
                raise UserError(where(f"{w}.count"), "control points need at least 2", "or use granularity global")
        elif "count" in g:
            raise UserError(where(f"{w}.count"), f"only blocks and control_points take a count", "drop it")
        modules = g.get("modules") or []
        if not isinstance(modules, list) or any(m not in MODULES for m in modules) or len(set(modules)) != len(modules):
            raise UserError(where(f"{w}.modules"), f"must be a subset of {list(MODULES)}", "e.g. [attn, mlp]")
        if modules and gran == "global":
            raise UserError(where(f"{w}.modules"), "splits layer genes by module", "use a layer granularity")
        if modules and len(modules) == 1:
            raise UserError(where(f"{w}.modules"), "give both attn and mlp", "[attn, mlp]")
        tensors = g.get("tensors")
        if tensors is not None:
            if tensors not in TENSOR_GROUPS:
                raise UserError(where(f"{w}.tensors"), f"unknown tensor group {tensors!r}", f"use {' or '.join(TENSOR_GROUPS)}")
            if gran != "global":
                raise UserError(where(f"{w}.granularity"), f"a tensors: {tensors} gene is global", "drop granularity")
        low, high = _number(g["low"], where(f"{w}.low")), _number(g["high"], where(f"{w}.high"))
        if not low < high:
            raise UserError(where(f"{w}.high"), f"bounds are inverted or empty ({low} >= {high})", "make low < high")
        if param == "density" and not (0 < low and high <= 1):
            raise UserError(where(f"{w}.low"), "density bounds must lie in (0, 1]", "e.g. low: 0.1, high: 1.0")
        init = _number(g.get("init", (low + high) / 2), where(f"{w}.init"))
        if not low <= init <= high:
            raise UserError(where(f"{w}.init"), f"{init} is outside [{low}, {high}]", "move init inside the bounds")
        step = _number(g.get("step", (high - low) / 4), where(f"{w}.step"))
        if step <= 0:
            raise UserError(where(f"{w}.step"), "must be positive", "e.g. a quarter of the range")
        default = f"{param}_{'_'.join(models) if models else 'all'}" + (f"_{tensors}" if tensors else "")
        genes.append(GeneSpec(str(g.get("name", default)), param, tuple(models), gran, low, high, init, step,
                              count, tuple(modules), tensors))
    if len({g.name for g in genes}) != len(genes):
        raise UserError(where("genes"), "gene names must be unique", "give the genes distinct names")
    return tuple(genes)


def _check_coverage(genes, models, fixed, params, method, where) -> None:
    """Each (model, parameter, region) is set by at most one gene; each merged model has a weight."""
    seen: dict[tuple[str | None, str, str], str] = {}
    for g in genes:
        regions = [g.tensors] if g.tensors else (["all"] if g.granularity == "global" else ["layers"])
        for m in g.models or (None,):
            for r in regions:
                key = (m, g.parameter, r)
                if key in seen:
                    raise UserError(where(f"genes[{g.name}]"), f"covers what gene {seen[key]!r} already covers",
                                    "one gene per model, parameter and region; tie with models: [...]")
                seen[key] = g.name
            if (m, g.parameter, "all") in seen and any((m, g.parameter, r) in seen for r in ("layers",)):
                raise UserError(where(f"genes[{g.name}]"), "a global gene and a layer gene set the same parameter",
                                "keep one of them")
    needs_weight = "weight" in PER_MODEL_PARAMS[method]
    for m in models:
        if m.role == "base" or not needs_weight:
            continue
        has = any(m.name in g.models and g.parameter == "weight" and not g.tensors for g in genes)
        if not has and "weight" not in fixed.get(m.name, {}):
            raise UserError(where("merge.fixed"), f"model {m.name!r} has neither a weight gene nor a fixed weight",
                            f"add merge.fixed.{m.name}.weight or a gene")


def _parse_seeds(raw: Any, where) -> tuple[SeedCandidate, ...]:
    if not isinstance(raw, list):
        raise UserError(where("seeds"), "must be a list", "e.g. - {name: uniform, values: {w_eu: 1.0}}")
    seeds = []
    for i, s in enumerate(raw):
        s = _mapping(s, where(f"seeds[{i}]"), *_section("seeds[]"))
        vals = _mapping(s["values"], where(f"seeds[{i}].values"), set(s["values"]) if isinstance(s["values"], dict) else set())
        seeds.append(SeedCandidate(str(s.get("name", f"seed{i}")),
                                   {k: _number(v, where(f"seeds[{i}].values.{k}")) for k, v in vals.items()}))
    return tuple(seeds)


def load_space(path: str | Path) -> Space:
    """Read and validate a search-space YAML file."""
    from evomerge.yamlfile import load_yaml

    p = Path(path)
    data = load_yaml(p, "a search-space YAML file")
    return parse_space(data, str(p.resolve()))
