"""Tensor names -> (decoder layer, module kind), from a table of architecture families a user extends without code.

A *family* is a handful of name patterns: which tensors are decoder layers (and which number is the layer), which
module kind a tensor belongs to, which tensors have the vocabulary as their first axis (embeddings, lm_head), which
tensor stands in for a missing one when a model ties its embeddings (a tied model stores no `lm_head.weight`), and
which numbered tensors are *not* decoder layers (a vision tower's layers). `BUILTIN_FAMILIES` covers Llama, Mistral,
Qwen2, Qwen3, Gemma, Gemma 2 and Gemma 3 (text-only and multimodal checkpoints). A new family is a YAML or JSON file
in the same schema, named in the environment variable `EVOMERGE_ARCHITECTURES` (several files separated by
`os.pathsep`); its families are tried before the built-in ones and replace a built-in family of the same name:

    families:
      gpt2_like:
        architectures: [MyGPTForCausalLM]       # config.json "architectures" values that pick this family
        model_types: [mygpt]                    # or its "model_type"
        num_layers_key: n_layer                 # dotted key of the layer count in config.json
        layer: '^transformer\\.h\\.(\\d+)\\.'      # regex; group 1 is the decoder layer index
        kinds:                                  # first regex that matches (re.search) gives the kind
          attn: '\\.attn\\.'
          mlp: '\\.mlp\\.'
          embed: '^transformer\\.wte\\.'
          lm_head: '^lm_head\\.'
          norm: '\\.ln_'
        vocab: ['^transformer\\.wte\\.weight$', '^lm_head\\.weight$']
        tied: {lm_head.weight: [transformer.wte.weight]}
        outside: []                             # regexes of numbered tensors outside the decoder layers

Pure: reads names, config dicts and (for user families) the files the environment names, never weight files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from evomerge.errors import UserError

ENV_VAR = "EVOMERGE_ARCHITECTURES"
KINDS = ("attn", "mlp", "norm", "embed", "lm_head", "other")

# The module kinds of every built-in family, in the order they are tried. q_norm/k_norm sit inside self_attn and
# count as attention, as mergekit's `filter: self_attn` (a substring test) counts them.
_DEFAULT_KINDS: dict[str, str] = {
    "attn": r"(?:^|\.)self_attn\.|\.attn\.",
    "mlp": r"\.mlp\.",
    "embed": r"(?:^|\.)embed_tokens\.",
    "lm_head": r"(?:^|\.)lm_head\.",
    "norm": r"norm",
}
_DECODER = {
    "num_layers_key": "num_hidden_layers",
    "layer": r"^model\.layers\.(\d+)\.",
    "kinds": _DEFAULT_KINDS,
    "vocab": [r"^model\.embed_tokens\.weight$", r"^lm_head\.weight$"],
    "tied": {"lm_head.weight": ["model.embed_tokens.weight"]},
    "outside": [],
}
# The built-in table, in the schema of a user file. mergekit 0.1.5's architecture JSONs for these families name
# the same tensors (mergekit/_data/architectures/{llama,mistral,qwen2,qwen3,gemma*}.json).
BUILTIN_FAMILIES: dict[str, dict[str, Any]] = {
    "decoder": {
        **_DECODER,
        "architectures": ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                          "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"],
        "model_types": ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"],
    },
    # Gemma 3 4B+ checkpoints hold a vision tower beside the text decoder. The hub's files name the decoder
    # `language_model.model.*`; transformers 5 saves it as `model.language_model.*`. Vision-tower and projector
    # tensors are merged as tensors outside the decoder layers (gradient lists give them their first entry).
    "gemma3_multimodal": {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_types": ["gemma3"],
        "num_layers_key": "text_config.num_hidden_layers",
        "layer": r"^(?:model\.language_model|language_model\.model)\.layers\.(\d+)\.",
        "kinds": _DEFAULT_KINDS,
        "vocab": [r"^(?:model\.language_model|language_model\.model)\.embed_tokens\.weight$",
                  r"^(?:language_model\.)?lm_head\.weight$"],
        "tied": {"lm_head.weight": ["model.language_model.embed_tokens.weight",
                                    "language_model.model.embed_tokens.weight"],
                 "language_model.lm_head.weight": ["language_model.model.embed_tokens.weight"]},
        "outside": [r"(?:^|\.)vision_tower\.", r"(?:^|\.)multi_modal_projector\."],
    },
}
_KEYS = {"architectures", "model_types", "num_layers_key", "layer", "kinds", "vocab", "tied", "outside"}
_NUMBERED = re.compile(r"\.\d+\.")


@dataclass(frozen=True)
class TensorPlace:
    """Where a tensor sits: its decoder layer (None outside the layers) and its module kind."""

    layer: int | None
    kind: str  # "attn", "mlp", "norm", "embed", "lm_head" or "other"


@dataclass(frozen=True)
class Family:
    """One architecture family's tensor-name patterns (see the module docstring for the fields)."""

    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    num_layers_key: str
    layer: re.Pattern[str]
    kinds: tuple[tuple[str, re.Pattern[str]], ...]
    vocab: tuple[re.Pattern[str], ...]
    tied: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    outside: tuple[re.Pattern[str], ...] = ()

    def layer_of(self, name: str) -> int | None:
        """The decoder layer index of a tensor, or None when it lies outside the decoder layers."""
        m = self.layer.search(name)
        return int(m.group(1)) if m else None

    def kind_of(self, name: str) -> str:
        """The tensor's module kind: the first kind whose pattern matches, else "other"."""
        for kind, pattern in self.kinds:
            if pattern.search(name):
                return kind
        return "other"

    def place(self, name: str) -> TensorPlace:
        """Layer and kind of one tensor."""
        return TensorPlace(self.layer_of(name), self.kind_of(name))

    def is_vocab(self, name: str) -> bool:
        """Whether the tensor's first axis is the vocabulary (embeddings, lm_head)."""
        return any(p.search(name) for p in self.vocab)

    def tied_to(self, name: str) -> tuple[str, ...]:
        """The tensors a model with tied embeddings stores instead of `name` (empty when `name` is never tied)."""
        return self.tied.get(name, ())

    def unplaced(self, names: Iterable[str]) -> str | None:
        """The first numbered tensor name (`...<sep><digits><sep>...`) this family cannot place: neither a decoder
        layer nor declared outside them. None when every name is understood."""
        for name in names:
            if _NUMBERED.search(name) and self.layer_of(name) is None and not any(p.search(name) for p in self.outside):
                return name
        return None

    def num_layers(self, config: Mapping[str, Any]) -> int:
        """Number of decoder layers the config declares, read at `num_layers_key`."""
        value: Any = config
        for part in self.num_layers_key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config.json has no positive integer {self.num_layers_key}")
        return value


