"""Command-line interface: argument parsing only; each command calls one function of the package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evomerge.errors import UserError

EPILOG = """commands:
  merge RECIPE OUT_DIR     merge models from a mergekit-format YAML recipe into OUT_DIR
  search SPACE             evolutionary search over a search space (Ray workers, Optuna study in RUNS_DIR/NAME;
                           --dry-run: the backend and memory plan only)
  resume RUN               continue a run from its directory (after a crash, kill -9, Ctrl-C or a spent budget)
  status RUN               counts, best trials, finalists' holdout scores, the Pareto front
  dashboard RUN            optuna-dashboard on the run's study (127.0.0.1 unless --host)
  plot RUN                 PNGs: fitness over evaluations, per-set curves, best genome per layer, Pareto front
  export RUN               write the best recipe (mergekit YAML) and merged model of a run (best on holdout when
                           finalists were re-checked)
  eval MODEL --eval-set D  score one model directory (or recipe) on eval sets
  evalset pull SOURCE      turn a public dataset (belebele, xstorycloze, ifeval, flores) into a local eval set
  evalset reduce SET       a smaller dev set: weighted anchor items picked from models' per-item records
  quickstart               build tiny models, search, export: the whole flow on a CPU in minutes
  space show SPACE         dimensions, genes, seeds and the recipe at a point (reads config.json files only)
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evomerge", description="Evolutionary search of LLM merge coefficients.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("merge", help="merge models from a mergekit-format YAML recipe")
    m.add_argument("recipe", type=Path, help="mergekit-format YAML (models: or slices: form)")
    m.add_argument("out_dir", type=Path, help="output model directory (written atomically)")
    m.add_argument("--allow-pickle", action="store_true",
                   help="read pickle checkpoints (*.bin) too, weights-only (refused by default: unpickling can run code)")

    s = sub.add_parser("search", help="run an evolutionary search over a search space")
    s.add_argument("space", type=Path, help="search-space YAML (see search_spaces/)")
    s.add_argument("--name", help="run name (default: the space file's stem)")
    s.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default: runs/)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed (default 0): same seed, same candidates with one worker or `search.pipeline: false` "
                        "(with several workers, which points are asked early depends on timing)")
    s.add_argument("--workers", type=int, default=1, help="Ray workers, one model copy each (default 1)")
    s.add_argument("--generations", type=int, help="override the space's search.generations")
    s.add_argument("--popsize", type=int, help="override the space's search.popsize")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--allow-test-splits", action="store_true",
                   help="search on eval sets whose dev items are a known benchmark's test data (refused by default)")
    s.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"],
                   help="scoring backend: vllm (an engine per worker, weights swapped in place), hf (transformers) "
                        "or auto (default: vllm with a GPU and vllm installed, else hf)")
    s.add_argument("--dry-run", action="store_true",
                   help="print the dimensions, workers, backend and each worker's memory plan, then stop")
    s.add_argument("--optimizer", choices=["cmaes", "tpe", "gp", "nsga2", "optuna-cmaes", "random"],
                   help="override the space's search.optimizer")
    s.add_argument("--address", help="join an existing Ray cluster (e.g. auto or HOST:PORT) instead of a local one")
    _tensor_parallel_flag(s)
    _budget_flags(s)

    rs = sub.add_parser("resume", help="continue a run from its directory")
    rs.add_argument("run", type=Path, help="run directory, e.g. runs/q")
    rs.add_argument("--workers", type=int, help="Ray workers (default: as the run was started)")
    rs.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"], help="scoring backend (default auto)")
    rs.add_argument("--generations", type=int, help="raise the number of generations")
    rs.add_argument("--address", help="join an existing Ray cluster instead of a local one")
    rs.add_argument("--no-progress", action="store_true", help="no progress bar")
    rs.add_argument("--allow-test-splits", action="store_true", help="as for search")
    _tensor_parallel_flag(rs)
    _budget_flags(rs)

    st = sub.add_parser("status", help="what a run has done so far")
    st.add_argument("run", type=Path, help="run directory")
    st.add_argument("--top", type=int, default=5, help="how many best trials to list (default 5)")

    db = sub.add_parser("dashboard", help="optuna-dashboard on a run's study")
    db.add_argument("run", type=Path, help="run directory")
    db.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    db.add_argument("--port", type=int, default=8080, help="port (default 8080)")

    pt = sub.add_parser("plot", help="write PNGs of a run")
    pt.add_argument("run", type=Path, help="run directory")
    pt.add_argument("--out", type=Path, help="output directory (default RUN/plots)")

    e = sub.add_parser("export", help="export the best recipe and merged model of a run")
    e.add_argument("run", type=Path, help="run directory, e.g. runs/q")
    e.add_argument("--out", type=Path, help="output directory (default: RUN/export)")
    e.add_argument("--recipe-only", action="store_true", help="write the recipe YAML only, not the model")
    e.add_argument("--trial", type=int, help="export this trial instead of the best")

    v = sub.add_parser("eval", help="score one model directory (or a recipe, merged first) on eval sets")
    v.add_argument("model", type=Path, help="Hugging Face model directory, or a mergekit recipe YAML")
    v.add_argument("--eval-set", action="append", required=True, type=Path, help="eval-set directory (repeatable)")
    v.add_argument("--split", default="dev", choices=["dev", "holdout"], help="which split (default dev)")
    v.add_argument("--max-items", type=int, help="a seeded subset of at most this many items per set")
    v.add_argument("--seed", type=int, default=0, help="seed of the item subset (default 0)")
    v.add_argument("--device", default="cpu", help="torch device (default cpu)")
    v.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default float32; bfloat16 on GPUs)")
    v.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass (default 32)")
    v.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"],
                   help="scoring backend: hf, vllm (merges a recipe in memory) or auto (default: vllm with a GPU "
                        "and vllm installed, else hf)")
    v.add_argument("--json", action="store_true", help="print JSON")
    v.add_argument("--per-item", type=Path, metavar="FILE.jsonl",
                   help="also write one JSON line per item: set, id, prompt, each choice's log-likelihood, chosen and "
                        "gold (or the response and each constraint's verdict), correct")

    es = sub.add_parser("evalset", help="eval-set tools")
    essub = es.add_subparsers(dest="evalset_command", required=True, metavar="SUBCOMMAND")
    pl = essub.add_parser("pull", help="turn a public dataset into a local eval set (the only step needing the Hub)")
    pl.add_argument("source", help="belebele, xstorycloze, ifeval or flores")
    pl.add_argument("--lang", required=True, help="language code: eu, ca, gl, es, en")
    pl.add_argument("--dev", type=int, default=100, help="dev items (default 100)")
    pl.add_argument("--holdout", type=int, default=300, help="holdout items (default 300)")
    pl.add_argument("--seed", type=int, default=0, help="seed of the dev/holdout split (default 0)")
    pl.add_argument("--few-shot", type=int, default=0, help="few-shot examples per prompt (default 0)")
    pl.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                    help="use the chat template (default: the source's choice)")
    pl.add_argument("--out", type=Path, default=Path("eval_sets"), help="where eval sets live (default eval_sets/)")
    pl.add_argument("--name", help="eval-set name (default SOURCE_LANG)")
    pl.add_argument("--from", dest="local", type=Path,
                    help="read rows from DIR/<split>.jsonl|parquet|csv instead of the Hub")
    pl.add_argument("--force", action="store_true", help="overwrite an existing eval set")
    rd = essub.add_parser("reduce", help="a smaller dev set: K weighted anchor items whose score estimates the "
                                         "full dev score, picked from models' per-item records")
    rd.add_argument("set_dir", type=Path, help="the eval set to reduce")
    rd.add_argument("--responses", type=Path, nargs="+", required=True, metavar="FILE.jsonl",
                    help="per-item records of the set's dev split, one file per model (`evomerge eval MODEL "
                         "--eval-set SET --per-item FILE`): the sources and a first generation's candidates")
    rd.add_argument("--items", type=int, required=True, metavar="K", help="anchor items to keep")
    rd.add_argument("--metric", help="the per-item value the anchors are picked for and the reduced set's card "
                                     "metric (default: the card's)")
    rd.add_argument("--out", type=Path, required=True, help="directory of the reduced eval set")
    rd.add_argument("--seed", type=int, default=0, help="seed of the clustering (default 0)")
    rd.add_argument("--force", action="store_true", help="overwrite an existing directory")

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


