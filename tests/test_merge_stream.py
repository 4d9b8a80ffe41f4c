"""The merge engine on Qwen3-style models with tied embeddings: equal to mergekit-yaml (bit for bit in bfloat16,
within 1e-6 in float32), added tokens (tokenizer and extra rows from the instruct model), resident == disk,
bounded peak memory, and one-line errors for bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import load_tensors, make_tiny, mergekit_merge
from evomerge.cli import main as cli_main
from evomerge.errors import UserError
from evomerge.merge import ResidentMerge, merge_to_disk, plan_merge
from evomerge.recipe import Recipe
from evomerge.tensors import TensorSpec, write_model_dir

EMBED = "model.embed_tokens.weight"


@pytest.fixture(scope="session")
def qwen3(tmp_path_factory) -> dict[str, Path]:
    """Tied Qwen3-style models: base; instruct (= base + noise); instruct_added (4 added tokens: 100 rows, not
    96); eu and ca (= base + noise). MLP tensors span several kernel chunks."""
    root = tmp_path_factory.mktemp("qwen3")
    kw = dict(arch="qwen3", tied=True, intermediate=768)
    base = make_tiny(root / "base", seed=0, **kw)
    return {"base": base,
            "instruct": make_tiny(root / "instruct", seed=1, parent=base, **kw),
            "instruct_added": make_tiny(root / "instruct_added", seed=1, parent=base, added_tokens=4, **kw),
            "eu": make_tiny(root / "eu", seed=2, parent=base, **kw),
            "ca": make_tiny(root / "ca", seed=3, parent=base, **kw)}


def _cases(m: dict[str, Path], instruct: str = "instruct") -> dict[str, dict]:
    """Every deterministic method with scalar, per-layer gradient and filtered parameters."""
    b, i, eu, ca = str(m["base"]), str(m[instruct]), str(m["eu"]), str(m["ca"])
    return {
        "task_arithmetic_scalar": {
            "merge_method": "task_arithmetic", "base_model": b,
            "models": [{"model": i, "parameters": {"weight": 1.0}}, {"model": eu, "parameters": {"weight": 0.7}}]},
        "task_arithmetic_gradient_filtered": {
            "merge_method": "task_arithmetic", "base_model": b, "parameters": {"lambda": 0.9, "normalize": True},
            "models": [{"model": i, "parameters": {"weight": 1.0}},
                       {"model": eu, "parameters": {"weight": [
                           {"filter": "self_attn", "value": [0.2, 0.9, 1.3]}, {"filter": "mlp", "value": 0.6},
                           {"value": [0.4, 1.1]}]}},
                       {"model": ca, "parameters": {"weight": [0.3, 0.7, 0.1, 0.5]}}]},
        "linear_gradient": {
            "merge_method": "linear",
            "models": [{"model": i, "parameters": {"weight": [1.0, 0.6, 0.3, 0.8]}},
                       {"model": eu, "parameters": {"weight": [0.5, 1.2]}}]},
        "linear_unnormalized_filtered": {
            "merge_method": "linear", "parameters": {"normalize": False},
            "models": [{"model": i, "parameters": {"weight": [{"filter": "mlp", "value": [0.2, 0.8]}, {"value": 0.5}]}},
                       {"model": eu, "parameters": {"weight": 0.5}}]},
        "ties_gradient": {
            "merge_method": "ties", "base_model": b,
            "models": [{"model": i, "parameters": {"weight": 1.0, "density": 0.5}},
                       {"model": eu, "parameters": {"weight": [0.3, 0.9, 1.2, 0.5], "density": [0.2, 0.8]}},
                       {"model": ca, "parameters": {"weight": 0.7, "density": 0.35}}]},
        "breadcrumbs_ties_filtered": {
            "merge_method": "breadcrumbs_ties", "base_model": b, "parameters": {"gamma": 0.02},
            "models": [{"model": i, "parameters": {"weight": 1.0, "density": 0.7}},
                       {"model": eu, "parameters": {"weight": 0.5, "density": [{"filter": "mlp", "value": 0.5},
                                                                              {"value": 0.9}]}}]},
        "della_dense": {
            "merge_method": "della", "base_model": b,
            "models": [{"model": i, "parameters": {"weight": 1.0}},
                       {"model": eu, "parameters": {"weight": [0.4, 1.0]}}]},
        "slerp_gradient": {
            "merge_method": "slerp", "base_model": b, "parameters": {"t": [0.0, 0.3, 0.8, 1.0]},
            "models": [{"model": eu}]},
    }


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", list(_cases({k: Path(k) for k in ("base", "instruct", "eu", "ca")})))
def test_disk_merge_equals_mergekit(case, dtype, qwen3, tmp_path):
    cfg = dict(_cases(qwen3)[case], dtype=dtype)
    merge_to_disk(Recipe.from_mergekit(cfg), tmp_path / "ours")
    mergekit_merge(cfg, tmp_path / "theirs")
    ours, theirs = load_tensors(tmp_path / "ours"), load_tensors(tmp_path / "theirs")
    assert set(ours) == set(theirs) and "lm_head.weight" not in ours  # tied: the embedding serves as lm_head
    for name, t in ours.items():
        assert t.dtype == getattr(torch, dtype)
        if dtype == "bfloat16":  # mergekit's order and rounding, step by step
            worst = float((t.float() - theirs[name].float()).abs().max())
            assert torch.equal(t, theirs[name]), f"{name}: max abs diff {worst}"
        else:  # fused multiply-adds for task arithmetic and linear: an ulp or two
            assert float((t - theirs[name]).abs().max()) <= 1e-6, name


@pytest.mark.parametrize("case", ["task_arithmetic_gradient_filtered", "linear_gradient", "ties_gradient"])
def test_added_tokens_come_from_the_instruct_model(case, qwen3, tmp_path):
    cfg = dict(_cases(qwen3, "instruct_added")[case], dtype="float32")
    recipe = Recipe.from_mergekit(cfg)
    plan = plan_merge(recipe)
    assert plan.vocab_differs and plan.tokenizer_source == str(qwen3["instruct_added"])
    stated = plan.stated_recipe()
    assert stated.to_mergekit()["tokenizer_source"] == str(qwen3["instruct_added"])
    ours = merge_to_disk(recipe, tmp_path / "ours").out_dir
    assert json.loads((ours / "config.json").read_text())["vocab_size"] == 100
    assert "<|extra_3|>" in (ours / "tokenizer.json").read_text()
    # mergekit given the stated recipe (tokenizer_source: the instruct model) merges the same
    mergekit_merge(stated.to_mergekit(), tmp_path / "theirs")
    a, b = load_tensors(ours), load_tensors(tmp_path / "theirs")
    assert set(a) == set(b) and max(float((a[n] - b[n]).abs().max()) for n in a) <= 1e-6
    assert a[EMBED].shape == (100, 128)
    if recipe.merge_method != "linear":  # task vectors of the added rows are zero: the instruct rows, exactly
        assert torch.equal(a[EMBED][96:], load_tensors(qwen3["instruct_added"])[EMBED][96:])
    # an explicit tokenizer_source means the same as the default
    merge_to_disk(stated, tmp_path / "explicit")
    assert all(torch.equal(t, a[n]) for n, t in load_tensors(tmp_path / "explicit").items())


def test_tokenizer_source_base_drops_the_added_rows(qwen3, tmp_path):
    cfg = dict(_cases(qwen3, "instruct_added")["task_arithmetic_scalar"], dtype="float32", tokenizer_source="base")
    ours = merge_to_disk(Recipe.from_mergekit(cfg), tmp_path / "ours").out_dir
    mergekit_merge(cfg, tmp_path / "theirs")
    a, b = load_tensors(ours), load_tensors(tmp_path / "theirs")
    assert a[EMBED].shape == (96, 128) and max(float((a[n] - b[n]).abs().max()) for n in a) <= 1e-6
    assert "<|extra_0|>" not in (ours / "tokenizer.json").read_text()


def test_tokenizers_that_renumber_tokens_are_refused(qwen3, tmp_path):
    odd = tmp_path / "renumbered"
    shutil.copytree(qwen3["instruct_added"], odd)
    tok = json.loads((odd / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["w2"], vocab["w3"] = vocab["w3"], vocab["w2"]
    (odd / "tokenizer.json").write_text(json.dumps(tok))
    cfg = {"merge_method": "task_arithmetic", "base_model": str(qwen3["base"]),
           "models": [{"model": str(odd), "parameters": {"weight": 1.0}}]}
    with pytest.raises(UserError, match="extend one another"):
        plan_merge(Recipe.from_mergekit(cfg))


def _untied_copy(src: Path, dst: Path, seed: int) -> Path:
    """`src` with its own lm_head (a copy of its embedding plus noise) and tie_word_embeddings off."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    with torch.no_grad():
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight) * 0.02)
    model.save_pretrained(dst)
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    return dst