def parse_family(name: str, spec: Any, where: str) -> Family:
    """Validate one family of a table (built-in or a user file); errors name the field."""
    if not isinstance(spec, Mapping):
        raise UserError(f"{where}: families.{name}", "must be a mapping", "see evomerge/architecture.py")
    unknown = set(spec) - _KEYS
    if unknown:
        raise UserError(f"{where}: families.{name}.{sorted(unknown)[0]}", "unknown key",
                        f"known: {', '.join(sorted(_KEYS))}")

    def regex(value: Any, field_name: str) -> re.Pattern[str]:
        if not isinstance(value, str):
            raise UserError(f"{where}: families.{name}.{field_name}", "must be a regular expression string", "quote it")
        try:
            return re.compile(value)
        except re.error as e:
            raise UserError(f"{where}: families.{name}.{field_name}", f"bad regular expression ({e})",
                            "fix it") from None

    def strings(key: str) -> tuple[str, ...]:
        value = spec.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where}: families.{name}.{key}", "must be a list of strings", "e.g. [a, b]")
        return tuple(value)

    if "layer" not in spec:
        raise UserError(f"{where}: families.{name}.layer", "missing", r"e.g. '^model\.layers\.(\d+)\.'")
    layer = regex(spec["layer"], "layer")
    if layer.groups < 1:
        raise UserError(f"{where}: families.{name}.layer", "needs a group capturing the layer index", r"e.g. (\d+)")
    kinds_spec = spec.get("kinds", _DEFAULT_KINDS)
    if not isinstance(kinds_spec, Mapping) or not set(kinds_spec) <= set(KINDS):
        raise UserError(f"{where}: families.{name}.kinds", "must map module kinds to regexes",
                        f"kinds: {', '.join(KINDS[:-1])}")
    tied_spec = spec.get("tied", {})
    if not isinstance(tied_spec, Mapping) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in tied_spec.values()):
        raise UserError(f"{where}: families.{name}.tied", "must map a tensor name to a list of names",
                        "e.g. {lm_head.weight: [model.embed_tokens.weight]}")
    num_key = spec.get("num_layers_key", "num_hidden_layers")
    if not isinstance(num_key, str):
        raise UserError(f"{where}: families.{name}.num_layers_key", "must be a string", "e.g. num_hidden_layers")
    return Family(
        name=name,
        architectures=strings("architectures"),
        model_types=strings("model_types"),
        num_layers_key=num_key,
        layer=layer,
        kinds=tuple((k, regex(v, f"kinds.{k}")) for k, v in kinds_spec.items()),
        vocab=tuple(regex(v, "vocab") for v in strings("vocab")),
        tied={str(k): tuple(v) for k, v in tied_spec.items()},
        outside=tuple(regex(v, "outside") for v in strings("outside")),
    )


