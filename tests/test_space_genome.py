"""Search spaces validate, expand into genes, and map genomes to recipes deterministically."""

from __future__ import annotations

import pytest
import torch
import yaml

from evomerge.errors import UserError
from evomerge.genome import Genome
from evomerge.hub import check_configs
from evomerge.recipe import Recipe, dump_recipe_yaml
from evomerge.space import load_space, parse_space
from evomerge.spaceview import describe

from conftest import REPO

SPACES = REPO / "search_spaces"
QUICK = SPACES / "quickstart.yaml"
# Tiny replicas of the real architectures' config.json (the hub is not reachable in tests).
LLAMA31_8B = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 32, "hidden_size": 4096,
              "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256}
QWEN3_8B = {"architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 36, "hidden_size": 4096,
            "intermediate_size": 12288, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 151936}
TINY = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4, "hidden_size": 128, "intermediate_size": 256,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 400}


def replica(ref: str, hub: bool) -> dict:
    low = ref.lower()
    return QWEN3_8B if "qwen3" in low else TINY if "runs/tiny" in low else LLAMA31_8B


def _data(path=QUICK):
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_validates_and_round_trips(path):
    text = path.read_text()
    assert text.startswith("# Run: evomerge search search_spaces/")
    space = load_space(path)
    shapes = check_configs(space, resolver=replica)
    genes = space.expand(shapes.n_layers)
    values = {g.name: g.init for g in genes}
    recipe = space.recipe(values, shapes.n_layers)
    assert Recipe.from_mergekit(yaml.safe_load(dump_recipe_yaml(recipe))) == recipe
    for seed in space.seeds:
        space.recipe(space.seed_values(seed, shapes.n_layers), shapes.n_layers)
    assert "dimensions" in describe(space, shapes)


def test_dimension_counts_of_the_paper_spaces():
    counts = {}
    for name in ("llama31_8b_eu", "llama31_8b_multilingual", "qwen3_8b_eu", "llama31_8b_eu_dare_ties"):
        space = load_space(SPACES / f"{name}.yaml")
        counts[name] = len(space.expand(check_configs(space, resolver=replica).n_layers))
    assert counts == {"llama31_8b_eu": 34, "llama31_8b_multilingual": 20, "qwen3_8b_eu": 12,
                      "llama31_8b_eu_dare_ties": 32}


def test_quickstart_genes_and_recipe():
    space = load_space(QUICK)
    genes = space.expand(4)
    assert [g.name for g in genes] == [f"w_xb[{i}]" for i in range(4)] + ["w_xb_embed", "w_xb_head"]
    genome = Genome(tuple(genes))
    values = genome.decode([0.0, 0.25, 0.5, 1.0, 0.1, 0.9])
    assert values["w_xb[1]"] == 0.5 and values["w_xb_embed"] == pytest.approx(0.2)
    assert genome.encode(values) == pytest.approx([0.0, 0.25, 0.5, 1.0, 0.1, 0.9])
    recipe = space.recipe(values, 4)
    assert recipe.merge_method == "task_arithmetic" and recipe.base_model.endswith("runs/tiny/base")
    instruct, lang = recipe.inputs
    assert instruct.model.endswith("instruct") and instruct.parameters == {"weight": 1.0}
    for layer in range(4):
        c = recipe.coefficients(f"model.layers.{layer}.self_attn.o_proj.weight", 4)
        assert c.weights[1] == pytest.approx(values[f"w_xb[{layer}]"])
    assert recipe.coefficients("model.embed_tokens.weight", 4).weights[1] == pytest.approx(0.2)
    assert recipe.coefficients("lm_head.weight", 4).weights[1] == pytest.approx(1.8)
    assert recipe.coefficients("model.norm.weight", 4).weights[1] == pytest.approx(1.0)  # the fixed weight
    assert space.recipe(values, 4) == recipe  # deterministic


def _space(genes, fixed=None, models=None, method="task_arithmetic"):
    d = _data()
    d["genes"] = genes
    d["merge"] = {"method": method, "fixed": fixed or {"instruct": {"weight": 1.0}}}
    d.pop("seeds")
    if models:
        d["models"] = models
    return parse_space(d, str(QUICK))


def _w(recipe, name, n=8, model=1):
    return recipe.coefficients(name, n).weights[model]


