"""Where models live: local directories, or Hugging Face ids resolved through the local hub cache.

`model_config` reads only config.json (a few KB), so `evomerge space show` checks an 8B space on a laptop. Weights of
hub models are fetched only when a merge needs them, safetensors only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from evomerge.errors import UserError

ConfigResolver = Callable[[str, bool], Mapping[str, Any]]
_WANTED = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json", "tokenizer*",
           "special_tokens_map.json", "chat_template*", "vocab.json", "merges.txt"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def model_config(ref: str, hub: bool) -> dict[str, Any]:
    """config.json of a local model directory or a hub id (cache first, then the hub unless offline)."""
    if not hub:
        cfg = Path(ref) / "config.json"
        if not cfg.is_file():
            raise UserError(ref, "model not found (no config.json)", "build or download it, or fix the path")
        try:
            return json.loads(cfg.read_text())
        except json.JSONDecodeError:
            raise UserError(str(cfg), "malformed JSON", "restore the file") from None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # its retry chatter would bury our one-line error
    try:
        path = hf_hub_download(ref, "config.json", local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached; maybe downloadable
        if _offline():
            raise UserError(ref, "config.json is not in the local hub cache and HF_HUB_OFFLINE is set",
                            f"run `hf download {ref} config.json` where the hub is reachable") from None
        try:
            path = hf_hub_download(ref, "config.json")
        except Exception as e:  # noqa: BLE001 - network, auth or missing repo
            raise UserError(ref, f"cannot fetch config.json ({type(e).__name__})",
                            "check the id, your network and HF_TOKEN for gated models") from None
    return json.loads(Path(path).read_text())


def local_model_dir(ref: str) -> Path:
    """A directory holding the model's safetensors: `ref` itself, or the hub cache snapshot of an id."""
    p = Path(ref)
    if p.is_dir() or "/" not in ref or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        return p
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref, allow_patterns=_WANTED, local_files_only=_offline()))
    except Exception as e:  # noqa: BLE001
        raise UserError(ref, f"cannot get the model's safetensors ({type(e).__name__})",
                        "download it first, or point at a local directory") from None


@dataclass(frozen=True)
class Shapes:
    """What the configs say about a space's models."""

    n_layers: int
    hidden_size: int | None
    vocab_sizes: Mapping[str, int]
    architectures: Mapping[str, str]


def check_weights(ref: str) -> None:
    """Read a local model's safetensors headers (a few KB per file, no tensor data): a truncated or corrupt weight
    file, a missing shard or pickle-only weights are named here, before a run or a scoring starts."""
    from evomerge.tensors import ModelFiles

    ModelFiles.open(ref)


def check_configs(space, resolver: ConfigResolver = model_config, *, weights: bool = True) -> Shapes:
    """Read every model's config.json and check they can be merged layer by layer; with `weights`, also check
    each local model's weight files (headers only) so a corrupt file stops a search before anything is written."""
    from evomerge.architecture import num_layers

    cfgs = {m.name: resolver(m.ref, m.hub) for m in space.models}
    text = {name: c.get("text_config", c) for name, c in cfgs.items()}
    layers = {}
    for name, c in cfgs.items():
        try:
            layers[name] = num_layers(c)
        except ValueError as e:
            raise UserError(space.model(name).ref, str(e), "point at a decoder-only transformer") from None
    if len(set(layers.values())) != 1:
        raise UserError(f"{space.source}: models", f"layer counts differ: {layers}",
                        "per-layer merges need models of one architecture")
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        vals = {n: c.get(key) for n, c in text.items()}
        if len(set(vals.values())) > 1:
            raise UserError(f"{space.source}: models", f"{key} differs: {vals}", "merge models of one architecture")
    vocab = {n: int(c.get("vocab_size", 0)) for n, c in text.items()}
    arch = {n: (c.get("architectures") or ["?"])[0] for n, c in cfgs.items()}
    n = next(iter(layers.values()))
    space.check_layers(n)
    for seed in space.seeds:  # seed values name dimensions, which exist only once the layer count is known
        space.seed_values(seed, n)
    if weights:
        for m in space.models:
            if not m.hub and Path(m.ref).is_dir():  # hub weights are fetched (and checked) when a merge needs them
                check_weights(m.ref)
    return Shapes(n, next(iter(text.values())).get("hidden_size"), vocab, arch)
