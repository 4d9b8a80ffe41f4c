"""mergekit's `slices:` recipes: `evomerge merge` of one equals mergekit-yaml tensor by tensor; slices that move
layers are refused in one line (exit 2); a slices recipe is written back as slices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from evomerge.cli import main
from evomerge.errors import UserError
from evomerge.recipe import Recipe

from conftest import load_tensors, mergekit_merge
from tiny_lm import make_byte_llama


def _src(model: Path, lr: list[int], **params) -> dict:
    return {"model": str(model), "layer_range": lr, **({"parameters": params} if params else {})}


def _cases(m: dict[str, Path]) -> dict[str, dict]:
    base, inst, eu, ca = m["base"], m["instruct"], m["eu"], m["ca"]
    attn_mlp = [{"filter": "self_attn", "value": [0.2, 1.1]}, {"filter": "mlp", "value": 0.7}, {"value": 0.4}]
    return {
        # what mergekit-evolve writes (discrete layer groups): per-source scalars per slice, base among the sources
        "task_arithmetic_evolve_groups": {
            "merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
            "parameters": {"normalize": False, "int8_mask": True},
            "slices": [{"sources": [_src(inst, lr, weight=wi), _src(eu, lr, weight=we), _src(base, lr)]}
                       for lr, wi, we in (([0, 2], 0.9, 0.3), ([2, 4], 0.4, 1.2))]},
        # one full-range slice: gradients, filters, slice-wide and recipe-wide parameters
        "task_arithmetic_full_range": {
            "merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
            "parameters": {"lambda": 0.9},
            "slices": [{"parameters": {"weight": [0.1, 0.6, 0.3]},
                        "sources": [_src(base, [0, 4]), _src(inst, [0, 4], weight=attn_mlp),
                                    _src(eu, [0, 4], weight=[1.0, 0.2, 0.8, 0.5]), _src(ca, [0, 4])]}]},
        # gradients run over each slice's own layers (a one-layer slice sits at t = 1); slice parameters override
        "linear_gradients_per_slice": {
            "merge_method": "linear", "dtype": "float32", "parameters": {"normalize": False, "weight": 0.25},
            "slices": [{"sources": [_src(inst, [0, 1], weight=[0.3, 0.9]), _src(eu, [0, 1])],
                        "parameters": {"weight": 0.6}},
                       {"sources": [_src(inst, [1, 4], weight=attn_mlp), _src(eu, [1, 4], weight=[0.2, 0.5, 1.3])],
                        "parameters": {"normalize": True}}]},
        "ties_filtered_density": {
            "merge_method": "ties", "base_model": str(base), "dtype": "float32",
            "parameters": {"density": [{"filter": "mlp", "value": [0.3, 0.9]}, {"value": 0.6}]},
            "slices": [{"sources": [_src(base, [0, 3]), _src(inst, [0, 3], weight=[0.5, 1.0]),
                                    _src(eu, [0, 3], weight=0.7, density=[0.8, 0.4])]},
                       {"sources": [_src(base, [3, 4]), _src(inst, [3, 4], weight=0.2), _src(eu, [3, 4], weight=1.0)],
                        "parameters": {"normalize": False}}]},
    }


@pytest.mark.parametrize("case", ["task_arithmetic_evolve_groups", "task_arithmetic_full_range",
                                  "linear_gradients_per_slice", "ties_filtered_density"])
def test_merge_of_a_slices_recipe_equals_mergekit(case, llama_trio, tmp_path, capsys):
    cfg = _cases(llama_trio)[case]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(tmp_path / "recipe.yaml"), str(tmp_path / "ours")]) == 0, capsys.readouterr().err
    a, b = load_tensors(tmp_path / "ours"), load_tensors(mergekit_merge(cfg, tmp_path / "theirs"))
    assert set(a) == set(b)
    worst = max(float((a[n] - b[n]).abs().max()) for n in a)
    assert worst <= 1e-6, f"max abs diff {worst}"
    inst = load_tensors(llama_trio["instruct"])
    assert any(not torch.equal(a[n], inst[n]) for n in a)  # the merge moved the weights


def test_resident_merge_serves_slices_candidates_as_the_disk_merge(llama_trio, tmp_path):
    """The in-memory merge a search worker or `eval --backend vllm` runs: one slices template prepared once, each
    candidate (other per-slice weights) streamed bit for bit as `evomerge merge` writes it."""
    from evomerge.merge import ResidentMerge, merge_to_disk

    cfg = _cases(llama_trio)["task_arithmetic_evolve_groups"]
    resident = ResidentMerge(Recipe.from_mergekit(cfg), None)
    for k, weights in enumerate(((0.1, 1.5), (1.2, 0.0))):
        candidate = {**cfg, "slices": [{"sources": [{**src, "parameters": {"weight": w}} if "parameters" in src
                                                    else src for src in sl["sources"]]}
                                       for sl, w in zip(cfg["slices"], weights)]}
        recipe = Recipe.from_mergekit(candidate)
        disk = load_tensors(merge_to_disk(recipe, tmp_path / f"disk{k}").out_dir)
        streamed = {name: t.clone() for name, t in resident.merged(recipe)}
        assert set(streamed) == set(disk) and all(torch.equal(streamed[n], disk[n]) for n in disk)


def test_slices_recipe_reads_settings_per_slice_with_local_gradients():
    r = Recipe.from_mergekit({
        "merge_method": "task_arithmetic", "base_model": "b", "dtype": "bfloat16",
        "parameters": {"weight": 0.5},
        "slices": [{"sources": [{"model": "b", "layer_range": [0, 2]},
                                {"model": "i", "layer_range": [0, 2], "parameters": {"weight": [0.0, 1.0]}}]},
                   {"sources": [{"model": "i", "layer_range": [2, 6]}, {"model": "b", "layer_range": [2, 6]}],
                    "parameters": {"weight": [{"filter": "self_attn", "value": [1.0, 4.0]}], "lambda": 2.0}}]})
    assert r.dtype == "bfloat16" and r.sources == ("b", "i")
    w = [r.coefficients(f"model.layers.{i}.self_attn.q_proj.weight", 6).weights[0] for i in range(6)]
    assert w == pytest.approx([0.0, 1.0, 1.0, 2.0, 3.0, 4.0])  # t restarts at each slice
    assert r.coefficients("model.layers.3.mlp.up_proj.weight", 6).weights == (0.5,)  # filter misses: falls through
    assert r.coefficients("model.layers.3.mlp.up_proj.weight", 6).shared["lambda"] == 2.0
    assert r.coefficients("model.embed_tokens.weight", 6).weights == (0.0,)  # first slice, t = 0
    assert r.coefficients("lm_head.weight", 6).weights == (0.5,)  # last slice, t = 0
    assert r.coefficients("model.norm.weight", 6).shared["lambda"] == 2.0
    assert Recipe.from_mergekit(yaml.safe_load(yaml.safe_dump(r.to_mergekit()))) == r
    assert "slices" in r.to_mergekit() and "models" not in r.to_mergekit()
    with pytest.raises(UserError, match="slices cover layers 0-5 but the models have 8"):
        r.coefficients("model.layers.0.mlp.up_proj.weight", 8)


def test_eval_of_a_slices_recipe_scores_mergekits_merge(tmp_path):
    """`evomerge eval RECIPE` reads the slices form too: every choice's log-likelihood is that of mergekit's merged
    model."""
    a, b = (make_byte_llama(tmp_path / name, seed=seed) for name, seed in (("a", 0), ("b", 1)))
    cfg = {"merge_method": "linear", "dtype": "float32", "slices": [
        {"sources": [_src(a, [0, 1], weight=0.8), _src(b, [0, 1], weight=0.2)]},
        {"sources": [_src(a, [1, 2], weight=[0.3, 0.9]), _src(b, [1, 2], weight=0.7)]}]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(cfg))
    es = tmp_path / "mc"
    es.mkdir()
    (es / "card.yaml").write_text(yaml.safe_dump({"name": "mc", "language": "en", "kind": "multiple_choice",
                                                  "metric": "acc", "prompt": "Q: {question}\nA:"}))
    items = [{"id": f"q{k}", "split": "dev", "question": q, "choices": c, "gold": 0} for k, (q, c) in enumerate([
        ("What is tea?", ["a drink", "a very old car", "a dog"]), ("Where is Bilbao?", ["Biscay", "Mars"]),
        ("What are castells?", ["human towers", "houses", "stone mountains"])])]
    (es / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    theirs = mergekit_merge(cfg, tmp_path / "theirs")
    for f in a.iterdir():  # the tokenizer (the oracle's merge is written without it)
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, theirs / f.name)
    lls = []
    for target, per_item in ((tmp_path / "recipe.yaml", tmp_path / "ours.jsonl"), (theirs, tmp_path / "theirs.jsonl")):
        assert main(["eval", str(target), "--eval-set", str(es), "--backend", "hf", "--per-item", str(per_item)]) == 0
        rows = [json.loads(line) for line in per_item.read_text().splitlines()]
        lls.append([ll for row in rows for ll in row["loglikelihoods"]])
    assert len(lls[0]) == 8 and lls[0] == pytest.approx(lls[1], rel=1e-5)


_A, _B = "a", "b"
REFUSED = {
    "frankenmerge": ([{"sources": [{"model": _A, "layer_range": [0, 2]}, {"model": _B, "layer_range": [2, 4]}]}],
                     "slices[0]: its sources cover different layers (a [0, 2], b [2, 4])"),
    "repeated_layers": ([{"sources": [{"model": _A, "layer_range": [0, 3]}, {"model": _B, "layer_range": [0, 3]}]},
                         {"sources": [{"model": _A, "layer_range": [2, 4]}, {"model": _B, "layer_range": [2, 4]}]}],
                        "slices[1]: starts at layer 2, not 3"),
    "other_models": ([{"sources": [{"model": _A, "layer_range": [0, 2]}, {"model": _B, "layer_range": [0, 2]}]},
                      {"sources": [{"model": _A, "layer_range": [2, 4]}, {"model": "c", "layer_range": [2, 4]}]}],
                     "slices[1]: merges other models than slices[0]"),
    "residual_weight": ([{"sources": [{"model": _A, "layer_range": [0, 4]}], "residual_weight": 0.5}],
                        "slices[0].residual_weight: unknown key"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_slices_that_move_layers_are_refused_in_one_line(case, tmp_path, capsys):
    slices, expected = REFUSED[case]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"merge_method": "linear", "parameters": {"weight": 1.0}, "slices": slices}))
    assert main(["merge", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and expected in err, err
    assert not (tmp_path / "out").exists()


def test_a_slices_recipe_shorter_than_the_models_is_refused_before_writing(llama_trio, tmp_path, capsys):
    cfg = {"merge_method": "linear", "parameters": {"weight": 1.0}, "slices": [{"sources": [
        _src(llama_trio["instruct"], [0, 3]), _src(llama_trio["eu"], [0, 3])]}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(tmp_path / "r.yaml"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the slices cover layers 0-2 but the models have 4" in err, err
    assert not (tmp_path / "out").exists()  # the model directory is written atomically
