"""Every merge method against mergekit 0.1.5 (run in-process as the oracle), random masks under their seed,
resident == disk, and refused recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import load_tensors, mergekit_merge
from evomerge.errors import UserError
from evomerge.merge import ResidentMerge, merge_to_disk
from evomerge.methods import METHODS
from evomerge.methods.sparsify import uniform
from evomerge.recipe import Recipe


def _paths(m: dict[str, Path]) -> tuple[str, str, str, str]:
    return str(m["base"]), str(m["instruct"]), str(m["eu"]), str(m["ca"])


def _deterministic(m: dict[str, Path]) -> dict[str, dict]:
    """Scalar, per-layer gradient and filtered settings of every deterministic method."""
    b, i, eu, ca = _paths(m)
    return {
        "ties_gradients": {
            "merge_method": "ties", "base_model": b,
            "models": [{"model": i, "parameters": {"weight": 1.0, "density": 0.5}},
                       {"model": eu, "parameters": {"weight": [0.3, 0.9, 1.2, 0.5], "density": [0.2, 0.8]}},
                       {"model": ca, "parameters": {"weight": 0.7, "density": 0.35}}]},
        "ties_filtered_rescaled": {  # instruct's density filter matches only mlp: elsewhere parameters.density
            "merge_method": "ties", "base_model": b,
            "parameters": {"normalize": False, "rescale": True, "lambda": 0.7, "density": 0.4},
            "models": [{"model": i, "parameters": {"weight": 1.0, "density": [{"filter": "mlp", "value": 0.3}]}},
                       {"model": eu, "parameters": {"weight": [{"filter": "self_attn", "value": [0.2, 0.8]},
                                                               {"value": 0.6}]}}]},
        "breadcrumbs_gradients": {
            "merge_method": "breadcrumbs", "base_model": b,
            "models": [{"model": i, "parameters": {"weight": 1.0, "density": 0.6, "gamma": 0.05}},
                       {"model": eu, "parameters": {"weight": [0.3, 0.9], "density": [0.2, 0.9]}}]},
        "breadcrumbs_ties_filtered": {
            "merge_method": "breadcrumbs_ties", "base_model": b, "parameters": {"normalize": True, "gamma": 0.02},
            "models": [{"model": i, "parameters": {"weight": 1.0, "density": 0.7}},
                       {"model": eu, "parameters": {"weight": 0.5, "gamma": 0.1, "density": [
                           {"filter": "mlp", "value": 0.5}, {"value": 0.9}]}},
                       {"model": ca, "parameters": {"weight": [0.2, 0.6], "density": 0.8}}]},
        "della_dense": {  # density 1 (the default) draws nothing: sign consensus and normalize alone
            "merge_method": "della", "base_model": b,
            "models": [{"model": i, "parameters": {"weight": 1.0}},
                       {"model": eu, "parameters": {"weight": [0.4, 1.0]}},
                       {"model": ca, "parameters": {"weight": 0.3}}]},
        "task_arithmetic_ignores_density": {  # as in mergekit: task_arithmetic accepts density and ignores it
            "merge_method": "task_arithmetic", "base_model": b,
            "models": [{"model": i, "parameters": {"weight": 1.0, "density": 0.3}},
                       {"model": eu, "parameters": {"weight": [0.2, 0.7]}}]},
        "slerp_gradient": {
            "merge_method": "slerp", "base_model": b, "parameters": {"t": [0.0, 0.3, 0.8, 1.0]},
            "models": [{"model": b}, {"model": eu}]},
        "slerp_filtered": {  # base not listed among the models (mergekit adds it)
            "merge_method": "slerp", "base_model": i,
            "parameters": {"t": [{"filter": "self_attn", "value": [0.1, 0.9]}, {"value": 0.4}]},
            "models": [{"model": eu}]},
    }


def _randomized(m: dict[str, Path]) -> dict[str, dict]:
    b, i, eu, ca = _paths(m)
    return {
        "dare_ties": {
            "merge_method": "dare_ties", "base_model": b, "parameters": {"random_seed": 7},
            "models": [{"model": i, "parameters": {"weight": 1.0, "density": 0.5}},
                       {"model": eu, "parameters": {"weight": [0.3, 0.9], "density": [0.3, 0.8]}},
                       {"model": ca, "parameters": {"weight": 0.6, "density": 1.0}}]},
        "dare_linear": {
            "merge_method": "dare_linear", "base_model": b, "parameters": {"random_seed": 3, "normalize": True},
            "models": [{"model": i, "parameters": {"weight": 1.0, "density": 0.6}},
                       {"model": eu, "parameters": {"weight": 0.5, "density": [{"filter": "mlp", "value": 0.4},
                                                                              {"value": 0.9}]}}]},
        "della": {
            "merge_method": "della", "base_model": b, "parameters": {"random_seed": 11},
            "models": [{"model": i, "parameters": {"weight": 1.0, "density": 0.5, "epsilon": 0.1}},
                       {"model": eu, "parameters": {"weight": [0.4, 0.8], "density": 0.7}}]},
        "della_linear": {
            "merge_method": "della_linear", "base_model": b, "parameters": {"rescale": False, "lambda": 1.2},
            "models": [{"model": i, "parameters": {"weight": 1.0, "density": [0.3, 0.6], "epsilon": 0.2}},
                       {"model": eu, "parameters": {"weight": 0.5, "density": 0.6}}]},
    }


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def _compare_with_mergekit(cfg: dict, tmp_path: Path) -> None:
    cfg = dict(cfg, dtype="float32")
    recipe = Recipe.from_mergekit(cfg)
    merge_to_disk(recipe, tmp_path / "ours")
    mergekit_merge(recipe.to_mergekit(), tmp_path / "theirs")  # our exported form means the same to mergekit
    ours = load_tensors(tmp_path / "ours")
    worst = _max_diff(ours, load_tensors(tmp_path / "theirs"))
    assert worst <= 1e-6, f"max abs diff {worst}"
    for source in {recipe.base_model, *(e.model for e in recipe.inputs)}:
        theirs = load_tensors(Path(source))
        assert any(not torch.equal(ours[n], theirs[n]) for n in ours), f"the merge left {source} unchanged"


@pytest.mark.parametrize("case", list(_deterministic({k: Path(k) for k in ("base", "instruct", "eu", "ca")})))
def test_deterministic_methods_equal_mergekit(case, llama_trio, tmp_path):
    _compare_with_mergekit(_deterministic(llama_trio)[case], tmp_path)


@pytest.fixture
def our_draws_in_mergekit(monkeypatch):
    """Make mergekit's Bernoulli draws ours: the uniforms keyed by (seed, tensor, input index), kept when u < p.

    mergekit's masks come from its global RNG, which no seed of ours reproduces; with the draws replaced, what is
    left to compare is every other step of DARE and DELLA (probabilities, rescaling, consensus, weighting).
    """
    import mergekit.merge_methods.generalized_task_arithmetic as gta

    state = {"seed": 0, "name": "", "index": -1, "draws": 0}
    merge_group, sparsify = gta.GeneralizedTaskArithmeticMerge.merge_group, gta.sparsify

    def named_merge_group(self, group, /, **parameters):
        state["name"], state["index"] = group.metadata.name, -1
        return merge_group(self, group, **parameters)

    def counted_sparsify(*args, **kwargs):  # called once per non-base input, in recipe order
        state["index"] += 1
        return sparsify(*args, **kwargs)

    def keyed_bernoulli(p, *args, **kwargs):
        state["draws"] += 1
        u = uniform(state["seed"], state["name"], state["index"], p.shape).to(p.device)
        return (u < p).to(p.dtype)

    monkeypatch.setattr(gta.GeneralizedTaskArithmeticMerge, "merge_group", named_merge_group)
    monkeypatch.setattr(gta, "sparsify", counted_sparsify)
    monkeypatch.setattr(torch, "bernoulli", keyed_bernoulli)
    return state


@pytest.mark.parametrize("case", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_randomized_methods_equal_mergekit_given_our_draws(case, llama_trio, tmp_path, our_draws_in_mergekit):
    cfg = _randomized(llama_trio)[case]
    our_draws_in_mergekit["seed"] = cfg.get("parameters", {}).get("random_seed", 0)
    _compare_with_mergekit(cfg, tmp_path)
    assert our_draws_in_mergekit["draws"] > 0


def test_random_masks_follow_the_seed(llama_trio, tmp_path):
    cfg = dict(_randomized(llama_trio)["dare_ties"])
    merged = {}
    for run, seed in (("a", 7), ("b", 7), ("c", 8)):
        merge_to_disk(Recipe.from_mergekit(dict(cfg, parameters={"random_seed": seed})), tmp_path / run)
        merged[run] = load_tensors(tmp_path / run)
    assert all(torch.equal(merged["a"][n], merged["b"][n]) for n in merged["a"])
    assert all(not torch.equal(merged["a"][n], merged["c"][n]) for n in merged["a"])


def _single_tensor_merge(method: str, params: dict, delta: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """merged - base for one tensor and one input model of weight 1, through the kernels."""
    recipe = Recipe.from_mergekit({"merge_method": method, "base_model": "b", "parameters": {"rescale": False},
                                   "models": [{"model": "x", "parameters": {"weight": 1.0, **params}}]})
    coeffs = recipe.coefficients("model.layers.1.mlp.up_proj.weight", 4)
    kernel = METHODS[method]
    prepared = kernel.prepare(base, [base + delta])
    return kernel.combine(base, prepared, coeffs, torch.empty_like(base)) - base


def test_sparsifiers_keep_the_expected_fraction():
    g = torch.Generator().manual_seed(0)
    base = torch.zeros(512, 256)  # so that merged - base is exactly the kept part of delta
    delta = torch.randn(512, 256, generator=g) * 0.1
    n = delta.numel()
    for method, params in (("dare_linear", {}), ("della_linear", {"epsilon": 0.2})):
        kept = {d: _single_tensor_merge(method, {"density": d, **params}, delta, base) != 0 for d in (0.3, 0.7)}
        for d, mask in kept.items():
            assert abs(mask.float().mean().item() - d) < 0.01, (method, d)
        assert not (kept[0.3] & ~kept[0.7]).any(), "a higher density keeps a superset under one seed"
    # DELLA keeps large magnitudes more often than small ones
    kept = _single_tensor_merge("della_linear", {"density": 0.5, "epsilon": 0.3}, delta, base) != 0
    assert delta[kept].abs().mean() > 1.2 * delta[~kept].abs().mean()
    # TIES keeps exactly the k largest; breadcrumbs drops the gamma largest and keeps int(density * n)
    kept = _single_tensor_merge("ties", {"density": 0.25}, delta, base) != 0
    assert kept.sum() == int(0.25 * n) and delta[kept].abs().min() >= delta[~kept].abs().max()
    kept = _single_tensor_merge("breadcrumbs", {"density": 0.5, "gamma": 0.1}, delta, base) != 0
    order = delta.abs().reshape(-1).argsort(descending=True)
    assert kept.sum() == int(0.5 * n) and not kept.reshape(-1)[order[:int(0.1 * n)]].any()


def _candidates(method: str, m: dict[str, Path]) -> tuple[dict, list[dict]]:
    """A template recipe and two candidates differing in every gene the method has."""
    b, i, eu, _ = _paths(m)
    if method == "slerp":
        make = lambda t: {"merge_method": "slerp", "base_model": b, "models": [{"model": eu}],  # noqa: E731
                          "parameters": {"t": t}}
        return make(0.5), [make([0.1, 0.7, 0.4, 0.9]), make(0.35)]

    extra = {"epsilon": 0.05} if method.startswith("della") else {}
    shared = {"random_seed": 5} if method.startswith(("dare", "della")) else {}

    def make(w: list[float], d: list[float]) -> dict:
        return {"merge_method": method, "base_model": b, "dtype": "float32", "parameters": shared,
                "models": [{"model": i, "parameters": {"weight": 1.0, "density": 0.6, **extra}},
                           {"model": eu, "parameters": {"weight": w, "density": d, **extra}}]}
    return make([0.5], [0.5]), [make([0.2, 0.9, 1.1, 0.4], [0.3, 0.8]), make([0.7], [0.45, 0.65, 0.9, 0.2])]


@pytest.mark.parametrize("method", ["dare_ties", "della_linear", "breadcrumbs_ties", "slerp"])
def test_resident_merge_equals_disk_merge_bitwise(method, llama_trio, tmp_path):
    from transformers import AutoModelForCausalLM

    template, candidates = _candidates(method, llama_trio)
    model = AutoModelForCausalLM.from_pretrained(llama_trio["instruct"], dtype=torch.float32)
    live = {n: p.data for n, p in model.named_parameters()}
    resident = ResidentMerge(Recipe.from_mergekit(template), live)
    for k, cfg in enumerate(candidates):
        recipe = Recipe.from_mergekit(cfg)
        resident.apply(recipe)
        merge_to_disk(recipe, tmp_path / f"disk{k}")
        for name, t in load_tensors(tmp_path / f"disk{k}").items():
            assert torch.equal(live[name], t), name


def test_coefficients_carry_every_per_model_parameter():
    recipe = Recipe.from_mergekit({
        "merge_method": "breadcrumbs_ties", "base_model": "b", "parameters": {"density": 0.5, "lambda": 0.9},
        "models": [{"model": "b"},
                   {"model": "i", "parameters": {"weight": 1.0, "gamma": [0.0, 0.3]}},
                   {"model": "x", "parameters": {"weight": [0.2, 0.8], "density": [{"filter": "mlp", "value": 0.7}]}}]})
    c = recipe.coefficients("model.layers.3.self_attn.q_proj.weight", 4)
    assert c.models == ("i", "x") and c.tensor == "model.layers.3.self_attn.q_proj.weight"
    assert c.weights == pytest.approx((1.0, 0.8)) and c.per_model["weight"] == c.weights
    assert c.per_model["density"] == pytest.approx((0.5, 0.5))  # x's filter misses: falls through to parameters
    assert c.per_model["gamma"] == pytest.approx((0.3, 0.01))  # mergekit's default gamma
    assert c.shared == {"int8_mask": False, "normalize": False, "rescale": False, "lambda": 0.9}
    assert recipe.coefficients("model.layers.0.mlp.up_proj.weight", 4).per_model["density"] == pytest.approx((0.5, 0.7))


def _ok(method: str, **extra) -> dict:
    cfg = {"merge_method": method, "base_model": "b",
           "models": [{"model": "b"}, {"model": "i", "parameters": {"weight": 1.0}}]}
    cfg.update(extra)
    return cfg


@pytest.mark.parametrize("cfg, field", [
    ({"merge_method": "frankenmerge", "models": [{"model": "a", "parameters": {"weight": 1}}]}, "merge_method"),
    ({"merge_method": "ties", "models": [{"model": "a", "parameters": {"weight": 1}}]}, "base_model"),
    ({"merge_method": "slerp", "models": [{"model": "a"}, {"model": "c"}], "parameters": {"t": 0.5}}, "base_model"),
    (_ok("slerp", models=[{"model": "b"}, {"model": "a"}, {"model": "c"}], parameters={"t": 0.5}), "models"),
    (_ok("slerp", models=[{"model": "b"}], parameters={"t": 0.5}), "models"),
    (_ok("slerp", models=[{"model": "a"}]), "parameters.t"),
    (_ok("slerp", models=[{"model": "a", "parameters": {"weight": 0.5}}], parameters={"t": 0.5}),
     "models[0].parameters.weight"),
    (_ok("ties", models=[{"model": "a", "parameters": {"weight": 1, "density": 0}}]), "models[0].parameters.density"),
    (_ok("dare_ties", models=[{"model": "a", "parameters": {"weight": 1, "density": [0.5, 1.5]}}]),
     "models[0].parameters.density"),
    (_ok("dare_linear", parameters={"density": [{"filter": "mlp", "value": -0.1}]}), "parameters.density"),
    (_ok("breadcrumbs", parameters={"gamma": 1.0}), "parameters.gamma"),
    (_ok("ties", models=[{"model": "b"}, {"model": "a", "parameters": {"weight": 1, "desnity": 0.5}}]),
     "models[1].parameters.desnity"),
    (_ok("ties", models=[{"model": "a", "parameters": {"weight": 1, "normalize": True}}]),
     "models[0].parameters.normalize"),
    (_ok("ties", parameters={"t": 0.5}), "parameters.t"),
    (_ok("dare_ties", parameters={"random_seed": 1.5}), "parameters.random_seed"),
    (_ok("ties", models=[{"model": "a", "parameters": {"density": 0.5}}]), "models[0].parameters.weight"),
])
def test_bad_recipes_name_the_field(cfg, field):
    with pytest.raises(UserError) as e:
        Recipe.from_mergekit(cfg)
    assert field in e.value.where


def test_della_epsilon_must_keep_probabilities_inside_the_unit_interval():
    recipe = Recipe.from_mergekit(_ok("della", models=[
        {"model": "a", "parameters": {"weight": 1.0, "density": [0.5, 0.1], "epsilon": 0.2}}]))
    recipe.coefficients("model.layers.0.mlp.up_proj.weight", 4)  # density 0.5 +/- 0.2: fine
    with pytest.raises(UserError) as e:
        recipe.coefficients("model.layers.3.mlp.up_proj.weight", 4)  # density 0.1 - 0.2 < 0
    assert e.value.where == "models[0].parameters.epsilon"
