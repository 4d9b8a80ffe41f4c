"""`evomerge search` end to end on the miniature with two Ray workers, then `evomerge export`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest

from evomerge.evaluation import score_model_dir
from evomerge.fitness import scalar_fitness
from evomerge.optimizers import CmaEs
from evomerge.rundir import read_run

from conftest import REPO, write_space


def _cli(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "evomerge", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=900)


def test_search_records_every_candidate_and_export_reproduces_the_score(miniature, tmp_path):
    space = write_space(tmp_path / "space.yaml", miniature, popsize=4, generations=2, max_items=8)
    runs = tmp_path / "runs"
    r = _cli("search", str(space), "--name", "e2e", "--runs-dir", str(runs), "--workers", "2", "--seed", "3",
             "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{runs / 'e2e' / 'study.db'}")
    trials = study.get_trials()
    assert len(trials) == 8
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:
        assert set(t.params) == {f"w_xb[{i}]" for i in range(4)} | {"w_xb_embed", "w_xb_head"}
        assert all(0.0 <= v <= 2.0 for v in t.params.values())
        assert set(t.user_attrs["scores"]) == {"mini_xb_facts", "mini_xa_chat"}
        assert t.user_attrs["worker"].startswith("worker-")
    # both workers started (each logs it); candidates go only to started workers, so on tiny models the first to
    # start may take all 8 before the second is ready
    assert {t.user_attrs["worker"] for t in trials} <= {"worker-0", "worker-1"}
    logs = runs / "e2e" / "workers"
    assert all("started (hf)" in (logs / f"worker-{i}.log").read_text() for i in (0, 1))
    assert len({tuple(t.params.values()) for t in trials}) == 8
    # the paper's uniform settings (the space's seed candidates) are the first two trials
    assert [t.user_attrs.get("seed_candidate") for t in trials[:3]] == ["paper_w0.5", "paper_w1.0", None]
    assert set(trials[0].params.values()) == {0.5} and set(trials[1].params.values()) == {1.0}

    r = _cli("export", str(runs / "e2e"))
    assert r.returncode == 0, r.stdout + r.stderr
    export = runs / "e2e" / "export"
    assert (export / "recipe.yaml").is_file() and (export / "model" / "config.json").is_file()
    manifest = json.loads((export / "manifest.json").read_text())
    best = next(t for t in trials if t.number == manifest["trial"])  # the best of the finalists on holdout
    assert manifest["holdout_fitness"] is not None and manifest["versions"]["torch"]
    assert set(manifest["eval_sets"]) == {"mini_xb_facts", "mini_xa_chat"}
    eff = manifest["effective_weights"]  # instruct at 1.0 everywhere; xb per layer as the trial's genes say
    for layer in range(4):
        assert eff[f"layer{layer}.mlp"] == pytest.approx([1.0, manifest["params"][f"w_xb[{layer}]"]], abs=1e-6)
    info = read_run(runs / "e2e")
    sets = [str(REPO / "eval_sets" / n) for n in ("mini_xb_facts", "mini_xa_chat")]
    scores = score_model_dir(str(export / "model"), sets, "dev", 8, info.seed)
    value = scalar_fitness(scores, {n: "gold_prob" for n in scores}, {n: 1.0 for n in scores})
    assert value == pytest.approx(best.value, abs=1e-6)

    # the exported recipe is valid mergekit input for evomerge merge, and gives the same model
    out = tmp_path / "again"
    r = _cli("merge", str(export / "recipe.yaml"), str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").read_bytes() == (export / "model" / "model.safetensors").read_bytes()

    # a second search on the same name is refused with a one-line error
    r = _cli("search", str(space), "--name", "e2e", "--runs-dir", str(runs), "--no-progress")
    assert r.returncode == 2 and "exists" in r.stderr and "Traceback" not in r.stderr


def test_same_seed_same_candidates():
    def run(seed):
        opt = CmaEs([0.5] * 4, [0.2] * 4, popsize=5, seed=seed)
        asked = []
        for _ in range(3):
            xs = opt.ask()
            asked.append(xs)
            opt.tell(xs, [(-sum((v - 0.3) ** 2 for v in x),) for x in xs])
        return asked

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_a_raced_coarse_to_fine_search_through_ray(miniature, tmp_path):
    """`search.racing` and `search.coarse_to_fine` through the real pool: both stages in one study (the uniform
    generation first), the Race reaches the workers, each trial keeps its batches' running values (Optuna
    intermediate values, as the dashboard plots them), a pruned one names its bound, the finalists are re-checked
    on holdout in full. (Which candidates a bound prunes is pinned by tests/test_racing.py; the stages' ledger and
    resume by tests/test_coarse_to_fine.py.)"""
    import yaml

    space = write_space(tmp_path / "space.yaml", miniature, popsize=4, generations=2, max_items=8)
    data = yaml.safe_load(space.read_text())
    data["search"].update(racing={"batches": 2, "confidence": 0.5, "keep": 1}, finalists=1, recheck_every=1,
                          coarse_to_fine=True)
    space.write_text(yaml.safe_dump(data))
    runs = tmp_path / "runs"
    r = _cli("search", str(space), "--name", "race", "--runs-dir", str(runs), "--workers", "1", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="race", storage=f"sqlite:///{runs / 'race' / 'study.db'}")
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state.is_finished() for t in trials)
    stages = [(t.user_attrs["generation"], t.user_attrs["stage"]) for t in trials]
    assert sorted(set(stages)) == [(0, "uniform"), (1, "per_layer")], stages
    for t in trials:
        if "duplicate_of" in t.user_attrs:
            continue
        steps = t.user_attrs["racing"]
        assert [s["items"] for s in steps] == sorted({s["items"] for s in steps}) and steps
        assert t.intermediate_values == {s["items"]: s["estimate"][0] for s in steps}
        if t.state == optuna.trial.TrialState.PRUNED:
            assert t.user_attrs["pruned_reason"].startswith("racing: upper bound") and "told" in t.user_attrs
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE and steps[-1]["estimate"][0] == pytest.approx(
                t.values[0], abs=1e-9)
    r = _cli("status", str(runs / "race"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(k.startswith("holdout:") for k in study.user_attrs)  # re-checked after generation 1 and at the end
