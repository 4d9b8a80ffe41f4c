"""Recipe resolution follows mergekit's rules; mergekit YAML round-trips."""

import pytest
import yaml

from evomerge.errors import UserError
from evomerge.recipe import Recipe, dump_recipe_yaml, evaluate_setting


def test_gradient_list_interpolates_over_layers():
    assert evaluate_setting([0.0, 1.0], "model.layers.0.mlp.up_proj.weight", 0.0) == 0.0
    assert evaluate_setting([0.0, 1.0], "x", 0.5) == pytest.approx(0.5)
    assert evaluate_setting([0.0, 1.0, 3.0], "x", 0.75) == pytest.approx(2.0)
    assert evaluate_setting([0.2, 0.4, 0.6, 0.8], "x", 1.0) == pytest.approx(0.8)


def test_filters_pick_the_first_match():
    setting = [{"filter": "self_attn", "value": 0.1}, {"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.9}]
    assert evaluate_setting(setting, "model.layers.3.self_attn.q_proj.weight", 1.0) == 0.1
    assert evaluate_setting(setting, "model.layers.3.mlp.up_proj.weight", 1.0) == 1.0
    assert evaluate_setting(setting, "model.norm.weight", 0.0) == 0.9


def _recipe(weight):
    return Recipe.from_mergekit({"merge_method": "task_arithmetic", "base_model": "b",
                                 "models": [{"model": "i", "parameters": {"weight": 1.0}},
                                            {"model": "l", "parameters": {"weight": weight}}]})


def test_per_layer_list_gives_each_layer_its_value_and_outside_tensors_the_first():
    r = _recipe([0.1, 0.2, 0.3, 0.4])
    for layer, w in enumerate([0.1, 0.2, 0.3, 0.4]):
        c = r.coefficients(f"model.layers.{layer}.mlp.down_proj.weight", 4)
        assert c.weights == pytest.approx((1.0, w))
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert r.coefficients(name, 4).weights == pytest.approx((1.0, 0.1))


def test_base_is_not_an_input_and_sources_list_base_first():
    r = Recipe.from_mergekit({"merge_method": "task_arithmetic", "base_model": "b",
                              "models": [{"model": "b"}, {"model": "i", "parameters": {"weight": 1}}]})
    assert [m.model for m in r.inputs] == ["i"]
    assert r.sources == ("b", "i")


def test_yaml_round_trip():
    r = _recipe([0.5, 1.25, 0.75, 2.0])
    again = Recipe.from_mergekit(yaml.safe_load(dump_recipe_yaml(r, ["a comment"])))
    assert again == r


@pytest.mark.parametrize("cfg, field", [
    ({"merge_method": "nope", "models": [{"model": "a"}]}, "merge_method"),
    ({"merge_method": "task_arithmetic", "models": [{"model": "a", "parameters": {"weight": 1}}]}, "base_model"),
    ({"merge_method": "linear", "models": []}, "models"),
    ({"merge_method": "linear", "models": [{"model": "a"}], "colour": 1}, "colour"),
    ({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": [{"x": 1}]}}]}, "weight"),
])
def test_bad_recipes_name_the_field(cfg, field):
    with pytest.raises(UserError) as e:
        Recipe.from_mergekit(cfg)
    assert field in str(e.value)
