"""Shared fixtures: tiny real Llama checkpoints (head_dim 64) made on the spot, and the miniature world."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent


def make_llama(path: Path, *, seed: int, parent: Path | None = None, noise: float = 0.02, layers: int = 4,
               vocab: int = 96) -> Path:
    """A tiny Llama model dir: random init (seeded), or `parent`'s weights plus seeded noise (a "fine-tune")."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, intermediate_size=256,
                      num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=64,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    if parent is not None:
        model = LlamaForCausalLM.from_pretrained(parent, dtype=torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * noise)
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def llama_trio(tmp_path_factory) -> dict[str, Path]:
    """base, instruct (= base + noise) and two language models (= base + noise), 4 layers each."""
    root = tmp_path_factory.mktemp("llama")
    base = make_llama(root / "base", seed=0)
    return {"base": base,
            "instruct": make_llama(root / "instruct", seed=1, parent=base),
            "eu": make_llama(root / "eu", seed=2, parent=base),
            "ca": make_llama(root / "ca", seed=3, parent=base)}


# Files that take minutes (engines, Ray runs, kills, the quickstart's own models), listed first so that a long file
# does not start last and leave the other worker idle at the end.
# Note: under make test, xdist's default `--loadscope-reorder` deals the files with the most tests first, so this
# order decides only among files of equal size and in one-process runs. Tried 2026-11-30: with
# `--no-loadscope-reorder` (this order exactly) the suite was slower, so the default stays.
SLOW_FIRST = ("test_quickstart.py", "test_faults.py", "test_search_resume.py", "test_tensor_parallel.py",
              "test_gpu_acceptance.py", "test_backend_vllm.py", "test_bench_issue6.py", "test_search_e2e.py",
              "test_pool.py", "test_bench_run_all.py", "test_search_multiobjective.py", "test_worker_faults.py")


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


@pytest.fixture(scope="session")
def miniature(tmp_path_factory):
    """The miniature models (seed 0, so the shipped eval sets' vocabulary matches) at a small training scale.

    Built once per test run: xdist workers share the build under the run's temporary root (the first one builds,
    holding a lock; the others wait and reuse it)."""
    from filelock import FileLock

    from evomerge.miniature.build import build_miniature

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # under xdist: the run's, not a worker's
    with FileLock(str(root / "miniature.lock")):
        return build_miniature(root / "miniature" / "tiny", seed=0, scale=0.1)


def write_space(path: Path, mini, *, popsize: int = 4, generations: int = 2, max_items: int = 8) -> Path:
    """A quickstart-like space over the `miniature` fixture's models."""
    import yaml

    space = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
    space["models"] = [{"name": "base", "role": "base", "path": str(mini.base)},
                       {"name": "instruct", "role": "instruct", "path": str(mini.instruct)},
                       {"name": "xb", "role": "language", "language": "xb", "path": str(mini.languages["xb"])}]
    space.pop("build")
    for s in space["eval"]["sets"]:
        s["path"] = str((REPO / "search_spaces" / s["path"]).resolve())
    space["eval"]["max_items"] = max_items
    space["search"].update(popsize=popsize, generations=generations)
    path.write_text(yaml.safe_dump(space))
    return path


def mergekit_merge(cfg: dict, out: Path) -> Path:
    """Merge with mergekit 0.1.5, the oracle, in this process: what `mergekit-yaml cfg.yaml out` runs, without its
    ~3 s process start (tokenizer and model card left out)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True)
    run_merge(MergeConfiguration.model_validate(cfg), str(out), options)
    return out


def load_tensors(path: Path) -> dict:
    """Every tensor of a model directory, by name."""
    from evomerge.tensors import ModelFiles

    f = ModelFiles.open(path)
    return {n: f.get(n) for n in f.names()}


# --- tiny models of other families, tied embeddings, added tokens (tests/test_merge_stream.py) ---------------------
def write_word_tokenizer(path: Path, n_tokens: int, added: int = 0) -> None:
    """A word-level tokenizer of `n_tokens` tokens ("<unk>", "<pad>", "w2", ...), plus `added` special tokens
    ("<|extra_0|>", ...) numbered after them, as an instruct model's added chat tokens are."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", "<pad>", *[f"w{i}" for i in range(2, n_tokens)]])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = [f"<|extra_{i}|>" for i in range(added)]
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                  additional_special_tokens=extra or None)
    tok.save_pretrained(path)


def make_tiny(path: Path, *, arch: str = "qwen3", seed: int, parent: Path | None = None, noise: float = 0.02,
              layers: int = 4, vocab: int = 96, tied: bool = True, added_tokens: int = 0,
              dtype: str = "float32", intermediate: int = 256) -> Path:
    """A tiny model dir of family `arch` ("llama" or "qwen3"; head_dim 64) with a word-level tokenizer: random init
    (seeded), or `parent`'s weights plus seeded noise. `added_tokens` grows the vocabulary (tokenizer, embedding
    and lm_head rows) past the parent's, as an instruct model's chat tokens do."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    torch.manual_seed(seed)
    common = dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, intermediate_size=intermediate,
                  num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=64, tie_word_embeddings=tied)
    cfg = Qwen3Config(head_dim=64, **common) if arch == "qwen3" else LlamaConfig(**common)
    if parent is None:
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        model = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32)
        if added_tokens:
            model.resize_token_embeddings(model.config.vocab_size + added_tokens, mean_resizing=False)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * noise)
    model.to(getattr(torch, dtype)).save_pretrained(path)
    n = model.config.vocab_size
    write_word_tokenizer(path, n - added_tokens, added_tokens)
    return path
