"""Search spaces validate, expand into genes, and map genomes to recipes deterministically."""

import copy

import pytest
import yaml

from evomerge.errors import UserError
from evomerge.genome import Genome
from evomerge.space import load_space, parse_space

from conftest import REPO

SPACE = REPO / "search_spaces" / "quickstart.yaml"


def _data():
    return yaml.safe_load(SPACE.read_text())


def test_every_shipped_space_validates():
    for path in sorted((REPO / "search_spaces").glob("*.yaml")):
        space = load_space(path)
        assert space.genes, path


def test_quickstart_expands_one_gene_per_layer_and_maps_to_a_recipe():
    space = load_space(SPACE)
    genes = space.expand(4)
    assert [g.name for g in genes] == [f"w_xb[{i}]" for i in range(4)]
    genome = Genome(tuple(genes))
    values = genome.decode([0.0, 0.25, 0.5, 1.0])
    assert values == {"w_xb[0]": 0.0, "w_xb[1]": 0.5, "w_xb[2]": 1.0, "w_xb[3]": 2.0}
    assert genome.encode(values) == [0.0, 0.25, 0.5, 1.0]
    recipe = space.recipe(values, 4)
    assert recipe.merge_method == "task_arithmetic" and recipe.base_model.endswith("runs/tiny/base")
    instruct, lang = recipe.inputs
    assert instruct.model.endswith("instruct") and instruct.parameters == {"weight": 1.0}
    assert lang.parameters == {"weight": [0.0, 0.5, 1.0, 2.0]}
    for layer in range(4):
        c = recipe.coefficients(f"model.layers.{layer}.self_attn.o_proj.weight", 4)
        assert c.weights[1] == pytest.approx(values[f"w_xb[{layer}]"])
    assert space.recipe(values, 4) == recipe  # deterministic


def test_genome_initial_point_and_stds_are_in_unit_coordinates():
    genome = Genome(tuple(load_space(SPACE).expand(4)))
    assert genome.initial() == [0.5] * 4
    assert genome.stds() == pytest.approx([0.2] * 4)
    assert genome.decode([1.3, -0.2, 0.5, 0.5])["w_xb[0]"] == 2.0  # clipped into bounds


def _mutate(fn):
    d = _data()
    fn(d)
    return d


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(colour=1), "colour"),
    (lambda d: d["genes"][0].update(low=3.0), "high"),
    (lambda d: d["genes"][0].update(init=5.0), "init"),
    (lambda d: d["genes"][0].update(granularity="per_head"), "granularity"),
    (lambda d: d["genes"][0].update(model="nobody"), "model"),
    (lambda d: d["genes"][0].update(low="zero"), "low"),
    (lambda d: d["merge"].update(method="frankenmerge"), "merge.method"),
    (lambda d: d["models"].pop(0), "merge.method"),  # task arithmetic without a base
    (lambda d: d["models"][1].update(role="teacher"), "role"),
    (lambda d: d["models"][2].pop("language"), "language"),
    (lambda d: d["eval"].update(sets=[]), "eval.sets"),
    (lambda d: d["search"].update(popsize=0), "popsize"),
    (lambda d: d["merge"].pop("fixed"), "merge.fixed"),
])
def test_bad_spaces_get_errors_naming_the_field(mutate, field):
    with pytest.raises(UserError) as e:
        parse_space(_mutate(mutate), str(SPACE))
    assert field in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n  - {name: a\n")
    with pytest.raises(UserError, match="malformed YAML"):
        load_space(bad)
