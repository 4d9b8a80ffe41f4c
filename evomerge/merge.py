"""Recipe + kernels -> merged weights, either as a model directory on disk or in place in resident tensors.

`plan_merge` reads only config.json files and safetensors headers and decides, for every output tensor, which stored
tensor each source contributes (a model with tied embeddings stores no lm_head: its embedding stands in, as in
mergekit) and what shape comes out. Then:
- `merge_to_disk` streams: per tensor, the sources' tensors are read, turned into the method's prepared inputs in
  their own memory, combined into a fresh output, written and dropped; peak memory is about (number of sources + 1)
  times the largest tensor, whatever the model's size;
- `ResidentMerge` prepares every tensor's inputs once (on any device) and merges each candidate straight into the
  live parameters of the model being scored, or streams it tensor by tensor; as one tensor-parallel rank
  (`shards.Shard`) it keeps and merges only that rank's slices.
Both run the same `prepare` and `combine` kernels (methods/) on tensors of the recipe's dtype, so a model exported
to disk is bit-for-bit the one a worker scored in memory (on the same kind of device).

Vocabularies. When an instruct model adds tokens (its embedding and lm_head have more rows), the merged model takes
its tokenizer and extra rows from the *tokenizer source*: the recipe's `tokenizer_source` (a model's path, or
"base"), by default the instruct model (the recipe's first non-base model). Every other source's vocabulary tensors
are completed with the tokenizer source's extra rows before merging (or cut to its row count), which is what
mergekit 0.1.5 does with `tokenizer_source: <that model>` when the tokenizers extend one another: the task-arithmetic
family then leaves those rows exactly as the tokenizer source has them. Tokenizers that number shared tokens
differently are refused. Any other shape difference, or a missing tensor, is an error.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from evomerge.architecture import Family, family_for, place_of
from evomerge.errors import UserError
from evomerge.methods import METHODS
from evomerge.recipe import Recipe
from evomerge.shards import Cut, Shard, sliceable
from evomerge.tensors import (DEFAULT_SHARD_BYTES, ModelFiles, TensorSpec, tokenizer_vocab, torch_dtype,
                              write_model_dir)


@dataclass(frozen=True)
class MergeReport:
    """What a disk merge wrote."""

    out_dir: Path
    n_tensors: int
    seconds: float


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: its name and shape, the name each source stores it under, and the row count of a
    vocabulary tensor whose sources disagree (None when every source has the output's shape)."""

    name: str
    shape: tuple[int, ...]
    stored: Mapping[str, str]
    vocab_rows: int | None = None


@dataclass
class MergePlan:
    """Everything a merge needs to know before reading a weight."""

    recipe: Recipe
    files: dict[str, ModelFiles]
    family: Family
    n_layers: int
    reference: str  # the model whose config, chat template and generation config the merged model takes
    tokenizer_source: str  # the model whose tokenizer and extra vocabulary rows the merged model takes
    tensors: list[TensorPlan]
    config: dict[str, Any]  # the merged model's config.json

    @property
    def vocab_differs(self) -> bool:
        """Whether the sources' vocabularies differ (so the tokenizer source matters)."""
        return any(t.vocab_rows is not None for t in self.tensors)

    def stated_recipe(self) -> Recipe:
        """The recipe with its tokenizer source written out when the vocabularies differ (so that an exported
        recipe says where the tokenizer and extra rows come from, and mergekit-yaml does the same)."""
        if self.vocab_differs and self.recipe.tokenizer_source is None:
            return dataclasses.replace(self.recipe, tokenizer_source=self.tokenizer_source)
        return self.recipe


