"""The vLLM backend on CPU: prompt log-probs equal the Hugging Face backend's on the same merged weights, and after an
in-place swap the running engine scores (and generates) like a fresh model loaded from `merge_to_disk`.

The engine runs in a child process (this file, run as a script): vLLM's CPU worker patches process-wide torch
settings (`torch.set_num_threads`, thread binding) that must not leak into the rest of the test session. One
engine start serves the whole module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evomerge.backends.select import BackendChoice, Machine, choose_backend
from evomerge.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SETS = (str(REPO / "eval_sets" / "mini_xb_facts"), str(REPO / "eval_sets" / "mini_xa_chat"))
MAX_ITEMS = 8
GEN_PROMPTS, GEN_TOKENS, GEN_STOP = 6, 12, (" .",)


def _recipe(mini, xb_weight, dtype: str = "float32") -> dict:
    """Task arithmetic as in the quickstart: instruct at 1.0, the xb model at `xb_weight` (a number or a per-layer
    gradient list)."""
    return {"merge_method": "task_arithmetic", "base_model": str(mini.base), "dtype": dtype,
            "models": [{"model": str(mini.instruct), "parameters": {"weight": 1.0}},
                       {"model": str(mini.languages["xb"]), "parameters": {"weight": xb_weight}}]}


def _prompts(prepared) -> list[list[int]]:
    """Prompts for greedy generation: 170-token windows of the eval sets' contexts, longer than one KV cache block
    (128 tokens on CPU), so that the engine's prefix cache holds whole blocks of them between candidates."""
    seen: dict[tuple[int, ...], None] = {}
    for p in prepared:
        for r in p.requests:
            seen.setdefault(r.context, None)
    pool = [t for c in seen for t in c] * 4
    assert len(pool) >= 10 * GEN_PROMPTS + 170
    return [pool[10 * i: 10 * i + 170] for i in range(GEN_PROMPTS)]


def _prefix_requests(prepared):
    """Choices after long shared contexts: each of 3 170-token windows (`_prompts`, longer than a KV block)
    followed by 4 of the sets' continuations, one of them twice as long (so a cache hit may reach into it)."""
    from evomerge.text import Request

    conts = list(dict.fromkeys(r.continuation for p in prepared for r in p.requests))[:4]
    conts[-1] = conts[-1] + conts[0]
    return [Request(tuple(c), tuple(x)) for c in _prompts(prepared)[:3] for x in conts]


def _prefix_session(backend, requests) -> dict:
    """The requests scored whole, then reading the prefix cache (issue 16's shared context), the cache emptied
    before each: log-likelihoods and tokens computed."""
    out = {}
    for share in (False, True):
        backend.share_context = share
        backend.llm.reset_prefix_cache()
        backend.usage.tokens = 0
        out[str(share)] = {"lls": backend.loglikelihoods(requests), "tokens": backend.usage.tokens}
    backend.share_context = True
    return out


