"""Command-line interface: argument parsing only; each command calls one function of the package."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from evomerge.errors import UserError

EPILOG = """commands:
  merge RECIPE OUT_DIR     merge models from a mergekit-format YAML recipe into OUT_DIR
  search SPACE             evolutionary search over a search space (Ray workers, Optuna study in RUNS_DIR/NAME)
  export RUN               write the best recipe (mergekit YAML) and merged model of a run
  eval MODEL --eval-set D  score one model directory on eval sets
  quickstart               build tiny models, search, export: the whole flow on a CPU in minutes
  space show SPACE         dimensions, genes, seeds and the recipe at a point (reads config.json files only)
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evomerge", description="Evolutionary search of LLM merge coefficients.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("merge", help="merge models from a mergekit-format YAML recipe")
    m.add_argument("recipe", type=Path, help="mergekit-format YAML (models: form)")
    m.add_argument("out_dir", type=Path, help="output model directory (written atomically)")

    s = sub.add_parser("search", help="run an evolutionary search over a search space")
    s.add_argument("space", type=Path, help="search-space YAML (see search_spaces/)")
    s.add_argument("--name", help="run name (default: the space file's stem)")
    s.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default: runs/)")
    s.add_argument("--seed", type=int, default=0, help="seed: same seed, same candidates (default 0)")
    s.add_argument("--workers", type=int, default=1, help="Ray workers, one model copy each (default 1)")
    s.add_argument("--generations", type=int, help="override the space's search.generations")
    s.add_argument("--popsize", type=int, help="override the space's search.popsize")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("export", help="export the best recipe and merged model of a run")
    e.add_argument("run", type=Path, help="run directory, e.g. runs/q")
    e.add_argument("--out", type=Path, help="output directory (default: RUN/export)")
    e.add_argument("--recipe-only", action="store_true", help="write the recipe YAML only, not the model")

    v = sub.add_parser("eval", help="score one model directory on eval sets")
    v.add_argument("model", type=Path, help="Hugging Face model directory")
    v.add_argument("--eval-set", action="append", required=True, type=Path, help="eval-set directory (repeatable)")
    v.add_argument("--split", default="dev", choices=["dev", "holdout"], help="which split (default dev)")
    v.add_argument("--max-items", type=int, help="a seeded subset of at most this many items per set")
    v.add_argument("--seed", type=int, default=0, help="seed of the item subset (default 0)")
    v.add_argument("--json", action="store_true", help="print JSON")

    sp = sub.add_parser("space", help="inspect search spaces")
    spsub = sp.add_subparsers(dest="space_command", required=True, metavar="SUBCOMMAND")
    show = spsub.add_parser("show", help="dimensions, genes, seeds and the recipe at a point")
    show.add_argument("space", type=Path, nargs="?", help="search-space YAML (default with --run: the run's space)")
    show.add_argument("--genome", help="gene values in the table's order, comma-separated")
    show.add_argument("--run", type=Path, help="a run directory (with --trial, or to show the run's space)")
    show.add_argument("--trial", type=int, help="show the point of this trial of --run")

    q = sub.add_parser("quickstart", help="tiny models -> search -> export, on a CPU in minutes")
    q.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default: runs/)")
    q.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    q.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    return p


def _run(args: argparse.Namespace) -> int:
    if args.command == "merge":
        from evomerge.merge import merge_to_disk
        from evomerge.recipe import load_recipe_yaml

        report = merge_to_disk(load_recipe_yaml(args.recipe), args.out_dir)
        print(f"merged {report.n_tensors} tensors into {report.out_dir} in {report.seconds:.1f} s")
    elif args.command == "search":
        from evomerge.search import SearchOptions, run_search

        opts = SearchOptions(name=args.name or args.space.stem, runs_dir=args.runs_dir, seed=args.seed,
                             workers=args.workers, generations=args.generations, popsize=args.popsize,
                             progress=not args.no_progress)
        summary = run_search(args.space, opts)
        print(f"{summary.n_complete} completed, {summary.n_failed} failed; best fitness "
              f"{summary.best_value if summary.best_value is not None else '-'} (trial {summary.best_trial})")
        print(f"study: {summary.run_dir / 'study.db'}   export with: evomerge export {summary.run_dir}")
    elif args.command == "export":
        from evomerge.export import export_run

        r = export_run(args.run, args.out, with_model=not args.recipe_only)
        print(f"trial {r.trial} (fitness {r.value:.6f}): recipe {r.recipe_path}" + (f", model {r.model_dir}" if r.model_dir else ""))
    elif args.command == "eval":
        from evomerge.evaluation import score_model_dir

        scores = score_model_dir(str(args.model), [str(p) for p in args.eval_set], args.split, args.max_items, args.seed)
        if args.json:
            print(json.dumps({k: asdict(v) for k, v in scores.items()}, indent=2))
        else:
            for name, s in scores.items():
                print(f"{name:30s} acc {s.acc:.4f}  gold_prob {s.gold_prob:.4f}  n {s.n}")
    elif args.command == "space":
        from evomerge import spaceview
        from evomerge.hub import check_configs
        from evomerge.rundir import read_run
        from evomerge.space import load_space

        if args.space is None and args.run is None:
            raise UserError("space show", "no search space given", "pass SPACE.yaml or --run RUN")
        if args.trial is not None and args.run is None:
            raise UserError("--trial", "needs --run", "e.g. --run runs/q --trial 3")
        space = load_space(args.space) if args.space else read_run(args.run).space()
        shapes = check_configs(space)
        values, label = None, "initial point"
        if args.genome:
            values, label = spaceview.point_from_genome(space, shapes.n_layers, args.genome), "given genome"
        elif args.trial is not None:
            values, label = spaceview.point_from_trial(args.run, args.trial), f"point of trial {args.trial}"
        print(spaceview.describe(space, shapes, values, label))
    elif args.command == "quickstart":
        from evomerge.quickstart import run_quickstart

        run_quickstart(args.runs_dir, args.seed, args.workers)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input -> one line on stderr and exit status 2 (a traceback only with --debug)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"evomerge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evomerge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
