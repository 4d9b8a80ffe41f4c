"""Pareto math, and `evomerge quickstart` on the miniature: the grid's trade-off and a searched front that beats it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evomerge.pareto import dominates, dominating_all, hypervolume, non_dominated
from evomerge.quickstart import (GRID, QUICKSTART_SPACE, TRADEOFF_FILE, Point, evomerge_command, render_intervals,
                                 run_quickstart, tradeoff, uniform_space_data)

REPO = Path(__file__).resolve().parents[1]


# -- pareto.py ---------------------------------------------------------------------------------------------


def test_dominance_and_non_dominated_subset() -> None:
    assert dominates([1, 2], [1, 1]) and not dominates([1, 1], [1, 1]) and not dominates([2, 0], [1, 1])
    points = [[1, 0], [0, 1], [0.5, 0.5], [0.4, 0.4], [0.5, 0.5]]
    assert non_dominated(points) == [0, 1, 2, 4]  # equal points are both kept; [0.4, 0.4] is dominated
    assert dominating_all([[2, 2], [1, 3]], [[1, 1], [2, 0]]) == [0]
    assert dominating_all([[2, 2]], []) == []
    with pytest.raises(ValueError):
        dominates([1], [1, 2])


def test_hypervolume_matches_hand_computed_areas_and_volumes() -> None:
    assert hypervolume([], [0, 0]) == 0.0
    assert hypervolume([[1, 1]], [0, 0]) == pytest.approx(1.0)
    # a staircase, counted by rows of height 1: 3 + 2 + 1
    assert hypervolume([[3, 1], [2, 2], [1, 3]], [0, 0]) == pytest.approx(6.0)
    assert hypervolume([[3, 1], [2, 2], [1, 3], [1, 1]], [0, 0]) == pytest.approx(6.0)  # dominated: adds nothing
    assert hypervolume([[2, 2]], [1, 1]) == pytest.approx(1.0)
    assert hypervolume([[0.5, 2]], [1, 0]) == 0.0  # not beyond the reference in every coordinate
    # 3-D: two unit-offset boxes 2x2x2 and 3x1x1 overlapping in 2x1x1 -> 8 + 3 - 2 = 9
    assert hypervolume([[2, 2, 2], [3, 1, 1]], [0, 0, 0]) == pytest.approx(9.0)
    # a Monte-Carlo cross-check in 3-D on random points
    import random

    rng = random.Random(0)
    pts = [[rng.random() for _ in range(3)] for _ in range(6)]
    samples = [[rng.random() for _ in range(3)] for _ in range(40000)]
    mc = sum(any(all(s[k] <= p[k] for k in range(3)) for p in pts) for s in samples) / len(samples)
    assert hypervolume(pts, [0, 0, 0]) == pytest.approx(mc, abs=0.01)


def test_tradeoff_record_has_the_agreed_form() -> None:
    def pt(kind: str, label: str, a: float, b: float) -> Point:
        return Point(kind, label, {"x": a, "y": b}, {})

    points = [pt("source", "instruct", 1.0, 0.0), pt("grid", "w=0.5", 0.9, 0.2), pt("grid", "w=1", 0.1, 0.9),
              pt("front", "trial 3", 0.95, 0.95), pt("front", "trial 4", 0.5, 0.5)]
    record = tradeoff(points, ["x", "y"], ["x", "y"])
    assert set(record) == {"objectives", "axes", "points", "hypervolume", "dominating", "dominating_uniform",
                           "comparisons", "interval_method"}
    assert record["points"][3] == {"kind": "front", "label": "trial 3", "holdout": {"x": 0.95, "y": 0.95}}
    assert record["hypervolume"]["reference"] == [0.1, 0.0]
    assert record["hypervolume"]["grid"] == pytest.approx(0.8 * 0.2 + 0.0 * 0.7)
    assert record["hypervolume"]["front"] == pytest.approx(0.85 * 0.95)
    assert record["hypervolume"]["uniform"] is None  # no uniform search in these points
    assert record["dominating"] == ["trial 3"]
    assert record["interval_method"] is None and record["comparisons"] == []  # no per-item values: no intervals
    json.dumps(record)  # plain JSON


def _items(p: float, q: float, n: int, seed: int) -> dict[str, tuple[float, ...]]:
    """Per-item 0/1 values of two sets whose means are about p and q."""
    import random

    rng = random.Random(seed)
    return {"a.acc": tuple(float(rng.random() < p) for _ in range(n)),
            "b.acc": tuple(float(rng.random() < q) for _ in range(n))}


def test_tradeoff_intervals_compare_each_front_point_with_the_best_baseline_points() -> None:
    def pt(kind: str, label: str, items: dict[str, tuple[float, ...]]) -> Point:
        means = {"x": sum(items["a.acc"]) / len(items["a.acc"]), "y": sum(items["b.acc"]) / len(items["b.acc"])}
        return Point(kind, label, means, {}, items=items)

    n = 200
    strong = _items(0.9, 0.9, n, 1)
    points = [pt("grid", "w=0.5", _items(0.8, 0.2, n, 2)), pt("grid", "w=1", _items(0.3, 0.7, n, 3)),
              pt("uniform", "uniform w=0.7", _items(0.6, 0.6, n, 4)),
              pt("front", "trial 3", strong),
              # the same items as the best uniform point, a whisker better on one item: within noise
              pt("front", "trial 4", points_copy(_items(0.6, 0.6, n, 4), 1))]
    record = tradeoff(points, ["x", "y"], ["x", "y"], {"x": {"a.acc": 1.0}, "y": {"b.acc": 1.0}}, resamples=500)
    assert record["holdout_items"] == {"a.acc": n, "b.acc": n}
    hv = record["hypervolume"]
    assert hv["uniform"] is not None
    for key in ("front_minus_grid_interval", "front_minus_uniform_interval", "uniform_minus_grid_interval"):
        assert hv[key]["low"] <= hv[key]["estimate"] <= hv[key]["high"], key
    assert hv["front_minus_uniform_interval"]["low"] > 0  # trial 3 dominates everything by a wide margin
    by = {(c["point"], c["against_kind"]): c for c in record["comparisons"]}
    assert set(by) == {("trial 3", "grid"), ("trial 4", "grid"), ("trial 3", "uniform"), ("trial 4", "uniform")}
    assert by[("trial 3", "uniform")]["against"] == "uniform w=0.7"
    assert by[("trial 3", "grid")]["against"] in {"w=0.5", "w=1"}
    assert by[("trial 3", "uniform")]["mean_objective_interval"]["low"] > 0
    close = by[("trial 4", "uniform")]["mean_objective_interval"]
    assert close["low"] <= 0 <= close["high"] and close["estimate"] == pytest.approx(0.5 / n)
    assert set(by[("trial 3", "grid")]["objective_intervals"]) == {"x", "y"}
    text = render_intervals(record)
    assert "per-layer front - uniform front" in text and "trial 4 - uniform best (uniform w=0.7)" in text
    json.dumps(record)


def points_copy(items: dict[str, tuple[float, ...]], flip: int) -> dict[str, tuple[float, ...]]:
    """`items` with the first `flip` zero items of set a turned into ones."""
    a = list(items["a.acc"])
    for i in [i for i, v in enumerate(a) if v == 0.0][:flip]:
        a[i] = 1.0
    return {"a.acc": tuple(a), "b.acc": items["b.acc"]}


def test_uniform_space_scores_the_grids_merge() -> None:
    from evomerge.hub import check_configs
    from evomerge.space import load_space, parse_space

    space = load_space(QUICKSTART_SPACE)
    data = uniform_space_data(QUICKSTART_SPACE, space)
    uniform = parse_space(data, "/elsewhere/space.yaml")  # every path absolute: the file may live anywhere
    assert [g.name for g in uniform.genes] == ["w_xb"] and uniform.genes[0].granularity == "global"
    recipe = uniform.recipe({"w_xb": 0.75}, 4).to_mergekit()
    weights = {Path(m["model"]).name: m["parameters"]["weight"] for m in recipe["models"]}
    assert weights == {"instruct": 1.0, "lang-xb": 0.75}  # base + 1.0 (instruct - base) + w (lang - base)
    assert Path(recipe["base_model"]).is_absolute()


def test_follow_up_commands_name_the_running_evomerge(tmp_path: Path, monkeypatch) -> None:
    import sys

    script = tmp_path / "bin" / "evomerge"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script), "quickstart"])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert evomerge_command() == str(script)  # installed elsewhere than .venv and not on PATH: its own path
    monkeypatch.setenv("PATH", str(script.parent))
    assert evomerge_command() == "evomerge"  # the evomerge on PATH is this one
    monkeypatch.setattr(sys, "argv", [str(REPO / "evomerge" / "__main__.py")])
    assert evomerge_command().endswith(" -m evomerge")  # python -m evomerge


# -- the quickstart end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tradeoff_models():
    """The quickstart's own models (scale 1.0), from the build cache the quickstart uses (`runs/tiny`): built once
    (a few minutes on two cores), then reused. Not a smaller scale: the base needs its 1000 steps to learn the
    120-country world's facts (600 left them unlearned in a 132-country world; evomerge/miniature/evalsets.py)."""
    from evomerge.miniature.build import build_miniature
    from evomerge.space import load_space

    space = load_space(QUICKSTART_SPACE)
    return build_miniature(Path(space.build_miniature), seed=space.build_seed)


