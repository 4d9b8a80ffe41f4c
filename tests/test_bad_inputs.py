"""The bad-input corpus (tests/bad_inputs/): every malformed search space, eval set, model, recipe, run directory
and command-line value ends in exactly one line naming the field or file, with a hint, and exit status 2 — never a
traceback, and never after a run directory was made.

Most cases call the CLI's main() in this process (fast); a few run `python -m evomerge` to show that what a user
sees has no traceback either. The corpus files refer to `../models/{base,instruct,xb}` and `../eval/<set>`, which
the `world` fixture links to the miniature models and the shipped eval sets.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evomerge.cli import main

from conftest import REPO

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
SEARCH = ["--backend", "hf", "--no-progress", "--workers", "1"]


def _space(case: str) -> list[str]:
    return ["search", f"{{w}}/spaces/{case}.yaml", "--runs-dir", "{w}/runs-out", *SEARCH]


# (case, command line ({w}: the world directory), what the error line must name)
CASES: list[tuple[str, list[str], str]] = [
    # search spaces: syntax, keys, types, bounds
    ("yaml_unclosed_bracket", _space("yaml_unclosed_bracket"), "yaml_unclosed_bracket.yaml: malformed YAML at line"),
    ("yaml_tab_indent", _space("yaml_tab_indent"), "yaml_tab_indent.yaml: malformed YAML"),
    ("top_level_list", _space("top_level_list"), "top_level_list.yaml: must be a mapping"),
    ("empty_file", _space("empty_file"), "empty_file.yaml: must be a mapping"),
    ("not_utf8", _space("not_utf8"), "not_utf8.yaml: not UTF-8 text"),
    ("unknown_top_key", _space("unknown_top_key"), "unknown_top_key.yaml: serach: unknown key"),
    ("unknown_gene_key", _space("unknown_gene_key"), "genes[0].bounds: unknown key"),
    ("unknown_model_key", _space("unknown_model_key"), "models[0].paht: unknown key"),
    ("low_not_a_number", _space("low_not_a_number"), "genes[0].low: must be a finite number"),
    ("high_is_nan", _space("high_is_nan"), "genes[0].high: must be a finite number"),
    ("popsize_fraction", _space("popsize_fraction"), "search.popsize: must be a positive integer"),
    ("models_not_a_list", _space("models_not_a_list"), "models: must be a non-empty list"),
    ("inverted_bounds", _space("inverted_bounds"), "genes[0].high: bounds are inverted"),
    ("init_outside_bounds", _space("init_outside_bounds"), "genes[0].init: 3.0 is outside"),
    ("density_above_one", _space("density_above_one"), "genes[0].low: density bounds must lie in (0, 1]"),
    # models: missing, not on the hub, mismatched, not a decoder, malformed, pickle-only
    ("missing_model_dir", _space("missing_model_dir"), "models/nowhere: model 'instruct' not found"),
    ("hub_id_malformed", _space("hub_id_malformed"), "models[1].hf: 'not a hub id' is not a Hugging Face id"),
    ("hub_model_not_cached", _space("hub_model_not_cached"), "evomerge-tests/absent-model: config.json is not in"),
    ("layer_counts_differ", _space("layer_counts_differ"), "models: layer counts differ"),
    ("hidden_sizes_differ", _space("hidden_sizes_differ"), "models: hidden_size differs"),
    ("not_a_decoder", _space("not_a_decoder"), "models/encoder:"),
    ("config_malformed_json", _space("config_malformed_json"), "bad_config/config.json: malformed JSON"),
    ("pickle_only_model", _space("pickle_only_model"), "models/pickled: only pickle checkpoints"),
    # methods, parameters, granularities, genes
    ("unknown_method", _space("unknown_method"), "merge.method: unknown method 'frankenmerge'"),
    ("unknown_parameter", _space("unknown_parameter"), "genes[0].parameter: task_arithmetic has no free parameter"),
    ("unknown_granularity", _space("unknown_granularity"), "genes[0].granularity: unknown granularity 'per_head'"),
    ("more_blocks_than_layers", _space("more_blocks_than_layers"), "genes[w_xb].count: 99 blocks for 4 layers"),
    ("one_control_point", _space("one_control_point"), "genes[0].count: control points need at least 2"),
    ("one_module_only", _space("one_module_only"), "genes[0].modules: give both attn and mlp"),
    ("overlapping_genes", _space("overlapping_genes"), "genes[w_xb_blocks]: covers what gene 'w_xb' already covers"),
    ("model_without_weight", _space("model_without_weight"), "merge.fixed: model 'instruct' has neither"),
    ("two_instruct_models", _space("two_instruct_models"), "models: exactly one model must have role instruct"),
    ("seed_names_no_gene", _space("seed_names_no_gene"), "seeds[paper].values.w_eu: no such gene"),
    ("seed_outside_bounds", _space("seed_outside_bounds"), "seeds[paper].values.w_xb: 5.0 is outside"),
    ("unknown_optimizer", _space("unknown_optimizer"), "search.optimizer: unknown optimizer 'sgd'"),
    ("nsga2_without_objectives", _space("nsga2_without_objectives"), "search.objectives: nsga2 needs objectives"),
    # eval sets: empty, missing, malformed
    ("eval_sets_empty", _space("eval_sets_empty"), "eval.sets: must be a non-empty list"),
    ("eval_set_missing", _space("eval_set_missing"), "eval/nowhere: no card.yaml"),
    ("eval_split_test", _space("eval_split_test"), "eval.split: unknown split 'test'"),
    ("evalset_empty_items", _space("evalset_empty_items"), "empty_items/items.jsonl: empty"),
    ("evalset_malformed_item", _space("evalset_malformed_item"), "malformed_item/items.jsonl:2: malformed JSON"),
    ("evalset_unknown_kind", _space("evalset_unknown_kind"), "unknown_kind/card.yaml: kind: unknown kind 'essay'"),
    ("evalset_gold_out_of_range", _space("evalset_gold_out_of_range"), "gold_out_of_range/items.jsonl:1: gold"),
    ("evalset_card_malformed_yaml", _space("evalset_card_malformed_yaml"), "card_malformed_yaml/card.yaml: malformed"),
    ("evalset_metric_for_another_kind", _space("evalset_metric_for_another_kind"), "card.yaml: metric: unknown metric"),
    ("evalset_not_utf8", _space("evalset_not_utf8"), "not_utf8/items.jsonl: not UTF-8 text"),
    ("evalset_prompt_field_missing", _space("evalset_prompt_field_missing"), "needs field 'passage'"),
    # recipes (evomerge merge)
    ("recipe_yaml_unclosed_bracket", ["merge", "{w}/recipes/yaml_unclosed_bracket.yaml", "{w}/out"], "malformed YAML"),
    ("recipe_models_not_a_list", ["merge", "{w}/recipes/models_not_a_list.yaml", "{w}/out"], "models: must be a"),
    ("recipe_weight_not_a_number", ["merge", "{w}/recipes/weight_not_a_number.yaml", "{w}/out"], "weight"),
    ("recipe_unknown_top_key", ["merge", "{w}/recipes/unknown_top_key.yaml", "{w}/out"], "merge_methd: unknown key"),
    ("recipe_slices_form", ["merge", "{w}/recipes/slices_form.yaml", "{w}/out"], "slices[0]: its sources cover"),
    ("recipe_density_above_one", ["merge", "{w}/recipes/density_above_one.yaml", "{w}/out"], "density: 1.5 is outside"),
    ("recipe_parameter_of_another_method", ["merge", "{w}/recipes/parameter_of_another_method.yaml", "{w}/out"],
     "parameters.lambda: unknown parameter for linear"),
    ("recipe_not_utf8", ["merge", "{w}/recipes/not_utf8.yaml", "{w}/out"], "not_utf8.yaml: not UTF-8 text"),
    # run directories
    ("run_json_malformed", ["resume", "{w}/runs/malformed_run_json", *SEARCH[:3]], "run.json: malformed run"),
    ("run_json_missing_fields", ["export", "{w}/runs/run_json_missing_fields"], "run.json: malformed run"),
    ("not_a_run_directory", ["status", "{w}/runs/no_run_json"], "no_run_json: not a run directory"),
    ("runs_dir_is_a_file", ["search", "{w}/good.yaml", "--runs-dir", "{w}/good.yaml", *SEARCH],
     "good.yaml/good: cannot create the run directory"),
    ("runs_dir_read_only_fs", ["search", "{w}/good.yaml", "--runs-dir", "/proc/evomerge-runs", *SEARCH],
     "/proc/evomerge-runs/good: cannot create the run directory"),
    # command-line values
    ("address_not_host_port", ["search", "{w}/good.yaml", "--address", "my cluster", *SEARCH], "--address: 'my clu"),
    ("address_port_out_of_range", ["search", "{w}/good.yaml", "--address", "10.0.0.1:99999", *SEARCH], "--address"),
    ("workers_zero", ["search", "{w}/good.yaml", "--runs-dir", "{w}/runs-out", "--workers", "0"], "--workers: must"),
    ("max_evals_negative", ["resume", "{w}/runs/no_run_json", "--max-evals", "-1"], "--max-evals: must be positive"),
    ("eval_set_not_a_directory", ["eval", "{w}/models/xb", "--eval-set", "{w}/good.yaml", "--backend", "hf"],
     "good.yaml: no card.yaml"),
    ("eval_target_not_a_model", ["eval", "{w}/spaces", "--eval-set", "{w}/eval/mini_xb_facts", "--backend", "hf"],
     "spaces: no config.json"),
    ("genome_wrong_length", ["space", "show", "{w}/good.yaml", "--genome", "1.0,1.0"], "--genome: 2 values for 4"),
]


def _the_error_line(stderr: str) -> str:
    """The one error line, last on stderr (before it at most a note such as the backend chosen); no traceback."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and lines and lines[-1].startswith("evomerge: error: "), stderr
    assert sum(line.startswith("evomerge: error") for line in lines) == 1, stderr
    return lines[-1]


