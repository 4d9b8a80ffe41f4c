"""`evomerge quickstart`: build the tiny models if absent, search, export, and say where everything is."""

from __future__ import annotations

import shutil
from pathlib import Path

from evomerge.errors import UserError
from evomerge.export import export_run
from evomerge.ledger import storage_url
from evomerge.search import SearchOptions, run_search

QUICKSTART_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"


def run_quickstart(runs_dir: Path, seed: int = 0, workers: int = 2) -> None:
    """The README's main job, end to end on the CPU."""
    if not QUICKSTART_SPACE.is_file():
        raise UserError(str(QUICKSTART_SPACE), "quickstart space not found", "run from a clone of the repository")
    name = "quickstart"
    run_dir = Path(runs_dir) / name
    if run_dir.exists():
        print(f"replacing the previous quickstart run in {run_dir}")
        shutil.rmtree(run_dir)
    summary = run_search(QUICKSTART_SPACE, SearchOptions(name=name, runs_dir=Path(runs_dir), seed=seed,
                                                         workers=workers))
    print(f"\n{summary.n_complete} candidates evaluated ({summary.n_failed} failed)")
    for g, v in enumerate(summary.best_per_generation, 1):
        print(f"  generation {g}: best fitness {'-' if v is None else f'{v:.4f}'}")
    result = export_run(summary.run_dir)
    import json

    manifest = json.loads((result.recipe_path.parent / "manifest.json").read_text())
    hold = manifest.get("holdout_fitness")
    print(f"\nexported: trial {result.trial}, dev fitness {result.value:.4f}"
          + (f", holdout {hold:.4f} (best of the finalists on holdout)" if hold is not None else "")
          + " (mean gold-choice probability)")
    print(f"study:    {summary.run_dir / 'study.db'}")
    print(f"recipe:   {result.recipe_path}")
    print(f"model:    {result.model_dir}")
    print(f"status:   .venv/bin/evomerge status {summary.run_dir}")
    print(f"plots:    .venv/bin/evomerge plot {summary.run_dir}")
    print(f"dashboard: .venv/bin/evomerge dashboard {summary.run_dir}   (optuna-dashboard on 127.0.0.1:8080; or "
          f"optuna-dashboard {storage_url(summary.run_dir)})")