def test_blocks_control_points_and_modules_map_to_layers():
    space = _space([
        {"name": "b", "parameter": "weight", "model": "xb", "granularity": "blocks", "count": 2, "low": 0, "high": 2},
    ])
    vals = {"b[b0]": 0.5, "b[b1]": 1.5}
    r = space.recipe(vals, 8)
    assert [_w(r, f"model.layers.{l}.mlp.up_proj.weight") for l in range(8)] == [0.5] * 4 + [1.5] * 4

    space = _space([{"name": "c", "parameter": "weight", "model": "xb", "granularity": "control_points",
                     "count": 3, "modules": ["attn", "mlp"], "low": 0, "high": 2}])
    names = [g.name for g in space.expand(5)]
    assert names == ["c.attn[p0]", "c.attn[p1]", "c.attn[p2]", "c.mlp[p0]", "c.mlp[p1]", "c.mlp[p2]"]
    vals = dict(zip(names, [0.0, 1.0, 2.0, 2.0, 2.0, 0.0]))
    r = space.recipe(vals, 5)
    assert [_w(r, f"model.layers.{l}.self_attn.q_proj.weight", 5) for l in range(5)] == pytest.approx([0, 0.5, 1, 1.5, 2])
    assert [_w(r, f"model.layers.{l}.mlp.down_proj.weight", 5) for l in range(5)] == pytest.approx([2, 2, 2, 1, 0])
    assert _w(r, "model.layers.3.input_layernorm.weight", 5) == pytest.approx(1.5)  # norms follow attention


def test_tied_gene_sets_several_models_and_method_wide_gene():
    models = _data()["models"] + [{"name": "xc", "role": "language", "language": "xc", "path": "../runs/tiny/lang-xb"}]
    space = _space([
        {"name": "w", "parameter": "weight", "models": ["xb", "xc"], "low": 0, "high": 1},
        {"name": "lam", "parameter": "lambda", "granularity": "per_layer", "low": 0.5, "high": 1.5},
    ], models=models)
    vals = {"w": 0.3, **{f"lam[{i}]": 0.5 + i * 0.25 for i in range(4)}}
    r = space.recipe(vals, 4)
    assert [m.parameters["weight"] for m in r.inputs] == [1.0, 0.3, 0.3]
    assert r.coefficients("model.layers.2.mlp.up_proj.weight", 4).shared["lambda"] == pytest.approx(1.0)


def test_quickstart_per_layer_genes_change_exactly_their_layers(llama_trio):
    from transformers import AutoModelForCausalLM

    from evomerge.merge import ResidentMerge

    d = _data()
    d["models"] = [{"name": "base", "role": "base", "path": str(llama_trio["base"])},
                   {"name": "instruct", "role": "instruct", "path": str(llama_trio["instruct"])},
                   {"name": "xb", "role": "language", "language": "xb", "path": str(llama_trio["eu"])}]
    space = parse_space(d, str(QUICK))
    genes = space.expand(4)
    init = {g.name: g.init for g in genes}
    model = AutoModelForCausalLM.from_pretrained(llama_trio["instruct"], dtype=torch.float32)
    live = {n: p.data for n, p in model.named_parameters()}
    resident = ResidentMerge(space.recipe(init, 4), live)
    resident.apply(space.recipe(init, 4))
    before = {n: t.clone() for n, t in live.items()}
    for layer in range(4):
        resident.apply(space.recipe({**init, f"w_xb[{layer}]": 0.3}, 4))
        changed = {n for n in live if not torch.equal(live[n], before[n])}
        assert changed and all(f"layers.{layer}." in n for n in changed), (layer, changed)
        assert len(changed) == sum(f"layers.{layer}." in n for n in live)
    resident.apply(space.recipe({**init, "w_xb_embed": 0.3}, 4))
    assert {n for n in live if not torch.equal(live[n], before[n])} == {"model.embed_tokens.weight"}


def _groups(space, n=4, values=None):
    from evomerge.spaceview import tensor_groups

    values = values or {g.name: g.init for g in space.expand(n)}
    return {(r[0], r[1], r[2]): (r[3], r[4]) for r in tensor_groups(space, n, values)}