def _same_model(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def _tokenizer_source(recipe: Recipe) -> str:
    """The model the merged model's tokenizer comes from (a recipe source)."""
    ts = recipe.tokenizer_source
    if ts is None:
        return recipe.inputs[0].model
    if ts == "base":
        if not recipe.base_model:
            raise UserError("tokenizer_source", "'base' names no model: the recipe has no base_model",
                            "name one of the models")
        return recipe.base_model
    for model in recipe.sources:
        if _same_model(ts, model):
            return model
    raise UserError("tokenizer_source", f"{ts!r} is not one of the merged models ('union' is not supported)",
                    "name one of the models (default: the first non-base model), or 'base'")


def _check_tokenizers(plan_files: Mapping[str, ModelFiles], source: str, rows: Mapping[str, int]) -> None:
    """Refuse vocabularies that do not extend one another: a token shared by two tokenizers must have one id."""
    ref = tokenizer_vocab(plan_files[source].path)
    if ref is None:
        return
    for model, files in plan_files.items():
        if model == source:
            continue
        vocab = tokenizer_vocab(files.path)
        if vocab is None:
            continue
        limit = min(rows[model], rows[source])
        for token, idx in vocab.items():
            if idx < limit and ref.get(token, idx) != idx:
                raise UserError(model, f"its tokenizer gives {token!r} id {idx}, the tokenizer source {source} "
                                       f"gives it {ref[token]}",
                                "only vocabularies that extend one another (tokens added at the end) can be merged")


def plan_merge(recipe: Recipe, allow_pickle: bool = False) -> MergePlan:
    """Open every source (config and headers only) and plan every output tensor; bad inputs raise UserError."""
    files = {name: ModelFiles.open(name, allow_pickle=allow_pickle) for name in recipe.sources}
    reference = recipe.inputs[0].model
    ref_files = files[reference]
    family = family_for(ref_files.config)
    layers: dict[str, int] = {}
    for name, f in files.items():
        try:
            layers[name] = family.num_layers(f.config)
        except ValueError as e:
            raise UserError(name, str(e), "point at a decoder-only transformer of one family") from None
    if len(set(layers.values())) != 1:
        raise UserError("models", f"layer counts differ: {layers}", "merge models of one architecture")
    names = ref_files.names()
    odd = family.unplaced(names)
    if odd is not None:
        arch = (ref_files.config.get("architectures") or [ref_files.config.get("model_type", "?")])[0]
        raise UserError(odd, f"cannot tell which decoder layer this {arch} tensor belongs to",
                        "describe the family in a YAML file named by EVOMERGE_ARCHITECTURES "
                        "(schema in evomerge/architecture.py)")
    for name in names:
        if place_of(name).layer != family.layer_of(name):
            raise UserError(name, f"families disagree on its layer ({family.name} vs another)",
                            "make the layer patterns in EVOMERGE_ARCHITECTURES files distinct")
    tok_source = _tokenizer_source(recipe)
    wanted = set(names)
    stored: dict[str, dict[str, str]] = {n: {} for n in names}
    for model, f in files.items():
        extra = [n for n in f.names() if n not in wanted and not family.tied_to(n)]
        if extra:
            raise UserError(model, f"has tensor {extra[0]}, which {reference} lacks",
                            "merge models of one architecture")
        for n in names:
            if f.has(n):
                stored[n][model] = n
                continue
            alias = next((a for a in family.tied_to(n) if f.has(a)), None)
            if alias is None:
                raise UserError(model, f"tensor {n} missing", "merge models of one architecture")
            stored[n][model] = alias
    tensors: list[TensorPlan] = []
    vocab_rows: dict[str, int] = {}
    for n in names:
        shapes = {model: files[model].shape(stored[n][model]) for model in files}
        ref_shape = shapes[reference]
        if len(set(shapes.values())) == 1:
            tensors.append(TensorPlan(n, ref_shape, stored[n]))
            continue
        rest = {s[1:] for s in shapes.values()}
        if not family.is_vocab(n) or len(rest) != 1 or any(len(s) == 0 for s in shapes.values()):
            listed = ", ".join(f"{m}: {list(s)}" for m, s in shapes.items())
            raise UserError(n, f"shapes differ across models ({listed})", "merge models of one architecture")
        rows = shapes[tok_source][0]
        tensors.append(TensorPlan(n, (rows, *ref_shape[1:]), stored[n], rows))
        vocab_rows.update({m: s[0] for m, s in shapes.items()})
    if vocab_rows:
        _check_tokenizers(files, tok_source, vocab_rows)
    config = dict(ref_files.config)
    config["torch_dtype"] = recipe.dtype
    config.pop("dtype", None)
    if vocab_rows:
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else None
        target = dict(text) if text is not None else config
        target["vocab_size"] = vocab_rows[tok_source]
        if text is not None:
            config["text_config"] = target
    return MergePlan(recipe, files, family, layers[reference], reference, tok_source, tensors, config)


def load_inputs(plan: MergePlan, tp: TensorPlan, dtype: torch.dtype) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """(base, non-base inputs in recipe order) for one output tensor, as fresh tensors of `dtype`; vocabulary
    tensors completed with (or cut to) the tokenizer source's rows."""
    recipe = plan.recipe
    donor: torch.Tensor | None = None
    if tp.vocab_rows is not None:
        donor = plan.files[plan.tokenizer_source].get(tp.stored[plan.tokenizer_source], dtype)

    handed_out = False

    def load(model: str) -> torch.Tensor:
        nonlocal handed_out
        if donor is not None and model == plan.tokenizer_source:
            # the donor itself the first time (padding copies happen while loading, before anything is consumed)
            first, handed_out = not handed_out, True
            return donor if first else donor.clone()
        t = plan.files[model].get(tp.stored[model], dtype)
        if tp.vocab_rows is None or t.shape[0] == tp.vocab_rows:
            return t
        if t.shape[0] > tp.vocab_rows:
            return t[:tp.vocab_rows].clone()
        assert donor is not None
        full = torch.empty(tp.shape, dtype=dtype)
        full[:t.shape[0]] = t
        full[t.shape[0]:] = donor[t.shape[0]:]
        return full

    base = load(recipe.base_model) if recipe.base_model else None
    inputs = [load(m.model) for m in recipe.inputs]
    return base, inputs


def merge_to_disk(recipe: Recipe, out_dir: str | Path, *, allow_pickle: bool = False,
                  max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> MergeReport:
    """Merge tensor by tensor into a model directory (written atomically): each source tensor is read when needed,
    the method's prepared inputs take its memory, and the merged tensor is written and dropped at once."""
    start = time.perf_counter()
    plan = plan_merge(recipe, allow_pickle)
    method = METHODS[recipe.merge_method]
    dtype = torch_dtype(recipe.dtype)
    specs = [TensorSpec(tp.name, tp.shape, dtype) for tp in plan.tensors]

    def merged() -> Iterator[tuple[str, torch.Tensor]]:
        for tp in plan.tensors:
            base, inputs = load_inputs(plan, tp, dtype)
            coeffs = recipe.coefficients(tp.name, plan.n_layers)
            prepared = method.prepare(base, inputs, consume=True, coeffs=coeffs)
            del inputs
            out = torch.empty(tp.shape, dtype=dtype)
            method.combine(base, prepared, coeffs, out)
            del base, prepared
            yield tp.name, out
            del out

    out = write_model_dir(Path(out_dir), specs, merged(), config=plan.config,
                          side_files_from=plan.files[plan.reference].path,
                          tokenizer_from=plan.files[plan.tokenizer_source].path, max_shard_bytes=max_shard_bytes)
    return MergeReport(out, len(specs), time.perf_counter() - start)


def _ties_embeddings(config: Mapping[str, Any]) -> bool:
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else {}
    return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))


