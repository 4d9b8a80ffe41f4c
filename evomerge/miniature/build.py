"""Train the miniature's three checkpoints and write them as ordinary Hugging Face model directories.

    out_dir/
      base/       random init, pre-trained on A text + ~5% B text + ~10% translation pairs
      lang-xb/    base, continually pre-trained on B text only
      instruct/   base, fine-tuned on chat-formatted questions and answers in A (loss on the answers only)
      BUILD.json  seed, scale, relative paths, losses and timings; written last

Everything is built in a temporary sibling directory that is renamed to `out_dir` once `BUILD.json` is in it,
so a crashed or concurrent build never leaves a directory that `is_built` accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.miniature.train import TrainConfig
from evomerge.miniature.world import make_world

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from evomerge.miniature.parallel import Ranks

BUILD_FILE = "BUILD.json"
BUILD_FORMAT = 3  # 2: the instruct fine-tune is no longer scaled down (see _build_into); 3: the 120-country world,
# pre-trained in two slices per batch (parallel.py)

# Architecture: head_dim = 128 / 2 = 64, the smallest vLLM's CPU attention kernels accept.
MODEL_SHAPE: dict[str, Any] = dict(
    hidden_size=128,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=256,
    num_hidden_layers=4,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
BLOCK_SIZE = 64  # tokens per packed pre-training row

# Training runs at scale 1.0; `scale` multiplies the step counts of pre-training (base and lang-xb). About three and
# a half minutes of CPU time in all at one thread (base ~80%: 1000 steps, ~0.17 s each on an idle core); wall time
# depends on the machine's load (each build records its own in BUILD.json "seconds"); parallel.py computes the
# pre-training's two slices per batch on two cores when it can (1.3-1.5x faster). The base needs 1000 steps for the
# 120-country world: at 800 it still answered A questions (instruct 99%) but no merge answered B questions (see
# evalsets.py).
# The instruct fine-tune is short and gentle on purpose: its 36 examples are learned in a few dozen steps, and
# longer runs only overfit them and damage the base's language modelling.
BASE_TRAIN = TrainConfig(steps=1000, batch_size=32, lr=3e-3, warmup_steps=30)
LANGUAGE_TRAIN = TrainConfig(steps=240, batch_size=32, lr=1e-3, warmup_steps=10)
INSTRUCT_TRAIN = TrainConfig(steps=80, batch_size=16, lr=3e-4, warmup_steps=10)


@dataclass(frozen=True)
class MiniaturePaths:
    """Where a built miniature's model directories are; `languages` maps a language code to its model."""

    root: Path
    base: Path
    instruct: Path
    languages: dict[str, Path]


def is_built(out_dir: Path) -> bool:
    """Whether `out_dir` holds a complete miniature (its `BUILD.json` exists and reads)."""
    try:
        _read_manifest(Path(out_dir))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def read_build(out_dir: Path) -> MiniaturePaths:
    """The paths of the complete miniature in `out_dir` (raises FileNotFoundError if there is none)."""
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    paths = manifest["paths"]
    return MiniaturePaths(
        root=out_dir,
        base=out_dir / paths["base"],
        instruct=out_dir / paths["instruct"],
        languages={lang: out_dir / p for lang, p in paths["languages"].items()},
    )


def build_miniature(out_dir: Path, *, seed: int = 0, scale: float = 1.0) -> MiniaturePaths:
    """Build (or reuse) the miniature of `seed` at `scale` in `out_dir` and return its paths.

    Returns at once when `out_dir` already holds a build of the same seed and scale. A build of another seed,
    scale or BUILD_FORMAT is replaced; any other existing content of `out_dir` makes this raise FileExistsError,
    since it is not ours to delete. Same seed, scale and machine give identical weights (the build runs on one
    thread whatever the caller's setting).
    """
    out_dir = Path(out_dir)
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if is_current(out_dir, seed, scale):
        return read_build(out_dir)
    if out_dir.exists() and not is_built(out_dir) and not _is_older_build(out_dir) and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not a miniature build; refusing to replace it")

    import torch

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished build is an ordinary readable directory
    # One intra-op thread, whatever the caller's setting: the weights then do not depend on it (the thread count
    # changes summation order), and on a busy machine two threads spin against each other (measured on two
    # loaded cores: a 0.1-scale build used 6x more CPU time with two threads and had not finished).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        manifest = _build_into(tmp, seed=seed, scale=scale)
        _write_json(tmp / BUILD_FILE, manifest)  # last: its presence marks the build complete
        _install(tmp, out_dir, seed, scale)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return read_build(out_dir)