@pytest.fixture(scope="module")
def world(miniature, tmp_path_factory) -> Path:
    """The corpus copied next to links to the miniature models and the shipped eval sets, plus good.yaml, a valid
    space (so a case can break one command-line value alone)."""
    w = tmp_path_factory.mktemp("bad_inputs") / "w"
    shutil.copytree(CORPUS, w)
    for name, path in (("base", miniature.base), ("instruct", miniature.instruct), ("xb", miniature.languages["xb"])):
        (w / "models" / name).symlink_to(path)
    (w / "eval").mkdir()
    for name in ("mini_xb_facts", "mini_xa_chat"):
        (w / "eval" / name).symlink_to(REPO / "eval_sets" / name)
    good = (w / "spaces" / "seed_outside_bounds.yaml").read_text().replace("w_xb: 5.0", "w_xb: 0.5")
    (w / "good.yaml").write_text(good.replace("../", ""))
    return w


def test_the_corpus_has_a_case_per_file_and_thirty_or_more():
    names = {c[0] for c in CASES}
    assert len(CASES) == len(names) >= 30
    files = [p for p in (CORPUS / "spaces").glob("*.yaml")] + [p for p in (CORPUS / "recipes").glob("*.yaml")]
    for p in files:  # every corpus file is some case's input
        assert p.stem in names or f"recipe_{p.stem}" in names, p


@pytest.mark.parametrize("case,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_field_with_exit_2(world, case, argv, expected, capsys, monkeypatch):
    monkeypatch.chdir(world)  # recipes name their models relative to the working directory, as mergekit's do
    code = main([a.replace("{w}", str(world)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    line = _the_error_line(err)
    assert expected in line and "(" in line and line.endswith(")"), line  # the hint, in parentheses
    assert not (world / "runs-out").exists() and not (world / "out").exists()  # refused before anything was made


@pytest.mark.parametrize("case", ["yaml_tab_indent", "pickle_only_model", "evalset_malformed_item",
                                  "run_json_malformed", "address_not_host_port"])
def test_a_real_user_sees_no_traceback(world, case):
    _, argv, expected = next(c for c in CASES if c[0] == case)
    r = subprocess.run([sys.executable, "-m", "evomerge", *[a.replace("{w}", str(world)) for a in argv]],
                       capture_output=True, text=True, cwd=world, timeout=300)
    assert r.returncode == 2 and expected in _the_error_line(r.stderr)
