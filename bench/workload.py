"""The workload of the issue-6 benchmarks (overhead, busy_fraction, backend_agreement): a small random Llama trio
(overhead uses bench/models.py's 246M one), a multiple-choice eval set written in the models' word vocabulary
(bench/models.py's tokenizer), and task-arithmetic recipes over them (the quickstart's recipe shape: base + 1.0 *
instruct task vector + w * language task vector).

The models have random weights and a word-level tokenizer ("w3", "w4", ...), so an item's text is a run of those
words: the scores mean nothing, but every token is a real token and the requests have the lengths of real items.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from models import _tokenizer

# A small Llama (head_dim 64, which vLLM's CPU attention needs), ~3.9M parameters: a candidate in a second or two.
SMALL_VOCAB, SMALL_LAYERS, SMALL_HIDDEN = 2048, 4, 256
# Its initializer_range: large enough that the next-token distributions are far from uniform (bench/models.py's
# std-0.02 weights, norms included, give near-uniform log-probs: candidates would differ by 1e-3 nats).
SMALL_INIT = 0.08


def small_sources(root: Path, noise: float = 0.5) -> dict[str, Path]:
    """base / instruct / lang model directories under `root` (built once, then reused): a random base, and
    "fine-tunes" = base + seeded noise of `noise` x the init std on every tensor; bench/models.py's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tag = f"h{SMALL_HIDDEN}-l{SMALL_LAYERS}-v{SMALL_VOCAB}-i{SMALL_INIT}-n{noise}"
    paths = {n: root / f"small-{n}-{tag}" for n in ("base", "instruct", "lang")}
    if all((p / "config.json").is_file() for p in paths.values()):
        return paths
    cfg = LlamaConfig(hidden_size=SMALL_HIDDEN, num_attention_heads=SMALL_HIDDEN // 64, num_key_value_heads=1,
                      intermediate_size=704, num_hidden_layers=SMALL_LAYERS, vocab_size=SMALL_VOCAB,
                      max_position_embeddings=2048, tie_word_embeddings=False, initializer_range=SMALL_INIT,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for k, (name, path) in enumerate(paths.items()):
        if k:
            g = torch.Generator().manual_seed(k)
            with torch.no_grad():
                for key, p in base.state_dict().items():
                    p.copy_(state[key] + torch.randn(p.shape, generator=g) * SMALL_INIT * noise)
        base.save_pretrained(path, safe_serialization=True)
        _tokenizer(path, SMALL_VOCAB)
    return paths


def write_mc_set(root: Path, vocab: int, n_items: int, context_words: int = 48, seed: int = 0,
                 name: str = "bench_mc") -> Path:
    """A multiple-choice eval set of `n_items` dev items: a context of `context_words` words, four choices of 1-6
    words each, a seeded gold. Metric gold_prob (continuous, the search's fitness); every metric is computed."""
    from evomerge.evalsets import write_evalset

    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(n))

    items = [{"id": f"{name}-{i}", "split": "dev", "question": words(context_words),
              "choices": [words(rng.randint(1, 6)) for _ in range(4)], "gold": rng.randrange(4)}
             for i in range(n_items)]
    card = {"name": name, "language": "xx", "kind": "multiple_choice", "metric": "gold_prob", "chat_template": False,
            "prompt": "{question}", "target_delimiter": " ", "source": "bench/workload.py (random words)",
            "license": "CC0-1.0"}
    return write_evalset(root / name, card, items)


def task_arithmetic(paths: dict[str, Path], lang_weight: float | Sequence[float], dtype: str = "float32",
                    instruct_weight: float = 1.0) -> dict[str, Any]:
    """A mergekit recipe: base + instruct_weight * (instruct - base) + lang_weight * (lang - base); a list of
    weights is a per-layer gradient."""
    weight = list(lang_weight) if isinstance(lang_weight, (list, tuple)) else float(lang_weight)
    return {"merge_method": "task_arithmetic", "base_model": str(paths["base"]), "dtype": dtype,
            "models": [{"model": str(paths["instruct"]), "parameters": {"weight": instruct_weight}},
                       {"model": str(paths["lang"]), "parameters": {"weight": weight}}]}