def test_a_tied_source_lends_its_embedding_as_lm_head(qwen3, tmp_path):
    untied = _untied_copy(qwen3["instruct"], tmp_path / "untied", seed=5)
    assert "lm_head.weight" in load_tensors(untied)
    cfg = {"merge_method": "task_arithmetic", "base_model": str(qwen3["base"]), "dtype": "float32",
           "models": [{"model": str(untied), "parameters": {"weight": 1.0}},
                      {"model": str(qwen3["eu"]), "parameters": {"weight": [0.3, 0.8]}}]}
    merge_to_disk(Recipe.from_mergekit(cfg), tmp_path / "ours")
    mergekit_merge(cfg, tmp_path / "theirs")
    a, b = load_tensors(tmp_path / "ours"), load_tensors(tmp_path / "theirs")
    assert "lm_head.weight" in a and set(a) == set(b) and max(float((a[n] - b[n]).abs().max()) for n in a) <= 1e-6


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("method", ["task_arithmetic", "linear", "ties"])
def test_resident_merge_equals_disk_merge_with_added_tokens(method, dtype, qwen3, tmp_path):
    from transformers import AutoModelForCausalLM

    case = {"task_arithmetic": "task_arithmetic_gradient_filtered", "linear": "linear_gradient",
            "ties": "ties_gradient"}[method]
    template = dict(_cases(qwen3, "instruct_added")[case], dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(qwen3["instruct_added"], dtype=getattr(torch, dtype))
    live = {n: p.data for n, p in model.named_parameters()}
    assert "lm_head.weight" not in live  # tied
    resident = ResidentMerge(Recipe.from_mergekit(template), live)
    for k, scale in enumerate((0.5, 1.3)):
        cfg = json.loads(json.dumps(template))
        for entry in cfg["models"][1:]:
            entry["parameters"]["weight"] = scale
        recipe = Recipe.from_mergekit(cfg)
        resident.apply(recipe)
        disk = load_tensors(merge_to_disk(recipe, tmp_path / f"disk{k}").out_dir)
        assert set(disk) == set(live)
        for name, t in disk.items():
            assert torch.equal(live[name], t), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_do_not_depend_on_the_thread_count(dtype):
    from evomerge.methods import chunked

    g = torch.Generator().manual_seed(0)
    base = torch.randn(3 * chunked.CHUNK + 17, generator=g).to(dtype)
    deltas = [(torch.randn(base.shape, generator=g) * 0.01).to(dtype) for _ in range(3)]
    ranks = [torch.randperm(base.numel(), generator=g).to(torch.int32) for _ in range(3)]
    masks = [chunked.RankMask(r, 0, base.numel() // 2) for r in ranks]
    outs = []
    for threads in (1, 2, 3):
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            res = [torch.empty_like(base) for _ in range(4)]
            chunked.weighted_sum(base, deltas, [0.3, 1.1, 0.6], True, 0.9, res[0])
            chunked.linear_sum(deltas, [0.3, 1.1, 0.6], True, res[1])
            chunked.consensus_sum(base, deltas, [0.3, 1.1, 0.6], True, 0.9, res[2], masks=masks)
            chunked.weighted_sum(base, deltas, [0.3, 1.1, 0.6], False, 1.0, res[3], masks=masks)
        finally:
            torch.set_num_threads(saved)
        outs.append(res)
    assert all(torch.equal(a, b) for o in outs for a, b in zip(o, outs[0]))


# --- memory --------------------------------------------------------------------------------------------------------
_RSS_SCRIPT = r"""
import json, sys
import torch
from evomerge.merge import merge_to_disk
from evomerge.recipe import Recipe

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

cfg = json.loads(sys.argv[1])
merge_to_disk(Recipe.from_mergekit(dict(cfg, models=cfg["models"][:1])), sys.argv[2] + "-warm")  # pools, imports
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
merge_to_disk(Recipe.from_mergekit(cfg), sys.argv[2])
print(json.dumps({"before": before, "peak": status("VmHWM:")}))
"""


def test_disk_merge_memory_is_a_few_tensors_not_the_model(tmp_path):
    # 24 layers; the largest tensor (embedding, 2048 x 256 float32) is 2 MiB, a model 80 MiB
    h, inter, vocab, layers = 256, 1024, 2048, 24
    shapes = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                   (p + "self_attn.k_proj.weight", (64, h)), (p + "self_attn.v_proj.weight", (64, h)),
                   (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                   (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                   (p + "mlp.down_proj.weight", (h, inter))]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": layers}
    specs = [TensorSpec(n, s, torch.float32) for n, s in shapes]
    paths = []
    for k in range(3):
        g = torch.Generator().manual_seed(k)
        paths.append(write_model_dir(tmp_path / f"m{k}", specs, ((n, torch.randn(s, generator=g)) for n, s in shapes),
                                     config=config, side_files_from=tmp_path))
    model_bytes = sum(s.nbytes for s in specs)
    largest = max(s.nbytes for s in specs)
    cfg = {"merge_method": "task_arithmetic", "base_model": str(paths[0]), "dtype": "float32",
           "models": [{"model": str(paths[1]), "parameters": {"weight": 1.0}},
                      {"model": str(paths[2]), "parameters": {"weight": list(range(layers))}}]}
    run = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, json.dumps(cfg), str(tmp_path / "out")],
                         capture_output=True, text=True, check=True)
    rss = json.loads(run.stdout.strip().splitlines()[-1])
    growth = rss["peak"] - rss["before"]
    # (3 sources + 1 output) x the largest tensor, plus slack for the allocator: well under the model's size
    assert growth < 4 * largest + 6 * 2**20, \
        f"peak grew by {growth / 2**20:.1f} MiB; model {model_bytes / 2**20:.0f} MiB"
    assert load_tensors(tmp_path / "out")[EMBED].shape == (vocab, h)


# --- bad inputs: one line, exit status 2 ------------------------------------------------------------------------------
def _recipe_file(tmp_path: Path, cfg: dict) -> str:
    import yaml

    f = tmp_path / "recipe.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return str(f)


def _cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()  # drop what building the models printed
    code = cli_main(list(args))
    err = capsys.readouterr().err.strip()
    return code, err


def test_mismatched_shapes_missing_tensors_and_unknown_layouts_exit_2(qwen3, llama_trio, tmp_path, capsys):
    wide = make_tiny(tmp_path / "wide", seed=4, intermediate=512)  # another MLP width
    cases = {
        "shapes differ": {"merge_method": "linear", "models": [{"model": str(qwen3["eu"]), "parameters": {"weight": 1}},
                                                               {"model": str(wide), "parameters": {"weight": 1}}]},
        "tensor model.layers.0.mlp.up_proj.weight missing": None,
        "cannot tell which decoder layer": None,
        "no config.json": {"merge_method": "linear", "models": [{"model": str(tmp_path), "parameters": {"weight": 1}}]},
        "needs a base_model": {"merge_method": "ties", "models": [{"model": str(qwen3["eu"]),
                                                                   "parameters": {"weight": 1}}]},
        "unknown method": {"merge_method": "frankenmerge", "models": [{"model": str(qwen3["eu"])}]},
    }
    # a model lacking one tensor
    src = load_tensors(qwen3["eu"])
    holed = {n: t for n, t in src.items() if n != "model.layers.0.mlp.up_proj.weight"}
    cfg_json = json.loads((qwen3["eu"] / "config.json").read_text())
    write_model_dir(tmp_path / "holed", [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in holed.items()],
                    iter(holed.items()), config=cfg_json, side_files_from=qwen3["eu"])
    cases["tensor model.layers.0.mlp.up_proj.weight missing"] = {
        "merge_method": "linear", "models": [{"model": str(qwen3["eu"]), "parameters": {"weight": 1}},
                                             {"model": str(tmp_path / "holed"), "parameters": {"weight": 1}}]}
    # a GPT-2-style layout that no family describes
    gpt = {"transformer.wte.weight": torch.zeros(8, 4), "transformer.h.0.attn.c_attn.weight": torch.zeros(4, 12)}
    write_model_dir(tmp_path / "gpt", [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in gpt.items()],
                    iter(gpt.items()), config={"architectures": ["GPT2LMHeadModel"], "num_hidden_layers": 1},
                    side_files_from=tmp_path)
    cases["cannot tell which decoder layer"] = {
        "merge_method": "linear", "models": [{"model": str(tmp_path / "gpt"), "parameters": {"weight": 1}}]}
    for expected, cfg in cases.items():
        code, err = _cli(capsys, "merge", _recipe_file(tmp_path, cfg), str(tmp_path / "out"))
        assert code == 2 and expected in err and len(err.splitlines()) == 1, (expected, err)
        assert not (tmp_path / "out").exists()


def test_pickle_weights_need_allow_pickle(llama_trio, tmp_path, capsys):
    pickled = tmp_path / "pickled"
    shutil.copytree(llama_trio["eu"], pickled)
    torch.save(load_tensors(llama_trio["eu"]), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    cfg = {"merge_method": "task_arithmetic", "base_model": str(llama_trio["base"]),
           "models": [{"model": str(llama_trio["instruct"]), "parameters": {"weight": 1.0}},
                      {"model": str(pickled), "parameters": {"weight": 0.5}}]}
    recipe = _recipe_file(tmp_path, cfg)
    code, err = _cli(capsys, "merge", recipe, str(tmp_path / "out"))
    assert code == 2 and "pickle" in err and "--allow-pickle" in err and len(err.splitlines()) == 1
    code, _ = _cli(capsys, "merge", recipe, str(tmp_path / "out"), "--allow-pickle")
    assert code == 0
    safe = dict(cfg, models=[cfg["models"][0], {"model": str(llama_trio["eu"]), "parameters": {"weight": 0.5}}])
    merge_to_disk(Recipe.from_mergekit(safe), tmp_path / "safe")
    a, b = load_tensors(tmp_path / "out"), load_tensors(tmp_path / "safe")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_dare_draws_kept_by_a_resident_merge_are_the_draws_of_a_disk_merge(llama_trio, tmp_path):
    from transformers import AutoModelForCausalLM

    def recipe(seed: int, density: float) -> Recipe:
        return Recipe.from_mergekit({
            "merge_method": "dare_ties", "base_model": str(llama_trio["base"]), "dtype": "float32",
            "parameters": {"random_seed": seed},
            "models": [{"model": str(llama_trio["instruct"]), "parameters": {"weight": 1.0, "density": 0.7}},
                       {"model": str(llama_trio["eu"]), "parameters": {"weight": 0.6, "density": density}}]})

    model = AutoModelForCausalLM.from_pretrained(llama_trio["instruct"], dtype=torch.float32)
    live = {n: p.data for n, p in model.named_parameters()}
    resident = ResidentMerge(recipe(5, 0.5), live)
    for k, (seed, density) in enumerate([(5, 0.3), (6, 0.3)]):  # the template's seed (kept draws), another seed
        resident.apply(recipe(seed, density))
        disk = load_tensors(merge_to_disk(recipe(seed, density), tmp_path / f"d{k}").out_dir)
        assert all(torch.equal(live[n], t) for n, t in disk.items())