def _engine_session(args: dict) -> dict:
    """Child process: one vLLM worker (Evaluator with backend "vllm"), two candidates swapped in place."""
    from evomerge.evalsets import load_evalset
    from evomerge.fitness import Objective, Term
    from evomerge.memplan import model_size, plan_memory, resident_copies
    from evomerge.racing import Race
    from evomerge.recipe import Recipe
    from evomerge.tensors import ModelFiles
    from evomerge.worker import Candidate, Evaluator, EvaluatorSpec

    a, b = Recipe.from_mergekit(args["a"]), Recipe.from_mergekit(args["b"])
    cards = [load_evalset(s).card for s in args["sets"]]  # one objective per set: what racing bounds
    size = model_size(ModelFiles.open(a.inputs[0].model).config, a.dtype)
    plan = plan_memory("vllm", size, resident_copies(a.merge_method, 2, a.dtype), device="cpu", device_bytes=0,
                       host_bytes=8 << 30, max_model_len=256, kv_cache_bytes=64 << 20)
    t0 = time.perf_counter()
    ev = Evaluator.start(EvaluatorSpec(args["a"], tuple(args["sets"]), "dev", MAX_ITEMS, 0, backend="vllm",
                                       memory=plan, objectives=tuple(Objective(c.name, (Term(c.name, c.metric),))
                                                                     for c in cards)))
    out: dict = {"start_seconds": time.perf_counter() - t0, "backend": type(ev.backend).__name__}
    requests = [r for p in ev.prepared for r in p.requests]
    out["requests"] = [[list(r.context), list(r.continuation)] for r in requests]
    prompts = _prompts(ev.prepared)
    for key, recipe, number in (("a", args["a"], 0), ("b", args["b"], 1)):
        t = time.perf_counter()
        result = ev.evaluate(Candidate(number, recipe))
        assert result.ok, result.error
        out[key] = {"scores": {k: v.as_dict() for k, v in result.scores.items()},
                    "merge_seconds": result.merge_seconds, "evaluate_seconds": time.perf_counter() - t,
                    "lls": ev.backend.loglikelihoods(requests),
                    "generated": ev.backend.generate(prompts, GEN_TOKENS, GEN_STOP)}
        if key == "a":
            out["prefix"] = _prefix_session(ev.backend, _prefix_requests(ev.prepared))
            raced = ev.evaluate(Candidate(2, recipe, race=Race(3, 0.95)))  # racing (issue 16), no bar: all batches
            out["a_raced"] = {"scores": {k: v.as_dict() for k, v in raced.scores.items()}, "pruned": raced.pruned,
                              "steps": [s["items"] for s in raced.race], "error": raced.error}
    swaps = []
    for recipe in (a, b, a, b):
        t = time.perf_counter()
        ev.apply(recipe)
        swaps.append(time.perf_counter() - t)
    out["swap_seconds"] = swaps
    return out


@pytest.fixture(scope="module")
def engine_run(miniature, tmp_path_factory):
    """Run the child once: results of candidates A (xb weight 0.5) then B (a per-layer gradient) in one engine."""
    pytest.importorskip("vllm")
    tmp = tmp_path_factory.mktemp("vllm")
    args = {"a": _recipe(miniature, 0.5), "b": _recipe(miniature, [0.0, 1.5, 0.5, 2.0]), "sets": list(SETS)}
    out = tmp / "out.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, json.dumps(args), str(out)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(out.read_text())
    result["child_seconds"] = time.perf_counter() - t
    print(f"\nvLLM child {result['child_seconds']:.1f} s, engine + sources start {result['start_seconds']:.1f} s, "
          f"swap {min(result['swap_seconds']) * 1000:.1f} ms")
    return args, result


def _hf_on(model_dir):
    from evomerge.backends.hf import HFBackend

    return HFBackend.load(model_dir)


def test_prompt_logprobs_equal_hf_loglikelihoods_on_the_same_merge(engine_run, tmp_path):
    """Candidate A, swapped into the engine, against the Hugging Face worker merging A into its own parameters."""
    from evomerge.worker import Candidate, Evaluator, EvaluatorSpec

    args, run = engine_run
    assert run["backend"] == "VLLMBackend"
    hf = Evaluator.start(EvaluatorSpec(args["a"], tuple(args["sets"]), "dev", MAX_ITEMS, 0, backend="hf"))
    result = hf.evaluate(Candidate(0, args["a"]))
    requests = [r for p in hf.prepared for r in p.requests]
    # both backends tokenize with the same code: identical requests
    assert [[list(r.context), list(r.continuation)] for r in requests] == run["requests"]
    assert run["a"]["lls"] == pytest.approx(hf.backend.loglikelihoods(requests), abs=1e-4)
    for name, scores in result.scores.items():
        assert run["a"]["scores"][name] == pytest.approx(scores.as_dict(), abs=1e-5)