def _tensor_parallel_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensor-parallel", type=int, metavar="N",
                   help="vLLM ranks (GPUs; on CPU, cores) per worker (default: the space's search.tensor_parallel, "
                        "else the smallest that fits the memory plan); workers x N must fit the cluster")


def _budget_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-evals", type=int, help="stop after this many evaluations in all (resume continues)")
    p.add_argument("--max-minutes", type=float, help="stop after this much wall time (resume continues)")
    p.add_argument("--target", type=float, help="stop once the fitness reaches this value")
    p.add_argument("--finalists", type=int, help="top trials re-scored on holdout at the end (default: the space's, 3)")


def _search_opts(args: argparse.Namespace, name: str):
    from evomerge.search import SearchOptions

    for flag in ("workers", "max_evals", "finalists", "generations", "popsize", "tensor_parallel"):
        v = getattr(args, flag, None)
        if v is not None and v < (0 if flag == "finalists" else 1):
            raise UserError(f"--{flag.replace('_', '-')}", f"must be {'>= 0' if flag == 'finalists' else 'positive'}",
                            f"got {v}; e.g. --{flag.replace('_', '-')} {0 if flag == 'finalists' else 2}")
    if getattr(args, "address", None) is not None:
        _check_address(args.address)
    return SearchOptions(name=name, runs_dir=getattr(args, "runs_dir", Path("runs")), seed=getattr(args, "seed", 0),
                         workers=args.workers or 0, generations=args.generations,
                         popsize=getattr(args, "popsize", None), progress=not args.no_progress,
                         allow_test_splits=args.allow_test_splits, backend=args.backend,
                         optimizer=getattr(args, "optimizer", None), max_evals=args.max_evals,
                         max_minutes=args.max_minutes, target=args.target, finalists=args.finalists,
                         address=args.address, tensor_parallel=getattr(args, "tensor_parallel", None))