class ResidentMerge:
    """Source tensors prepared once on a device; every candidate recipe is merged in place into `targets`.

    `targets` are the live parameters of a model being scored (name -> tensor of the recipe's dtype and the merged
    shape). Per candidate nothing proportional to the model is allocated: `combine` writes straight into the
    targets, through per-thread scratch buffers of a cache's size. A model that ties lm_head to its embedding has no
    separate lm_head target; the merged embedding serves both, as it does when the model is loaded from disk.
    Without `targets` (None), `merged(recipe)` streams the merged tensors one by one instead (vLLM's
    `reload_weights` takes an iterator; no second copy of the model is kept), through buffers made once: one per
    tensor outside the layers, and one per tensor of a layer for two consecutive layers (double buffering); `pin`
    pins them (host memory that a GPU copies from fast).
    `keep_draws`: DARE methods keep the template seed's random draws (int16, one per element and input) instead of
    drawing again for every candidate (about 10x faster per candidate; the masks are the same either way).
    `device`: where the prepared sources live (default: the targets' device, else the CPU).

    `shard`: one tensor-parallel rank (`evomerge/shards.py`). Each tensor is prepared whole, then only the slice
    that rank's loader reads is kept (`cuts`; about 1/world of the sources), and every candidate is merged into that
    slice of a whole-shaped output, equal bit for bit to the same slice of the unsharded merge. The rest of a sliced
    output is NaN, never written: a loader reading outside its slice would score NaN, not quietly wrong weights.
    Tensors the rules keep whole, and every tensor of a merge that cannot be done on slices (`shards.sliceable`:
    rescaled DARE/TIES/breadcrumbs, DELLA), are prepared and merged whole, as without a shard.
    """

    def __init__(self, recipe: Recipe, targets: Mapping[str, torch.Tensor] | None,
                 device: str | torch.device | None = None, allow_pickle: bool = False, keep_draws: bool = True,
                 shard: Shard | None = None, pin: bool = False):
        plan = plan_merge(recipe, allow_pickle)
        self.method = METHODS[recipe.merge_method]
        self.sources = recipe.sources
        self.tokenizer_source = plan.tokenizer_source
        self.n_layers = plan.n_layers
        self.targets: dict[str, torch.Tensor] = {}
        self.dtype = dtype = torch_dtype(recipe.dtype)
        if device is None:
            device = next(iter(targets.values())).device if targets else "cpu"
        self.device = device = torch.device(device)
        self.pin = pin
        self.keep_draws = keep_draws
        self.cuts: dict[str, Cut] = {}  # tensor -> the slice this rank keeps (sharded merges only)
        self._seeds: dict[str, Any] = {}  # tensor -> the template's random seed, for sliced randomized merges
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._slots: dict[str, tuple] = {}  # tensor -> the stream buffer it is merged into (targets None)
        self._buffers: dict[tuple, torch.Tensor] = {}
        layer_run, last_layer, position = -1, None, 0
        self._prepared: dict[str, tuple[torch.Tensor | None, list[torch.Tensor]]] = {}
        for tp in plan.tensors:
            if targets is not None:
                target = targets.get(tp.name)
                if target is None:
                    if plan.family.tied_to(tp.name) and _ties_embeddings(plan.config):
                        continue  # lm_head is the embedding in the live model
                    raise UserError(tp.name, "tensor not found in the model being scored", "architectures differ")
                if tuple(target.shape) != tp.shape or target.dtype != dtype:
                    raise UserError(tp.name, f"the model being scored holds {list(target.shape)} {target.dtype}, "
                                             f"the merge makes {list(tp.shape)} {dtype}",
                                    "load the instruct model in the recipe's dtype")
                self.targets[tp.name] = target
            self._shapes[tp.name] = tuple(tp.shape)
            layer = plan.family.layer_of(tp.name)
            if layer is None:
                self._slots[tp.name] = (tp.name,)
            else:
                if layer != last_layer:
                    layer_run, last_layer, position = layer_run + 1, layer, 0
                self._slots[tp.name] = (position, layer_run % 2, tuple(tp.shape))
                position += 1
            template = recipe.coefficients(tp.name, plan.n_layers)
            cut = None
            if shard is not None and sliceable(recipe.merge_method, template.shared, keep_draws):
                cut = shard.cut(plan.config, plan.family, tp.name, tp.shape)
            base, inputs = load_inputs(plan, tp, dtype)
            base = base.to(device) if base is not None else None
            # the template's coefficients: DARE keeps its seed's draws (2 bytes an element and input) unless told not
            prepared = self.method.prepare(base, [t.to(device) for t in inputs], consume=True,
                                           coeffs=template if keep_draws else None)
            del inputs
            if cut is not None:  # prepared whole (global ranks, whole draws), kept in slices
                base = _slice(base, cut, tp.shape)
                prepared = [_slice(t, cut, tp.shape) for t in prepared]
                self.cuts[tp.name] = cut
                self._seeds[tp.name] = template.shared.get("random_seed")
            self._prepared[tp.name] = (base, prepared)

    def resident_bytes(self) -> int:
        """Bytes of the prepared sources this merge keeps (base, task vectors, rankings, draws)."""
        return sum(t.numel() * t.element_size() for base, prepared in self._prepared.values()
                   for t in ([base] if base is not None else []) + list(prepared))

    def check(self, recipe: Recipe) -> None:
        """Raise ValueError unless this merge can serve `recipe`: the template's models, method and tokenizer
        source, and for tensors kept in slices the template's rescale and random_seed (what made slicing exact).
        Cheap; `apply` and `merged` call it, and a caller that must not fail half-way calls it first."""
        if recipe.sources != self.sources or METHODS[recipe.merge_method] is not self.method:
            raise ValueError("a resident merge serves one set of models and one method")
        if _tokenizer_source(recipe) != self.tokenizer_source:
            raise ValueError("a resident merge serves one tokenizer source")
        for name in self.cuts:
            shared = recipe.coefficients(name, self.n_layers).shared
            if not sliceable(recipe.merge_method, shared, self.keep_draws) or \
                    shared.get("random_seed") != self._seeds[name]:
                raise ValueError(f"{name}: rescale/random_seed differ from the template's, whose merge was "
                                 "prepared in tensor-parallel slices")

    def _combine(self, name: str, base: torch.Tensor | None, prepared: list[torch.Tensor], recipe: Recipe,
                 out: torch.Tensor) -> None:
        """Merge tensor `name` of `recipe` into `out` (whole-shaped), or into this rank's slice of it."""
        coeffs = recipe.coefficients(name, self.n_layers)
        cut = self.cuts.get(name)
        if cut is None:
            self.method.combine(base, prepared, coeffs, out)
            return
        shape = self._shapes[name]
        coeffs = dataclasses.replace(coeffs, numel=math.prod(shape))
        part = cut.of(out)
        if part.is_contiguous():  # a split on the first dimension: rows in one block
            self.method.combine(base, prepared, coeffs, part)
            return
        # a split on the input dimension: merged contiguous, then copied into the columns
        key = ("part", cut.shape(shape))
        scratch = self._buffers.get(key)
        if scratch is None:
            with torch.inference_mode(False):
                scratch = torch.empty(cut.shape(shape), dtype=self.dtype, device=out.device)
            self._buffers[key] = scratch
        part.copy_(self.method.combine(base, prepared, coeffs, scratch))

    @torch.no_grad()
    def apply(self, recipe: Recipe) -> None:
        """Write the merge of `recipe` (same models and method as at construction) into the targets."""
        self.check(recipe)
        if not self.targets:
            raise ValueError("this resident merge has no targets; use merged()")
        for name, (base, prepared) in self._prepared.items():
            self._combine(name, base, prepared, recipe, self.targets[name])
        settle(self.device)

    def merged(self, recipe: Recipe) -> Iterator[tuple[str, torch.Tensor]]:
        """The merge of `recipe`, tensor by tensor in checkpoint order: (name, tensor). The tensors are reused
        buffers (made on the first candidate, never per candidate): the consumer must be done with a layer's
        tensors before it takes those of the layer after next, as vLLM's reload_weights is (it loads a layer as
        soon as all its tensors are in), and with the others before the next candidate. With a shard, only this
        rank's slice of each sliced tensor is merged (the rest is NaN). The recipe is checked here, before the
        first tensor is asked for, so a consumer never gets part of a candidate it cannot serve."""
        self.check(recipe)
        return self._stream(recipe)

    def _stream(self, recipe: Recipe) -> Iterator[tuple[str, torch.Tensor]]:
        for name, (base, prepared) in self._prepared.items():
            out = self._buffers.get(self._slots[name])
            if out is None:
                with torch.inference_mode(False):  # kept across calls: never an inference tensor
                    out = torch.empty(self._shapes[name], dtype=self.dtype, device=self.device,
                                      pin_memory=self.pin)
                    if name in self.cuts:
                        out.fill_(float("nan"))
                self._buffers[self._slots[name]] = out
            with torch.no_grad():
                self._combine(name, base, prepared, recipe, out)
            yield name, out


def settle(device: torch.device) -> None:
    """Wait until `device` has run the kernels queued on it: a GPU merge returns before its kernels finish, and
    the caller's clock (merge + swap seconds) would otherwise charge them to scoring. Nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _slice(t: torch.Tensor | None, cut: Cut, shape: tuple[int, ...]) -> torch.Tensor | None:
    """A prepared tensor's part for one rank: tensors with the whole tensor's element count (task vectors, ranks,
    draws; some stored flat) are cut and copied (the whole one can go); others (norms, angles, seeds) are kept."""
    if t is None or t.numel() != math.prod(shape):
        return t
    return cut.of(t.reshape(shape)).clone(memory_format=torch.contiguous_format)