def test_prefix_cache_scores_choices_after_a_shared_context(engine_run):
    """vLLM's automatic prefix caching (public: `skip_reading_prefix_cache=False`): choices after a 170-token
    context read its cached block, computing fewer tokens, with the HF backend's log-likelihoods (candidate A)."""
    from evomerge.worker import Candidate, Evaluator, EvaluatorSpec

    args, run = engine_run
    hf = Evaluator.start(EvaluatorSpec(args["a"], tuple(args["sets"]), "dev", MAX_ITEMS, 0, backend="hf"))
    hf.evaluate(Candidate(0, args["a"]))
    requests = _prefix_requests(hf.prepared)
    expected = hf.backend.loglikelihoods(requests)
    whole, shared = run["prefix"]["False"], run["prefix"]["True"]
    print(f"\nvLLM prefix cache: tokens {whole['tokens']} -> {shared['tokens']}, max |shared - hf| "
          f"{max(abs(a - b) for a, b in zip(expected, shared['lls'])):.2e}")
    assert whole["lls"] == pytest.approx(expected, abs=1e-4)
    assert shared["lls"] == pytest.approx(expected, abs=1e-4)
    assert shared["tokens"] < 0.6 * whole["tokens"]


def test_swap_in_place_equals_a_fresh_model_from_disk(engine_run, tmp_path):
    """Candidate B was swapped into the engine that had scored A (and cached A's prompts): its log-likelihoods,
    scores and greedy generations equal a model merged to disk and loaded fresh."""
    from evomerge import evaluation
    from evomerge.evalsets import load_evalset
    from evomerge.merge import merge_to_disk
    from evomerge.recipe import Recipe

    args, run = engine_run
    merge_to_disk(Recipe.from_mergekit(args["b"]), tmp_path / "b")
    hf = _hf_on(tmp_path / "b")
    prepared = [evaluation.prepare(hf, load_evalset(p), "dev", MAX_ITEMS, 0) for p in args["sets"]]
    requests = [r for p in prepared for r in p.requests]
    lls = hf.loglikelihoods(requests)
    assert run["b"]["lls"] == pytest.approx(lls, abs=1e-4)
    assert max(abs(x - y) for x, y in zip(run["a"]["lls"], run["b"]["lls"])) > 1e-2  # the swap changed the model
    for name, scores in evaluation.score(hf, prepared).items():
        assert run["b"]["scores"][name] == pytest.approx(scores.as_dict(), abs=1e-5)
    # generation reads the prefix cache, which held A's keys and values until the swap reset it
    assert run["b"]["generated"] == hf.generate(_prompts(prepared), GEN_TOKENS, GEN_STOP)
    assert run["a"]["generated"] != run["b"]["generated"]
    assert all(s > 0 for s in run["swap_seconds"])


def test_auto_picks_vllm_only_with_a_gpu_and_vllm():
    cpu = Machine(gpus=0, gpu_bytes=0, host_bytes=24 << 30, has_vllm=True)
    gpu = Machine(gpus=1, gpu_bytes=80 << 30, host_bytes=24 << 30, has_vllm=True)
    bare = Machine(gpus=1, gpu_bytes=80 << 30, host_bytes=24 << 30, has_vllm=False)
    assert choose_backend("auto", cpu) == BackendChoice("hf", "no GPU")
    assert str(choose_backend("auto", cpu)) == "backend: hf (no GPU)"
    assert choose_backend("auto", gpu).name == "vllm"
    assert choose_backend("auto", bare) == BackendChoice("hf", "vllm not installed")
    assert choose_backend("hf", gpu).name == "hf"
    assert choose_backend("vllm", cpu).name == "vllm"  # the CPU build, when asked for
    with pytest.raises(UserError, match="vllm is not installed"):
        choose_backend("vllm", bare)


