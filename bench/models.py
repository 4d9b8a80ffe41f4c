"""Llama-shaped model directories with random weights, for the merge benchmarks (built here, never downloaded).

The default shape is the 246M-parameter Llama of shared/reference/platform.md (470 MB in bfloat16): vocabulary
32000, hidden 1024, 16 layers, MLP 2816, 16 heads of 64, 4 KV heads, untied lm_head. `scale` shrinks the layer
count and the vocabulary for a quick run. Sources: a random base; "instruct" and "lang" are the base plus seeded
noise (fine-tune-like task vectors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from evomerge.tensors import TensorSpec, write_model_dir


@dataclass(frozen=True)
class Shape:
    vocab: int = 32000
    hidden: int = 1024
    layers: int = 16
    intermediate: int = 2816
    heads: int = 16
    kv_heads: int = 4

    @classmethod
    def scaled(cls, scale: float) -> "Shape":
        return cls(vocab=max(512, int(32000 * scale)), layers=max(2, int(16 * scale)))

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        h, kv = self.hidden, self.kv_heads * (self.hidden // self.heads)
        out = [("model.embed_tokens.weight", (self.vocab, h))]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [(p + "input_layernorm.weight", (h,)),
                    (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                    (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                    (p + "post_attention_layernorm.weight", (h,)),
                    (p + "mlp.gate_proj.weight", (self.intermediate, h)),
                    (p + "mlp.up_proj.weight", (self.intermediate, h)),
                    (p + "mlp.down_proj.weight", (h, self.intermediate))]
        return out + [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]

    def params(self) -> int:
        n = 0
        for _, s in self.tensors():
            k = 1
            for d in s:
                k *= d
            n += k
        return n

    def config(self, dtype: str) -> dict:
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.hidden,
                "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                "head_dim": self.hidden // self.heads,
                "vocab_size": self.vocab, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": False, "hidden_act": "silu", "rope_theta": 10000.0,
                "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype}


def _tokenizer(path: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *[f"w{i}" for i in range(3, vocab)]])}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}))


def build_sources(root: Path, shape: Shape, dtype: str, names: tuple[str, ...] = ("base", "instruct", "lang"),
                  noise: float = 0.01) -> dict[str, Path]:
    """Write base + fine-tune-like model directories (skipped when already there); returns name -> path."""
    tdtype = getattr(torch, dtype)
    paths = {n: root / f"{n}-{dtype}-{shape.vocab}x{shape.layers}" for n in names}
    if all((p / "config.json").is_file() for p in paths.values()):
        return paths
    specs = [TensorSpec(n, s, tdtype) for n, s in shape.tensors()]
    for k, (name, path) in enumerate(paths.items()):
        def tensors(k: int = k):
            for i, (n, s) in enumerate(shape.tensors()):
                g = torch.Generator().manual_seed(i)
                t = torch.randn(s, generator=g) * 0.02  # the base
                if k:
                    g2 = torch.Generator().manual_seed(1000 * k + i)
                    t += torch.randn(s, generator=g2) * noise
                yield n, t.to(tdtype)
        write_model_dir(path, specs, tensors(), config=shape.config(dtype), side_files_from=root)
        _tokenizer(path, shape.vocab)
    return paths
