"""evomerge merge equals mergekit-yaml; resident merges equal disk merges bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from evomerge.merge import ResidentMerge, merge_to_disk
from evomerge.recipe import Recipe
from evomerge.tensors import ModelFiles

BIN = Path(sys.executable).parent


def _recipes(m: dict[str, Path]) -> dict[str, dict]:
    return {
        "task_arithmetic_per_layer": {
            "merge_method": "task_arithmetic", "base_model": str(m["base"]), "dtype": "float32",
            "models": [{"model": str(m["instruct"]), "parameters": {"weight": 1.0}},
                       {"model": str(m["eu"]), "parameters": {"weight": [0.2, 0.9, 1.4, 0.5]}},
                       {"model": str(m["ca"]), "parameters": {"weight": [0.3, 0.7]}}]},
        "task_arithmetic_lambda_normalize": {
            "merge_method": "task_arithmetic", "base_model": str(m["base"]), "dtype": "float32",
            "parameters": {"lambda": 0.8, "normalize": True},
            "models": [{"model": str(m["instruct"]), "parameters": {"weight": 1.0}},
                       {"model": str(m["eu"]), "parameters": {"weight": [1.5, 0.25, 0.75]}}]},
        "linear_per_layer": {
            "merge_method": "linear", "dtype": "float32",
            "models": [{"model": str(m["instruct"]), "parameters": {"weight": [1.0, 0.6, 0.3, 0.8]}},
                       {"model": str(m["eu"]), "parameters": {"weight": [0.5, 0.5, 1.2, 0.1]}}]},
        "linear_unnormalized_filtered": {
            "merge_method": "linear", "dtype": "float32", "parameters": {"normalize": False},
            "models": [{"model": str(m["instruct"]), "parameters": {"weight": [
                {"filter": "self_attn", "value": [0.2, 0.8]}, {"filter": "mlp", "value": 0.6}, {"value": 0.5}]}},
                       {"model": str(m["eu"]), "parameters": {"weight": 0.5}}]},
    }


def _mergekit(cfg: dict, out: Path, tmp: Path) -> None:
    cfg_file = tmp / f"{out.name}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run([str(BIN / "mergekit-yaml"), str(cfg_file), str(out)], check=True, env=env,
                   capture_output=True)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    f = ModelFiles.open(path)
    return {n: f.get(n) for n in f.names()}


@pytest.mark.parametrize("case", ["task_arithmetic_per_layer", "task_arithmetic_lambda_normalize",
                                  "linear_per_layer", "linear_unnormalized_filtered"])
def test_disk_merge_equals_mergekit(case, llama_trio, tmp_path):
    cfg = _recipes(llama_trio)[case]
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    merge_to_disk(Recipe.from_mergekit(cfg), ours)
    _mergekit(cfg, theirs, tmp_path)
    a, b = _tensors(ours), _tensors(theirs)
    assert set(a) == set(b)
    worst = max(float((a[n] - b[n]).abs().max()) for n in a)
    assert worst <= 1e-6, f"max abs diff {worst}"
    # and the merge really moved the weights away from every source
    inst = _tensors(llama_trio["instruct"])
    assert any(not torch.equal(a[n], inst[n]) for n in a)


def test_resident_merge_equals_disk_merge_bitwise(llama_trio, tmp_path):
    recipes = _recipes(llama_trio)
    template = Recipe.from_mergekit(recipes["task_arithmetic_per_layer"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_trio["instruct"], dtype=torch.float32)
    live = {n: p.data for n, p in model.named_parameters()}
    resident = ResidentMerge(template, live)
    for weights in ([0.1, 0.5, 1.0, 1.5], [1.9, 0.0, 0.3, 0.7]):
        cfg = dict(recipes["task_arithmetic_per_layer"])
        cfg["models"] = [cfg["models"][0], {"model": cfg["models"][1]["model"], "parameters": {"weight": weights}},
                         cfg["models"][2]]
        recipe = Recipe.from_mergekit(cfg)
        resident.apply(recipe)
        out = tmp_path / f"disk-{weights[0]}"
        merge_to_disk(recipe, out)
        disk = _tensors(out)
        for name, t in disk.items():
            assert torch.equal(live[name], t), name


def test_streamed_merge_equals_disk_merge_under_inference_mode(tmp_path):
    """`ResidentMerge.merged` as vLLM's reload_weights consumes it: inside inference mode, with tensors larger than a
    chunk (so the merge runs on pool threads, which must write the inference-mode outputs under that mode too)."""
    from evomerge.methods.chunked import CHUNK

    from conftest import make_llama

    base = make_llama(tmp_path / "base", seed=0, layers=1, vocab=6000)  # embedding: 768k elements > one chunk
    inst = make_llama(tmp_path / "inst", seed=1, parent=base, layers=1, vocab=6000)
    lang = make_llama(tmp_path / "lang", seed=2, parent=base, layers=1, vocab=6000)
    assert 6000 * 128 > CHUNK
    cfg = {"merge_method": "ties", "base_model": str(base), "dtype": "float32",
           "models": [{"model": str(inst), "parameters": {"weight": 1.0, "density": 0.6}},
                      {"model": str(lang), "parameters": {"weight": 0.7, "density": 0.6}}]}
    recipe = Recipe.from_mergekit(cfg)
    merge_to_disk(recipe, tmp_path / "disk")
    disk = _tensors(tmp_path / "disk")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            # copied as they come: the stream reuses its buffers, as vLLM's reload_weights consumes it
            streamed = {name: t.clone() for name, t in ResidentMerge(recipe, None).merged(recipe)}
    finally:
        torch.set_num_threads(threads)
    assert set(streamed) == set(disk)
    for name, t in disk.items():
        assert torch.equal(streamed[name], t), name


def test_settle_waits_for_a_gpu_merge_only(monkeypatch):
    """A GPU merge returns before its kernels finish: `settle` (the end of ResidentMerge.apply and of the vLLM
    swap) waits for the device, so merge + swap seconds are not charged to scoring. CPU: nothing to wait for."""
    import torch

    from evomerge.merge import settle

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    settle(torch.device("cpu"))
    assert waited == []
    settle(torch.device("cuda", 1))
    assert waited == [torch.device("cuda", 1)]
