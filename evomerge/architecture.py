"""Tensor names -> (layer index, module kind) for decoder-only transformers.

Pure: reads names and config dicts, never weight files. Llama, Mistral, Qwen2/3 and Gemma name their decoder layers
`model.layers.<i>.<module>...`; everything else (embeddings, final norm, lm_head) lies outside the layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class TensorPlace:
    """Where a tensor sits: its decoder layer (None outside the layers) and its module kind."""

    layer: int | None
    kind: str  # "attn", "mlp", "norm", "embed", "lm_head" or "other"


def place_of(name: str) -> TensorPlace:
    """Locate a tensor by its name."""
    m = _LAYER.search(name)
    layer = int(m.group(1)) if m else None
    if "self_attn" in name or ".attn." in name:
        kind = "attn"
    elif ".mlp." in name:
        kind = "mlp"
    elif "embed_tokens" in name:
        kind = "embed"
    elif name.startswith("lm_head"):
        kind = "lm_head"
    elif "norm" in name:
        kind = "norm"
    else:
        kind = "other"
    return TensorPlace(layer, kind)


def num_layers(config: Mapping[str, Any]) -> int:
    """Number of decoder layers declared by a Hugging Face config.json."""
    cfg = config.get("text_config", config)
    n = cfg.get("num_hidden_layers")
    if not isinstance(n, int) or n < 1:
        raise ValueError("config.json has no positive integer num_hidden_layers")
    return n