def read_family_file(path: str | os.PathLike[str]) -> dict[str, Family]:
    """A user's table of families (YAML or JSON, `families: {name: spec}`)."""
    import yaml  # YAML is a superset of JSON

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise UserError(str(p), "architecture file not found", f"fix {ENV_VAR}") from None
    except yaml.YAMLError:
        raise UserError(str(p), "malformed YAML/JSON", "fix the syntax") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("families"), Mapping) or set(data) - {"families"}:
        raise UserError(str(p), "expected one top-level key, families: {name: {...}}",
                        "see evomerge/architecture.py for the schema")
    return {str(n): parse_family(str(n), s, str(p)) for n, s in data["families"].items()}


@lru_cache(maxsize=8)
def _table(user_files: str) -> tuple[Family, ...]:
    user: dict[str, Family] = {}
    for path in filter(None, user_files.split(os.pathsep)):
        user.update(read_family_file(path))
    builtin = {n: parse_family(n, s, "evomerge.architecture") for n, s in BUILTIN_FAMILIES.items()}
    return tuple(user.values()) + tuple(f for n, f in builtin.items() if n not in user)


def families() -> tuple[Family, ...]:
    """Every known family, the user's (from `EVOMERGE_ARCHITECTURES`) first, then the built-in ones."""
    return _table(os.environ.get(ENV_VAR, ""))


def family_for(config: Mapping[str, Any]) -> Family:
    """The family of a Hugging Face config.json: by `architectures`, then `model_type`; an unknown model falls back
    to the Llama layout (`model.layers.<i>.`), and `Family.unplaced` tells whether its tensor names fit."""
    table = families()
    archs = config.get("architectures") or []
    for fam in table:
        if any(a in fam.architectures for a in archs):
            return fam
    model_type = config.get("model_type")
    for fam in table:
        if model_type in fam.model_types:
            return fam
    return next(f for f in table if f.name == "decoder")


def place_of(name: str) -> TensorPlace:
    """Locate a tensor by its name alone: the first family whose layer pattern matches gives the layer and kind;
    a tensor outside every family's layers gets layer None and the first family's kind for it."""
    table = families()
    for fam in table:
        layer = fam.layer_of(name)
        if layer is not None:
            return TensorPlace(layer, fam.kind_of(name))
    return TensorPlace(None, table[0].kind_of(name))


def num_layers(config: Mapping[str, Any]) -> int:
    """Number of decoder layers declared by a Hugging Face config.json (its family's key, or
    `num_hidden_layers` at the top level or under `text_config`)."""
    try:
        return family_for(config).num_layers(config)
    except ValueError:
        cfg = config.get("text_config", config)
        n = cfg.get("num_hidden_layers")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError("config.json has no positive integer num_hidden_layers") from None
        return n
