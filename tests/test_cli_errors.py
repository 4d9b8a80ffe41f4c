"""Bad input ends in one line on stderr naming the problem, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "evomerge", *args], capture_output=True, text=True, timeout=120)


def _files(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("models: [\n")
    unknown_method = tmp_path / "unknown.yaml"
    unknown_method.write_text("merge_method: frankenmerge\nmodels:\n  - model: a\n")
    missing_model = tmp_path / "missing.yaml"
    missing_model.write_text(f"merge_method: linear\nmodels:\n  - model: {tmp_path / 'nowhere'}\n"
                             "    parameters: {weight: 1.0}\n")
    pickle_dir = tmp_path / "pickled"
    pickle_dir.mkdir()
    (pickle_dir / "config.json").write_text('{"num_hidden_layers": 2}')
    (pickle_dir / "pytorch_model.bin").write_bytes(b"not really")
    pickled = tmp_path / "pickled.yaml"
    pickled.write_text(f"merge_method: linear\nmodels:\n  - model: {pickle_dir}\n    parameters: {{weight: 1.0}}\n")
    space_missing_model = tmp_path / "space.yaml"
    space_missing_model.write_text((REPO / "search_spaces" / "quickstart.yaml").read_text()
                                   .replace("build: {miniature: ../runs/tiny, seed: 0}", "")
                                   .replace("../runs/tiny/", str(tmp_path / "absent") + "/"))
    return {
        "malformed recipe": (["merge", str(bad_yaml), str(tmp_path / "o")], "malformed YAML"),
        "missing recipe": (["merge", str(tmp_path / "none.yaml"), str(tmp_path / "o")], "no such file"),
        "unknown method": (["merge", str(unknown_method), str(tmp_path / "o")], "unknown method"),
        "missing model": (["merge", str(missing_model), str(tmp_path / "o")], "model directory not found"),
        "pickle weights": (["merge", str(pickled), str(tmp_path / "o")], "pickle"),
        "malformed space": (["search", str(bad_yaml)], "malformed YAML"),
        "space with absent models": (["search", str(space_missing_model), "--runs-dir", str(tmp_path)], "not found"),
        "export of a non-run": (["export", str(tmp_path)], "not a run directory"),
        # checked before the models are looked for: the absent models of this space are never reached
        "cmaes with two candidates": (["search", str(space_missing_model), "--runs-dir", str(tmp_path), "--popsize",
                                       "2", "--optimizer", "cmaes"], "search.popsize: cmaes needs at least 3"),
    }


@pytest.mark.parametrize("case", ["malformed recipe", "missing recipe", "unknown method", "missing model",
                                  "pickle weights", "malformed space", "space with absent models",
                                  "export of a non-run", "cmaes with two candidates"])
def test_one_line_error_exit_2(case, tmp_path):
    args, expected = _files(tmp_path)[case]
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evomerge: error:"), r.stderr
    assert expected in lines[0]
    assert "Traceback" not in r.stderr


def test_debug_shows_the_traceback(tmp_path):
    r = _cli("--debug", "merge", str(tmp_path / "none.yaml"), str(tmp_path / "o"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_help_lists_every_command():
    r = _cli("--help")
    for cmd in ("merge", "search", "export", "eval", "quickstart"):
        assert cmd in r.stdout
    r = _cli("search", "--help")
    for flag in ("--runs-dir", "--seed", "--workers", "--name"):
        assert flag in r.stdout