def test_space_show_says_what_every_tensor_group_gets():
    space = load_space(SPACES / "miniature_tradeoff.yaml")
    rows = _groups(space)
    assert rows[("instruct", "weight", "every tensor")] == ("no gene: fixed (merge.fixed)", "1")
    assert rows[("xb", "weight", "embeddings")][0] == "gene w_xb_embed (tensors: embed)"
    assert rows[("xb", "weight", "output head")][0] == "gene w_xb_head (tensors: lm_head)"
    assert rows[("xb", "weight", "final norm")] == ("no gene: fixed (merge.fixed)", "1")  # merge.fixed.xb.weight
    for kind in ("attention", "norms", "mlp"):
        assert rows[("xb", "weight", f"layers {kind}")][0] == "genes w_xb[0] .. w_xb[3] (per_layer, 4 genes)"
    # no embed/head genes and no fixed value: the outside tensors take layer 0's value, and the table says so
    bare = _space([{"name": "w", "parameter": "weight", "model": "xb", "granularity": "per_layer", "low": 0,
                    "high": 2}])
    values = {f"w[{i}]": 0.25 * (i + 1) for i in range(4)}
    rows = _groups(bare, values=values)
    for group in ("embeddings", "final norm", "output head"):
        set_by, value = rows[("xb", "weight", group)]
        assert set_by.startswith("no gene of its own: takes w[0]'s value") and value == "0.25", (group, set_by)
    assert rows[("xb", "weight", "layers mlp")][1] == "0.25, 0.5, 0.75, 1"
    # a global gene covers every tensor of its model
    glob = _space([{"name": "g", "parameter": "weight", "model": "xb", "granularity": "global", "low": 0,
                    "high": 2, "init": 0.5}])
    assert _groups(glob)[("xb", "weight", "every tensor")] == ("gene g (global)", "0.5")
    shapes = check_configs(space, resolver=replica)
    assert "what every tensor group gets" in describe(space, shapes)


def test_genome_initial_point_and_stds_are_in_unit_coordinates():
    genome = Genome(tuple(load_space(QUICK).expand(4)))
    assert genome.initial() == [0.5] * 6
    assert genome.stds() == pytest.approx([0.2] * 6)
    assert genome.decode([1.3, -0.2, 0.5, 0.5, 0.5, 0.5])["w_xb[0]"] == 2.0  # clipped into bounds


def test_seeds_expand_and_are_checked():
    space = load_space(QUICK)
    vals = space.seed_values(space.seeds[0], 4)
    assert set(vals.values()) == {0.5}
    d = _data()
    d["seeds"] = [{"name": "bad", "values": {"w_xb": 7.0}}]
    with pytest.raises(UserError, match="outside"):
        parse_space(d, str(QUICK)).seed_values(parse_space(d, str(QUICK)).seeds[0], 4)


def _mutate(fn):
    d = _data()
    fn(d)
    return d


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(colour=1), "colour"),
    (lambda d: d["genes"][0].update(low=3.0), "high"),
    (lambda d: d["genes"][0].update(init=5.0), "init"),
    (lambda d: d["genes"][0].update(granularity="per_head"), "granularity"),
    (lambda d: d["genes"][0].update(granularity="blocks"), "count"),
    (lambda d: d["genes"][0].update(modules=["attn", "ffn"]), "modules"),
    (lambda d: d["genes"][0].update(model="nobody"), "model"),
    (lambda d: d["genes"][0].update(low="zero"), "low"),
    (lambda d: d["genes"][0].update(parameter="density"), "parameter"),
    (lambda d: d["genes"][1].update(tensors="bias"), "tensors"),
    (lambda d: d["genes"].append(dict(d["genes"][1], name="again")), "covers"),
    (lambda d: d["merge"].update(method="frankenmerge"), "merge.method"),
    (lambda d: d["models"].pop(0), "merge.method"),  # task arithmetic without a base
    (lambda d: d["models"][1].update(role="teacher"), "role"),
    (lambda d: d["models"][1].update(hf="not an id"), "models[1]"),
    (lambda d: d["models"][2].pop("language"), "language"),
    (lambda d: d["eval"].update(sets=[]), "eval.sets"),
    (lambda d: d["search"].update(popsize=0), "popsize"),
    (lambda d: d["merge"].pop("fixed"), "merge.fixed"),
    (lambda d: d["seeds"][0]["values"].update(w_xb="high"), "seeds"),
])
def test_bad_spaces_get_errors_naming_the_field(mutate, field):
    with pytest.raises(UserError) as e:
        parse_space(_mutate(mutate), str(QUICK))
    assert field in str(e.value)


def test_impossible_granularity_and_mismatched_architectures():
    d = _data()
    d["genes"][0].update(granularity="blocks", count=9)
    space = parse_space(d, str(QUICK))
    with pytest.raises(UserError, match="9 blocks for 4 layers"):
        check_configs(space, resolver=replica)
    space = load_space(QUICK)
    with pytest.raises(UserError, match="layer counts differ"):
        check_configs(space, resolver=lambda ref, hub: LLAMA31_8B if "base" in ref else TINY)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n  - {name: a\n")
    with pytest.raises(UserError, match="malformed YAML"):
        load_space(bad)