def _cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "evomerge", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_dry_run_prints_backend_and_memory_plan_and_starts_nothing(miniature, tmp_path):
    from conftest import write_space

    space = write_space(tmp_path / "space.yaml", miniature)
    r = _cli("search", str(space), "--dry-run", "--workers", "2", "--runs-dir", str(tmp_path / "runs"),
             "--backend", "hf")
    assert r.returncode == 0, r.stderr
    assert "6 dimensions" in r.stdout and "2 worker(s)" in r.stdout
    assert "backend: hf (requested)" in r.stdout and "memory plan" in r.stdout and "fits" in r.stdout
    assert not (tmp_path / "runs").exists()
    r = _cli("search", str(space), "--dry-run", "--backend", "vllm")
    if r.returncode == 0:  # vllm installed: the plan has a KV cache
        assert "backend: vllm" in r.stdout and "KV cache" in r.stdout
    else:
        assert "vllm is not installed" in r.stderr


# The Ray path (`evomerge search --backend vllm`, an engine inside each worker, every trial's fitness equal to the
# HF backend's) is tests/test_tensor_parallel.py's two-rank search; at one rank, tests/test_gpu_acceptance.py's vLLM
# mode runs the same search. One rank's exactness against HF is test_prompt_logprobs_equal_hf_loglikelihoods above.


def test_eval_of_a_recipe_merges_inside_the_engine(miniature, tmp_path):
    """`evomerge eval RECIPE --backend vllm` (merged in memory by the engine's worker) scores like the Hugging Face
    backend on the recipe merged to a temporary directory; stdout stays JSON."""
    pytest.importorskip("vllm")
    import yaml

    from evomerge.evaluation import score_target

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(miniature, [0.0, 1.5, 0.5, 2.0])))
    r = _cli("eval", str(recipe), *[a for s in SETS for a in ("--eval-set", s)], "--max-items", str(MAX_ITEMS),
             "--backend", "vllm", "--json")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "backend: vllm" in r.stderr
    got = json.loads(r.stdout)
    for name, scores in score_target(recipe, SETS, "dev", MAX_ITEMS, 0).items():
        assert got[name] == pytest.approx(scores.as_dict(), abs=1e-5)


# --- bfloat16 -------------------------------------------------------------------------------------------------------
def _bf16_session(args: dict) -> dict:
    """Child process: a bfloat16 engine with candidate A's template; B swapped in and scored, then A."""
    from evomerge import evaluation
    from evomerge.backends.vllm import VLLMBackend
    from evomerge.evalsets import load_evalset
    from evomerge.recipe import Recipe

    backend = VLLMBackend.start(Recipe.from_mergekit(args["a"]), kv_cache_bytes=64 << 20, max_model_len=256)
    prepared = [evaluation.prepare(backend, load_evalset(p), "dev", MAX_ITEMS, 0) for p in args["sets"]]
    requests = [r for p in prepared for r in p.requests]
    out = {"requests": [[list(r.context), list(r.continuation)] for r in requests]}
    for key in ("b", "a"):
        backend.apply(Recipe.from_mergekit(args[key]))
        out[key] = backend.loglikelihoods(requests)
    return out


@pytest.fixture(scope="module")
def bf16_run(miniature, tmp_path_factory):
    pytest.importorskip("vllm")
    args = {"mode": "bf16", "a": _recipe(miniature, 0.5, "bfloat16"),
            "b": _recipe(miniature, [0.0, 1.5, 0.5, 2.0], "bfloat16"), "sets": list(SETS)}
    out = tmp_path_factory.mktemp("vllm_bf16") / "out.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, __file__, json.dumps(args), str(out)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return args, json.loads(out.read_text())


# bfloat16 keeps 8 significant bits: every weight and activation is rounded by up to 2^-9 (0.2%) of itself. The
# miniature's logits reach about 20, so one rounding moves a logit by up to ~0.04, and a token's log-prob (a logit
# minus a log-sum-exp) by about as much again through the activations of its four layers. Measured worst cases per
# continuation token against float32: 0.02 (HF), 0.04 (vLLM); between the two bfloat16 backends 0.03. 0.1 nats per
# token leaves 2.5x that, and is still far below what a wrong swap moves (the two candidates differ by more than
# 0.3 per token on some request, checked below).
BF16_PER_TOKEN = 0.1