# ---------------------------------------------------------------------------------------------------------


def _read_manifest(out_dir: Path) -> dict[str, Any]:
    manifest = json.loads((out_dir / BUILD_FILE).read_text())
    if manifest.get("format") != BUILD_FORMAT:
        raise ValueError(f"{out_dir / BUILD_FILE}: unknown format {manifest.get('format')!r}")
    return manifest


def _is_older_build(out_dir: Path) -> bool:
    """Whether `out_dir` holds a complete build of another BUILD_FORMAT (ours to replace: a cache gone stale)."""
    try:
        manifest = json.loads((out_dir / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and isinstance(manifest.get("format"), int)


def is_current(out_dir: Path, seed: int, scale: float = 1.0) -> bool:
    """Whether `out_dir` holds a complete build of this seed and scale in the current build format."""
    if not is_built(out_dir):
        return False
    manifest = _read_manifest(out_dir)
    return manifest["seed"] == seed and manifest["scale"] == scale


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _install(tmp: Path, out_dir: Path, seed: int, scale: float) -> None:
    """Move the finished build to `out_dir`, replacing an older build; tolerate a concurrent twin."""
    old = None
    if out_dir.exists():
        if not any(out_dir.iterdir()):
            out_dir.rmdir()
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            old.rmdir()
            os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        # Another process installed a build meanwhile; an identical one is as good as ours.
        if not is_current(out_dir, seed, scale):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _steps(config: TrainConfig, scale: float) -> TrainConfig:
    """`config` with its step counts multiplied by `scale` (at least one step; warm-up at most a tenth)."""
    steps = max(1, round(config.steps * scale))
    return replace(config, steps=steps, warmup_steps=min(config.warmup_steps, max(1, steps // 10)))


def _build_into(root: Path, *, seed: int, scale: float) -> dict[str, Any]:
    from evomerge.miniature import parallel

    # the pre-training ranks start first, so that their imports overlap making the world, the tokenizer and the data
    ranks = parallel.Ranks.start() if parallel.default_processes(_steps(BASE_TRAIN, scale)) > 1 else None
    try:
        return _build_stages(root, seed=seed, scale=scale, ranks=ranks)
    finally:
        if ranks is not None:
            ranks.close()


def _build_stages(root: Path, *, seed: int, scale: float, ranks: Ranks | None) -> dict[str, Any]:
    import copy
    import random

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from evomerge.miniature import parallel, train, world as w
    from evomerge.miniature.tokenizer import END, build_tokenizer

    world = make_world(seed)
    tokenizer = build_tokenizer(world)
    seconds: dict[str, float] = {}
    losses: dict[str, float] = {}

    def encode(docs: list[str]) -> list[list[int]]:
        return tokenizer(docs, add_special_tokens=False)["input_ids"]  # in one call: twice as fast as one by one

    def pretraining_blocks(docs: list[str]) -> torch.Tensor:
        return train.pack_documents(encode(docs), BLOCK_SIZE, tokenizer.bos_token_id, tokenizer.eos_token_id)

    def n_docs(config: TrainConfig) -> int:
        # Enough documents that no block is seen twice: documents average ~49 tokens with <bos> and <eos>,
        # and 40 leaves a margin.
        return config.steps * config.batch_size * BLOCK_SIZE // 40 + 1

    # Each stage draws its data from its own stream, so changing one stage leaves the others' data alone.
    def rng(stage: str) -> random.Random:
        return random.Random(f"{seed}/{stage}")

    # base
    start = time.perf_counter()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_SHAPE,
    )
    with torch.random.fork_rng():  # seed the initialization without touching the caller's generator
        torch.manual_seed(seed)
        base = LlamaForCausalLM(config).to(torch.float32)
    base_cfg = _steps(BASE_TRAIN, scale)
    blocks = pretraining_blocks(w.pretraining_docs(world, rng("base"), n_docs(base_cfg)))
    processes = {"base": parallel.SHARDS if ranks else 1}  # the weights are the same either way (parallel.py)
    losses["base"] = _tail(parallel.pretrain(base, blocks, base_cfg, ranks=ranks))
    _save(base, tokenizer, root / "base")
    seconds["base"] = time.perf_counter() - start

    # lang-xb: continued pre-training on B only
    start = time.perf_counter()
    lang = copy.deepcopy(base)
    lang_cfg = _steps(LANGUAGE_TRAIN, scale)
    blocks = pretraining_blocks(w.language_docs(world, rng("lang-xb"), n_docs(lang_cfg), "xb"))
    lang_ranks = ranks if lang_cfg.steps >= parallel.MIN_PARALLEL_STEPS else None
    processes["lang-xb"] = parallel.SHARDS if lang_ranks else 1
    losses["lang-xb"] = _tail(parallel.pretrain(lang, blocks, lang_cfg, ranks=lang_ranks))
    _save(lang, tokenizer, root / "lang-xb")
    seconds["lang-xb"] = time.perf_counter() - start
    del lang

    # instruct: supervised fine-tuning on single-turn chats in A about the "train" countries only, so the
    # eval sets (built from "eval" countries) test recall of pre-trained facts through the chat format.
    start = time.perf_counter()
    instruct = copy.deepcopy(base)
    end_id = tokenizer.convert_tokens_to_ids(END)
    examples = []
    for pair in w.qa_pairs(world, "xa", role="train"):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": pair.question}], tokenize=False, add_generation_prompt=True
        )
        examples.append((
            tokenizer(prompt, add_special_tokens=False)["input_ids"],
            tokenizer(pair.answer, add_special_tokens=False)["input_ids"] + [end_id],
        ))
    input_ids, labels = train.pad_examples(examples, tokenizer.pad_token_id)
    # Not scaled below its full length: it takes seconds, and a shorter one leaves an instruct model that cannot
    # answer in A at all, so small test builds would show no trade-off between A and B.
    instruct_cfg = _steps(INSTRUCT_TRAIN, max(scale, 1.0))
    losses["instruct"] = _tail(train.train_causal_lm(instruct, input_ids, labels, instruct_cfg))
    _save(instruct, tokenizer, root / "instruct")
    seconds["instruct"] = time.perf_counter() - start

    return {
        "format": BUILD_FORMAT,
        "seed": seed,
        "scale": scale,
        "paths": {"base": "base", "instruct": "instruct", "languages": {"xb": "lang-xb"}},
        "steps": {"base": base_cfg.steps, "lang-xb": lang_cfg.steps, "instruct": instruct_cfg.steps},
        "final_loss": losses,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "torch_threads": torch.get_num_threads(),
        "pretraining_processes": processes,
    }


def _tail(losses: list[float], n: int = 10) -> float:
    """Mean of the last `n` losses, rounded: a readable summary for BUILD.json."""
    tail = losses[-n:]
    return round(sum(tail) / len(tail), 4)


def _save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    from transformers import GenerationConfig

    from evomerge.miniature.tokenizer import END

    end_id = tokenizer.convert_tokens_to_ids(END)
    # Chat replies end with <|end|>; pre-training documents with <eos>: generation stops at either.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[end_id, tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per tiny file is noise in the quickstart's output
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


__all__ = ["MiniaturePaths", "build_miniature", "is_built", "read_build"]