HOLDOUT = 100  # the test's holdout items per set: the shipped sets' 300 cost ~2 s per scored point, 26 points


def _space_over(models, path: Path) -> Path:
    """The quickstart's space over `models`, with its eval sets written afresh with a holdout of HOLDOUT items (the
    first HOLDOUT of the shipped sets' 300; dev is the shipped dev)."""
    from evomerge.miniature.evalsets import write_tradeoff_sets

    space = yaml.safe_load(QUICKSTART_SPACE.read_text())
    space["models"] = [{"name": "base", "role": "base", "path": str(models.base)},
                       {"name": "instruct", "role": "instruct", "path": str(models.instruct)},
                       {"name": "xb", "role": "language", "language": "xb", "path": str(models.languages["xb"])}]
    space.pop("build")
    sets = {d.name: d for d in write_tradeoff_sets(path.parent / "sets", seed=0, n_holdout=HOLDOUT)}
    for s in space["eval"]["sets"]:
        s["path"] = str(sets[Path(s["path"]).name])
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def test_quickstart_grid_shows_the_tradeoff_and_the_front_beats_it(tradeoff_models, tmp_path, capsys) -> None:
    space = _space_over(tradeoff_models, tmp_path / "space.yaml")
    runs = tmp_path / "runs"
    # the quickstart's own budget (48 evaluations per search): with the 48-country world's models (BUILD_FORMAT 2)
    # a run of 3 generations of 6 found a front below the grid's hypervolume (0.005 against 0.007)
    result = run_quickstart(runs, seed=0, workers=2, space_path=space, export_model=False, plots=False)
    out = capsys.readouterr().out
    assert json.loads((runs / "quickstart" / TRADEOFF_FILE).read_text()) == result
    assert result["objectives"] == ["xa_instructions", "xb_fidelity", "xb_answers"]
    assert result["axes"] == ["xa_instructions", "xb_fidelity"]
    by_label = {p["label"]: p["holdout"] for p in result["points"]}
    grid = [by_label[f"w={w:g}"] for w in GRID]
    # the paper's trade-off on holdout: B fidelity up, A instruction following down as the language weight grows
    fid = [g["xb_fidelity"] for g in grid]
    inst = [g["xa_instructions"] for g in grid]
    assert fid == sorted(fid) and fid[-1] > fid[0] + 0.3, fid
    assert inst == sorted(inst, reverse=True) and inst[0] > inst[-1] + 0.3, inst
    # the sources sit at the ends: instruct answers in A, lang-xb in B (the instruct model still answers some B
    # questions mostly in B words, 12% on the 120-country world and 62% on the 48-country one, so only the order is
    # checked on that axis)
    assert by_label["instruct"]["xa_instructions"] > 0.5 > by_label["lang-xb"]["xa_instructions"]
    assert by_label["lang-xb"]["xb_fidelity"] > 0.5 and by_label["lang-xb"]["xb_fidelity"] > by_label["instruct"]["xb_fidelity"]
    # the searched front (not seeded with the grid) beats the grid on holdout
    fronts = [p for p in result["points"] if p["kind"] == "front"]
    assert fronts and not any(p["label"].startswith("w=") for p in fronts)
    hv = result["hypervolume"]
    assert result["dominating"] or hv["front"] > hv["grid"], hv
    assert "hypervolume" in out and "not seeded with the grid" in out
    # the uniform baseline: a one-weight search with the same budget, its dev front re-scored on holdout
    uniform = [p for p in result["points"] if p["kind"] == "uniform"]
    assert uniform and all(p["label"].startswith("uniform w_xb=") for p in uniform)
    assert (runs / "quickstart_uniform" / "study.db").is_file() and hv["uniform"] is not None
    # every comparison carries a paired interval around its estimate, on all the holdout items
    assert result["holdout_items"] == {"mini_xa_instruct.prompt_acc": HOLDOUT, "mini_xb_fidelity.prompt_acc": HOLDOUT,
                                       "mini_xb_answers.prompt_acc": HOLDOUT}
    intervals = [hv[k] for k in hv if "interval" in k]
    intervals += [c["mean_objective_interval"] for c in result["comparisons"]]
    intervals += [iv for c in result["comparisons"] for iv in c["objective_intervals"].values()]
    assert len(intervals) == 3 + 4 * 2 * len(fronts)
    assert all(iv["low"] <= iv["estimate"] <= iv["high"] for iv in intervals), intervals
    assert "paired bootstrap 95% intervals" in out


def test_shipped_tradeoff_space_validates() -> None:
    from evomerge.space import load_space

    space = load_space(QUICKSTART_SPACE)
    assert space.search.optimizer == "nsga2" and not space.seeds
    assert set(space.search.objectives) == {"xa_instructions", "xb_fidelity", "xb_answers"}