def _per_token(xs, ys, requests) -> float:
    return max(abs(x - y) / len(cont) for x, y, (_, cont) in zip(xs, ys, requests))


def test_bf16_prompt_logprobs_within_bf16_rounding_of_float32_and_of_hf(bf16_run):
    """A bfloat16 engine's prompt log-probs after a swap, against float32 (the same recipe merged and scored in
    float32 by the Hugging Face backend) and against the Hugging Face backend in bfloat16 (the same bfloat16
    merge, bit for bit)."""
    import torch

    from evomerge.backends.hf import HFBackend, Request
    from evomerge.merge import ResidentMerge
    from evomerge.recipe import Recipe

    args, run = bf16_run
    requests = [Request(tuple(c), tuple(t)) for c, t in run["requests"]]
    lls = {}
    for dtype in ("float32", "bfloat16"):
        b = Recipe.from_mergekit(dict(args["b"], dtype=dtype))
        hf = HFBackend.load(b.inputs[0].model, dtype=getattr(torch, dtype))
        ResidentMerge(b, hf.parameters()).apply(b)
        lls[dtype] = hf.loglikelihoods(requests)
    assert _per_token(run["b"], lls["float32"], run["requests"]) < BF16_PER_TOKEN
    assert _per_token(run["b"], lls["bfloat16"], run["requests"]) < BF16_PER_TOKEN
    assert _per_token(run["a"], run["b"], run["requests"]) > 3 * BF16_PER_TOKEN  # the swap is visible


# --- the start-up check and the CPU binding ------------------------------------------------------------------------
def test_check_vllm_accepts_the_installed_vllm_and_names_the_range_when_an_api_is_missing(monkeypatch):
    """The installed vLLM passes; one whose model runner has the old `reload_weights(self)` is refused in one line
    naming its version, the missing call and the supported range."""
    vllm = pytest.importorskip("vllm")
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from evomerge.backends.vllm import SUPPORTED_VLLM, check_vllm

    assert check_vllm() == vllm.__version__

    def reload_weights(self) -> None:  # vLLM <= 0.15's signature
        pass

    monkeypatch.setattr(GPUModelRunner, "reload_weights", reload_weights)
    with pytest.raises(UserError) as e:
        check_vllm()
    message = str(e.value)
    assert "\n" not in message and f"vllm {vllm.__version__}" in message and SUPPORTED_VLLM in message
    assert "Model Runner V1.reload_weights(weights_iterator=..., is_checkpoint_format=...)" in message


def test_cpu_binding_gives_each_rank_its_own_cores():
    from evomerge.backends.vllm import cpu_binding

    assert cpu_binding(1, {0, 1}) == "nobind"
    assert cpu_binding(2, {0, 1}) == "0|1"
    assert cpu_binding(2, {7, 4, 5, 6, 9}) == "4,5|6,7"
    with pytest.raises(UserError, match="3 ranks need a core each, this worker may use 2"):
        cpu_binding(3, {0, 1})


if __name__ == "__main__":
    ARGS = json.loads(sys.argv[1])
    SESSION = _bf16_session if ARGS.get("mode") == "bf16" else _engine_session
    Path(sys.argv[2]).write_text(json.dumps(SESSION(ARGS)))


def test_a_race_in_the_engine_scores_as_its_full_pass(engine_run):
    """Racing's batches (issue 16) through the vLLM engine: candidate A raced in 3 batches with no bar to prune
    against gives the scores of its full pass."""
    _, run = engine_run
    raced = run["a_raced"]
    assert raced["error"] is None and raced["pruned"] is None and len(raced["steps"]) == 3
    for name, scores in run["a"]["scores"].items():
        assert raced["scores"][name] == pytest.approx(scores, abs=1e-5)
