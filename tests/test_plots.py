"""plots.py draws what the ledger says and nothing it does not: evaluations in order of completion, one panel per
metric with no lines across gaps, the exported trial's genes (embedding and head included) on the genes' bounds,
and Pareto panels per pair of objectives with points only and the quickstart's baselines on a holdout row."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import pytest
import yaml

from evomerge.plots import (completed_in_order, exported_trial, fitness_figure, genome_figure, genome_rows,
                            pareto_figure, per_set_figure)

REPO = Path(__file__).resolve().parents[1]
T0 = datetime.datetime(2026, 11, 30, 9, 0, 0)


def _trial(number: int, finished_s: float, values: list[float], scores: dict, params: dict | None = None):
    import optuna
    from optuna.distributions import FloatDistribution

    params = params or {}
    return optuna.trial.FrozenTrial(
        number=number, state=optuna.trial.TrialState.COMPLETE, value=None, values=values,
        datetime_start=T0, datetime_complete=T0 + datetime.timedelta(seconds=finished_s), params=params,
        distributions={k: FloatDistribution(0.0, 2.0) for k in params},
        user_attrs={"fitness": sum(values) / len(values), "scores": scores}, system_attrs={}, intermediate_values={},
        trial_id=number)


def _scores(instr: float | None, bpb: float) -> dict:
    out = {"text": {"values": {"bits_per_byte": bpb, "byte_perplexity": 2 ** bpb}, "n": 8}}
    if instr is not None:
        out["instr"] = {"values": {"prompt_acc": instr, "lang_acc": 1.0}, "n": 8}
    return out


def _space():
    from evomerge.space import parse_space

    data = yaml.safe_load((REPO / "search_spaces" / "miniature_tradeoff.yaml").read_text())
    data.pop("build")
    return parse_space(data, str(REPO / "search_spaces" / "miniature_tradeoff.yaml"))


def test_fitness_is_drawn_against_evaluations_completed_not_trial_numbers() -> None:
    # trial 2 finished first, trial 0 last (a pipelined search hands numbers out when asking)
    trials = [_trial(0, 30.0, [0.1], {}), _trial(1, 20.0, [0.5], {}), _trial(2, 10.0, [0.3], {})]
    done = completed_in_order(trials)
    assert [t.number for t in done] == [2, 1, 0]
    fig = fitness_figure("r", done, {"FAIL": 1, "COMPLETE": 3})
    ax = fig.axes[0]
    points = ax.collections[0].get_offsets()
    assert [tuple(p) for p in points] == [(1, 0.3), (2, 0.5), (3, 0.1)]
    assert "evaluations completed" in ax.get_xlabel() and "1 failed" in ax.get_title()
    (best,) = ax.lines
    assert list(best.get_ydata()) == [0.3, 0.5, 0.5]


def test_per_set_has_a_panel_per_metric_and_no_lines_across_gaps() -> None:
    done = [_trial(0, 1, [0.1], _scores(0.25, 1.5)), _trial(1, 2, [0.2], _scores(None, 1.4)),  # instr missing
            _trial(2, 3, [0.3], _scores(0.75, 1.6))]
    fig = per_set_figure(done, {"instr": "prompt_acc", "text": "bits_per_byte"})
    labels = sorted(ax.get_ylabel() for ax in fig.axes)
    assert labels == ["bits_per_byte (lower is better)", "prompt_acc"]
    for ax in fig.axes:
        assert not ax.lines  # points only
    acc = next(ax for ax in fig.axes if ax.get_ylabel() == "prompt_acc")
    assert [tuple(p) for p in acc.collections[0].get_offsets()] == [(1, 0.25), (3, 0.75)]  # a gap at 2


def test_genome_rows_include_embedding_and_head_genes_and_blank_what_no_gene_sets() -> None:
    space = _space()
    params = {f"w_xb[{i}]": 0.1 * i for i in range(4)} | {"w_xb_embed": 1.5, "w_xb_head": 0.7}
    rows, bounds = genome_rows(space, 4, params)
    assert list(rows) == [("weight", ("xb",), None)]
    assert rows[("weight", ("xb",), None)] == pytest.approx([1.5, 0.0, 0.1, 0.2, 0.3, 0.7])
    assert bounds[("weight", ("xb",), None)] == (0.0, 2.0)
    # without the head gene its column is blank: that tensor follows the first layer (see `space show`)
    data = yaml.safe_load((REPO / "search_spaces" / "miniature_tradeoff.yaml").read_text())
    data.pop("build")
    data["genes"] = [g for g in data["genes"] if g["name"] != "w_xb_head"]
    from evomerge.space import parse_space

    rows, _ = genome_rows(parse_space(data, "/x/s.yaml"), 4, params)
    assert math.isnan(rows[("weight", ("xb",), None)][-1])


def test_genome_figure_colours_on_the_gene_bounds_and_names_the_trial() -> None:
    space = _space()
    params = {f"w_xb[{i}]": 0.9 + 0.01 * i for i in range(4)} | {"w_xb_embed": 1.0, "w_xb_head": 1.0}
    trial = _trial(7, 1, [0.1], {}, params)
    fig = genome_figure(space, 4, trial, "exported")
    image = fig.axes[0].images[0]
    assert image.get_clim() == (0.0, 2.0)  # the bounds, not the data's 0.9-1.03
    assert image.get_array().shape == (1, 6)  # embed, 4 layers, head
    assert "trial 7 (exported)" in fig.axes[0].get_title()


def test_pareto_has_a_panel_per_pair_points_only_and_a_holdout_row_with_baselines() -> None:
    names = ["a", "b", "c"]
    done = [_trial(i, i, [0.1 * i, 1 - 0.1 * i, 0.05 * i], {}) for i in range(5)]
    fig = pareto_figure(names, done, {3, 4}, None)
    assert len(fig.axes) == 3
    assert all(not ax.lines for ax in fig.axes)
    tradeoff = {"objectives": names, "points": [
        {"kind": "grid", "label": "w=1", "holdout": {"a": 0.2, "b": 0.5, "c": 0.1}},
        {"kind": "uniform", "label": "uniform w_xb=0.8", "holdout": {"a": 0.3, "b": 0.5, "c": 0.1}},
        {"kind": "front", "label": "trial 3", "holdout": {"a": 0.4, "b": 0.6, "c": 0.1}}]}
    fig = pareto_figure(names, done, {3, 4}, tradeoff)
    assert len(fig.axes) == 6 and all(not ax.lines for ax in fig.axes)
    holdout_ax = [ax for ax in fig.axes if "holdout" in ax.get_xlabel()]
    assert len(holdout_ax) == 3
    legend = [t.get_text() for t in holdout_ax[0].get_legend().get_texts()]
    assert legend == ["grid (uniform w)", "uniform search front", "per-layer front"]


def test_exported_trial_is_the_manifest_trial(tmp_path: Path) -> None:
    done = [_trial(0, 1, [0.9], {}), _trial(5, 2, [0.1], {})]
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "manifest.json").write_text(json.dumps({"trial": 5}))
    trial, why = exported_trial(tmp_path, None, done)
    assert trial.number == 5 and why == "exported"  # not the best dev fitness (trial 0)


def test_the_fitness_plot_counts_interrupted_and_pruned_trials_apart_from_failures(tmp_path: Path, monkeypatch) -> None:
    """A run with 2 completed trials, 1 real failure, 1 pruned by racing, 1 a dead driver left running (failed by
    the resume) and 1 RUNNING under a driver that died since: the title counts them as `status` does."""
    import evomerge.plots as plots
    from evomerge.ledger import Ledger
    from evomerge.results import CandidateResult
    from evomerge.rundir import RunLock, create_run, new_info, read_run
    from evomerge.status import outcomes

    run = tmp_path / "p"
    create_run(run, new_info("p", REPO / "search_spaces" / "quickstart.yaml", 0, 1, 4))
    genes = read_run(run).space().expand(4)
    params = {g.name: g.low for g in genes}
    with RunLock(run):
        ledger = Ledger.open(run, "p", genes, create=True)
        for number in range(4):
            ledger.start(params, {})
        ledger.finish(CandidateResult(0, worker="w"), [0.5], {"fitness": 0.5})
        ledger.finish(CandidateResult(1, worker="w", error="out of memory"), None)
        ledger.finish(CandidateResult(2, worker="w", pruned="racing: upper bound 0.1 < 0.5"), None)
    Ledger.open(run, "p", genes, create=False).fail_interrupted()  # trial 3: interrupted, failed by the resume
    with RunLock(run):
        ledger = Ledger.open(run, "p", genes, create=False)
        ledger.start(params, {})
        ledger.finish(CandidateResult(4, worker="w"), [0.6], {"fitness": 0.6})
        ledger.start(params, {})  # trial 5: left RUNNING by a driver that is killed now
    seen = outcomes(run, ledger.study)
    assert seen.counts == {"COMPLETE": 2, "FAIL": 1, "PRUNED": 1, "INTERRUPTED": 2} and seen.dead_driver

    titles = []
    real = plots.fitness_figure

    def spy(*args, **kwargs):
        fig = real(*args, **kwargs)
        titles.append(fig.axes[0].get_title())
        return fig

    monkeypatch.setattr(plots, "fitness_figure", spy)
    assert (run / "plots" / "fitness.png") in plots.plot_run(run)
    (title,) = titles
    assert "over 2 completed evaluations" in title and "1 failed" in title, title
    assert "2 interrupted" in title and "1 pruned" in title and "running" not in title, title