def _check_address(address: str) -> None:
    """`--address` is Ray's: auto, local, HOST:PORT or ray://HOST:PORT (checked before a run directory is made)."""
    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host.strip("[]") or any(c.isspace() for c in host) or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise UserError("--address", f"{address!r} is not a Ray cluster address",
                        "use auto, HOST:PORT (e.g. 10.0.0.1:6379) or ray://HOST:10001")


def _print_summary(summary) -> None:
    print(summary.report())
    print(f"study: {summary.run_dir / 'study.db'}   export with: evomerge export {summary.run_dir}")


def _run(args: argparse.Namespace) -> int:
    if args.command == "merge":
        from evomerge.merge import merge_to_disk
        from evomerge.recipe import load_recipe_yaml

        report = merge_to_disk(load_recipe_yaml(args.recipe), args.out_dir, allow_pickle=args.allow_pickle)
        print(f"merged {report.n_tensors} tensors into {report.out_dir} in {report.seconds:.1f} s")
    elif args.command == "search":
        from evomerge.search import plan_search, run_search

        opts = _search_opts(args, args.name or args.space.stem)
        if args.dry_run:
            print(plan_search(args.space, opts))
            return 0
        summary = run_search(args.space, opts)
        _print_summary(summary)
        return 130 if summary.stopped == "interrupted" else 0
    elif args.command == "resume":
        from evomerge.search import resume_search

        summary = resume_search(args.run, _search_opts(args, ""))
        _print_summary(summary)
        return 130 if summary.stopped == "interrupted" else 0
    elif args.command == "status":
        from evomerge.status import render, run_status

        print(render(run_status(args.run, args.top)))
    elif args.command == "dashboard":
        from evomerge.dashboard import serve

        serve(args.run, args.host, args.port)
    elif args.command == "plot":
        from evomerge.plots import plot_run

        paths = plot_run(args.run, args.out)
        print("\n".join(str(p) for p in paths) if paths else "no completed trial to plot yet")
    elif args.command == "export":
        from evomerge.export import export_run

        r = export_run(args.run, args.out, with_model=not args.recipe_only, trial=args.trial)
        print(r.report())
    elif args.command == "eval":
        from evomerge.evaluation import format_scores, score_target
        from evomerge.hub import check_weights

        if args.model.is_dir():
            check_weights(str(args.model))  # name a corrupt weight file before the backend trips over it
        if args.per_item is not None and not args.per_item.parent.is_dir():
            raise UserError("--per-item", f"no directory {args.per_item.parent}", "create it, or write elsewhere")
        records: list | None = [] if args.per_item is not None else None
        scores = score_target(args.model, [str(p) for p in args.eval_set], args.split, args.max_items, args.seed,
                              args.device, args.dtype, args.batch_size, backend=args.backend, records=records)
        if records is not None:
            from evomerge.atomic import write_atomic

            write_atomic(args.per_item, "".join(json.dumps(r) + "\n" for r in records))
            print(f"per-item results: {args.per_item} ({len(records)} items)", file=sys.stderr)
        print(json.dumps({k: v.as_dict() for k, v in scores.items()}, indent=2) if args.json else format_scores(scores))
    elif args.command == "evalset" and args.evalset_command == "reduce":
        from evomerge.reduce import reduce_evalset

        print(reduce_evalset(args.set_dir, args.responses, args.items, args.out, args.metric, args.seed,
                             args.force).summary())
    elif args.command == "evalset":
        from evomerge.evalsources import PullOptions, pull

        opts = PullOptions(args.lang, args.dev, args.holdout, args.seed, args.few_shot, args.chat)
        r = pull(args.source, opts, args.out, args.name, args.local, args.force)
        print(f"wrote {r.path}: {r.n_dev} dev, {r.n_holdout} holdout items" + "".join(f"; {n}" for n in r.notes))
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
        shapes = check_configs(space, weights=False)  # configs only: checks an 8B space on a laptop
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
