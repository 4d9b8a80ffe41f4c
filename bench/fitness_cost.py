"""Cheaper fitness at the same ranking (issue 16): the same candidates scored with the full dev sets and with each
cheaper mode, side by side in one run: tokens computed per candidate, wall time, Kendall tau of the rankings against
the full scores, top-5 overlap, and whether the same candidate would be exported (the best scalar fitness).

    .venv/bin/python bench/fitness_cost.py [--candidates 48] [--quick] [--json [PATH]]

`--json` alone prints the list of mode rows on stdout (each: workload, mode, tokens_ratio (full / mode),
kendall_tau, top5_overlap, same_export, wall_ratio, tokens_per_candidate); `--json PATH` writes the BenchResult
(bench/report.py) that run_all.py gathers. `--quick`: fewer Belebele items (the candidates stay 48).

Workloads (built here, nothing from the Hub; cached under --root):
- `miniature`: the miniature world's models (evomerge/miniature, seed 0, full scale) and the tradeoff space's dev
  sets (search_spaces/miniature_tradeoff.yaml: 3 instruction sets of 24 prompts, two of which share their prompts,
  and a 24-text perplexity set); the fitness is the mean of its three objectives.
- `belebele`: Belebele-shaped items (a ~400-token passage and a question, 4 short answers; bench/shared_context.py)
  on tiny random Llamas (hidden 256, byte-level tokenizer): a base and two seeded fine-tunes merged by task
  arithmetic; the fitness is gold_prob.
Candidates: the space's initial point, then seeded uniform draws within the genes' bounds
(bench/gpu_acceptance.py's `candidate_recipes`), each merged once in memory (HF backend, float32, CPU) and scored in
every mode in turn (so a slow moment of the machine hits every mode alike).

Modes:
- `full`: every item, every choice computed from scratch (`share_context` off) and every set generated on its own:
  what lm-eval-harness computes, and evomerge did before issue 16;
- `shared`: today's default: a multiple-choice context computed once for its choices, one generation per distinct
  prompt across sets (identical scores, fewer tokens);
- `racing`: `shared` plus `search.racing` (4 batches, 95%): candidates taken in order, each raced against the
  3rd-best fitness of those before it (what `keep: 3` gives a search); a pruned candidate ranks by its running
  estimate, as the optimizer sees it;
- `reduced`: `shared` on anchor items only (`evomerge evalset reduce`'s anchor points, reduce.py): anchors picked
  per set from the first 12 candidates' per-item values (a first generation), a third of each set's items; every
  candidate's fitness estimated from its anchors (the perplexity set has no per-item values and stays whole).
Tokens are the input tokens the model computed (`HFBackend.usage`: cached tokens not counted; in generation the
prompt and each token fed back).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
from report import BenchResult, Row, pick, write_json  # noqa: E402

MODES = ("full", "shared", "racing", "reduced")
KEEP, BATCHES, CONFIDENCE = 3, 4, 0.95  # racing as a search with `racing: {keep: 3}` runs it
RESPONDERS, ANCHOR_SHARE = 12, 1 / 3  # reduced sets: the first generation's candidates answer, a third of the items
GOAL_TOKENS, GOAL_TAU = 5.0, 0.9  # issue 16: 5x fewer tokens at Kendall tau >= 0.9 and the same exported candidate


@dataclass
class Workload:
    name: str
    space: Any
    n_layers: int
    objs: tuple
    weights: dict
    how: str


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- workloads ----------------------------------------------------------------------------------------------------

def miniature(root: Path) -> Workload:
    import yaml

    from evomerge.miniature.build import build_miniature

    t0 = time.perf_counter()
    mini = build_miniature(root / "tiny", seed=0)
    say(f"miniature models ready ({time.perf_counter() - t0:.0f} s)")
    doc = yaml.safe_load((REPO / "search_spaces" / "miniature_tradeoff.yaml").read_text())
    doc["models"] = [{"name": "base", "role": "base", "path": str(mini.base)},
                     {"name": "instruct", "role": "instruct", "path": str(mini.instruct)},
                     {"name": "xb", "role": "language", "language": "xb", "path": str(mini.languages["xb"])}]
    doc.pop("build", None)
    for s in doc["eval"]["sets"]:
        s["path"] = str((REPO / "search_spaces" / s["path"]).resolve())
    return _workload("miniature", root, doc)


def belebele(root: Path, items: int) -> Workload:
    import yaml

    from gpu_acceptance import write_space
    from scoring_overhead import build_model
    from shared_context import build_sets

    base = root / "bele" / "base"
    if not (base / "config.json").is_file():
        build_model(base)
    paths = {"base": base, "instruct": noisy_copy(base, root / "bele" / "instruct", 1, 0.5),
             "lang": noisy_copy(base, root / "bele" / "lang", 2, 0.5)}
    evalset = build_sets(root / "bele" / f"sets{items}", items)["belebele_cloze"]
    doc = yaml.safe_load(write_space(root / "bele", paths, evalset, "float32", 6, 8, items).read_text())
    doc["search"]["objectives"] = {"belebele": [{"set": "belebele_cloze", "metric": "gold_prob"}]}
    return _workload("belebele", root, doc)


def _workload(name: str, root: Path, doc: dict) -> Workload:
    import yaml

    from evomerge.hub import check_configs
    from evomerge.search import load_objectives
    from evomerge.space import load_space

    doc.setdefault("search", {})
    doc["search"].pop("optimizer", None)  # the bench ranks by the scalar fitness; the optimizer is not used
    doc["eval"].pop("max_items", None)  # the whole dev split: what the cheap modes must rank like
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    space = load_space(path)
    objs, weights, _ = load_objectives(space, allow_test_splits=False)
    return Workload(name, space, check_configs(space).n_layers, tuple(objs), weights, space.search.scalarize)


def noisy_copy(src: Path, dst: Path, seed: int, scale: float) -> Path:
    """A 'fine-tune' of `src`: every matrix plus seeded noise of `scale` times its own std."""
    from safetensors.torch import load_file, save_file

    if (dst / "config.json").is_file():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    gen = torch.Generator().manual_seed(seed)
    for f in sorted(tmp.glob("*.safetensors")):
        tensors = load_file(f)
        out = {k: v + scale * v.float().std() * torch.randn(v.shape, generator=gen) if v.ndim > 1 else v
               for k, v in tensors.items()}
        save_file({k: v.contiguous() for k, v in out.items()}, f, metadata={"format": "pt"})
    tmp.rename(dst)
    return dst


# ---- measuring ----------------------------------------------------------------------------------------------------

@dataclass
class Cost:
    fitness: float
    tokens: int
    seconds: float


def measure(w: Workload, n: int, threads: int) -> dict[str, list[Cost]]:
    """Every candidate in every mode; the reduced mode in a second pass (its anchors need the responders)."""
    from gpu_acceptance import candidate_recipes

    from evomerge import evaluation, racing
    from evomerge.fitness import objectives, scalarize
    from evomerge.recipe import Recipe
    from evomerge.worker import Evaluator, EvaluatorSpec

    recipes = candidate_recipes(w.space, w.n_layers, n)
    spec = EvaluatorSpec(recipes[0], tuple(r.path for r in w.space.eval_sets), "dev", None, 0, threads=threads,
                         objectives=w.objs, objective_weights=w.weights, scalarize=w.how)
    ev = Evaluator.start(spec, "bench")
    backend, prepared = ev.backend, ev.prepared
    totals = {p.name: evaluation.n_items(p) for p in prepared}
    fit = lambda scores: scalarize(objectives(scores, w.objs), w.weights, w.how)  # noqa: E731

    def run(share: bool, fn):
        backend.share_context, backend.usage.tokens = share, 0
        t0 = time.perf_counter()
        out = fn()
        return out, backend.usage.tokens, time.perf_counter() - t0

    costs: dict[str, list[Cost]] = {m: [] for m in MODES}
    items: list[dict[str, dict[str, list[float]]]] = []
    told: list[tuple[float, ...]] = []
    for i, recipe in enumerate(recipes):
        ev.apply(Recipe.from_mergekit(recipe))
        scores, tok, sec = run(False, lambda: {p.name: evaluation.score_set(backend, p) for p in prepared})
        costs["full"].append(Cost(fit(scores), tok, sec))
        (_, scores, per_item), tok, sec = run(True, lambda: list(evaluation.score_batches(backend, prepared, 1))[-1])
        costs["shared"].append(Cost(fit(scores), tok, sec))
        items.append(per_item)
        race = racing.Race(BATCHES, CONFIDENCE, racing.bar(told, KEEP, False))
        (scores, steps, why), tok, sec = run(True, lambda: racing.run(
            race, evaluation.score_batches(backend, prepared, BATCHES), totals, w.objs, w.weights, w.how))
        costs["racing"].append(Cost(steps[-1].estimate[0], tok, sec))
        if why is None:
            told.append(steps[-1].estimate)
        say(f"{w.name} candidate {i}: full {costs['full'][-1].fitness:.4f} ({costs['full'][-1].tokens} tokens), "
            f"racing {'pruned' if why else 'complete'} after {steps[-1].items} items ({tok} tokens)")

    reduced, anchors = reduced_sets(w, prepared, items[:RESPONDERS])
    for i, recipe in enumerate(recipes):
        ev.apply(Recipe.from_mergekit(recipe))
        (_, scores, per_item), tok, sec = run(True, lambda: list(evaluation.score_batches(backend, reduced, 1))[-1])
        estimated = dict(scores)
        for name, (anchor_set, metric) in anchors.items():
            ids = [p for p in reduced if p.name == name][0].item_ids
            value = anchor_set.estimate(dict(zip(ids, per_item[name][metric])))
            estimated[name] = type(scores[name])({**scores[name].values, metric: value}, totals[name])
        costs["reduced"].append(Cost(fit(estimated), tok, sec))
    return costs


def reduced_sets(w: Workload, prepared, responders: list) -> tuple[list, dict]:
    """Each set cut to its anchors (picked from the responders' values of the set's objective metric), or whole
    when its metric has no per-item values; returns the prepared sets and {set: (Anchors, metric)}."""
    from evomerge import evaluation
    from evomerge.reduce import pick_anchors

    metric_of = {t.set: t.metric for o in w.objs for t in o.terms}
    out, anchors = [], {}
    for p in prepared:
        metric = metric_of.get(p.name)
        if metric is None or metric not in responders[0][p.name]:
            out.append(p)
            continue
        values = [r[p.name][metric] for r in responders]
        k = max(2, round(evaluation.n_items(p) * ANCHOR_SHARE))
        a = pick_anchors(values, list(p.item_ids), k, seed=0)
        index = {item: j for j, item in enumerate(p.item_ids)}
        out.append(evaluation.take(p, [index[i] for i in a.ids]))
        anchors[p.name] = (a, metric)
    return out, anchors


# ---- comparing rankings ---------------------------------------------------------------------------------------------

def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two scorings of the same candidates (ties in either count as neither order)."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denom if denom else 1.0


def top(values: list[float], k: int) -> set[int]:
    return set(sorted(range(len(values)), key=lambda i: (-values[i], i))[:k])


def mode_rows(w: Workload, costs: dict[str, list[Cost]]) -> list[dict]:
    full = costs["full"]
    ref = [c.fitness for c in full]
    tokens_full = sum(c.tokens for c in full) / len(full)
    secs_full = sum(c.seconds for c in full)
    rows = []
    for mode in MODES:
        cs = costs[mode]
        got = [c.fitness for c in cs]
        tokens = sum(c.tokens for c in cs) / len(cs)
        rows.append({"workload": w.name, "mode": mode, "candidates": len(cs), "tokens_per_candidate": tokens,
                     "tokens_ratio": tokens_full / tokens if tokens else math.inf,
                     "wall_ratio": secs_full / sum(c.seconds for c in cs),
                     "kendall_tau": kendall_tau(ref, got), "top5_overlap": len(top(ref, 5) & top(got, 5)) / 5,
                     "same_export": top(ref, 1) == top(got, 1)})
    return rows


def bench_rows(rows: list[dict]) -> list[Row]:
    out = []
    for r in rows:
        if r["mode"] == "full":
            out.append(Row(f"{r['workload']}: full, tokens per candidate", r["tokens_per_candidate"], "tokens",
                           note=f"{r['candidates']} candidates"))
            continue
        ok = r["tokens_ratio"] >= GOAL_TOKENS and r["kendall_tau"] >= GOAL_TAU and r["same_export"]
        out.append(Row(f"{r['workload']}: {r['mode']}, tokens full / {r['mode']}", r["tokens_ratio"], "x",
                       f">= {GOAL_TOKENS:g} at tau >= {GOAL_TAU} and the same export", ok,
                       note=f"Kendall tau {r['kendall_tau']:.3f}, top-5 overlap {r['top5_overlap']:.1f}, same "
                            f"export {'yes' if r['same_export'] else 'no'}, wall {r['wall_ratio']:.2f}x"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=48)
    ap.add_argument("--items", type=int, default=None, help="Belebele-shaped items (default 96; --quick 48)")
    ap.add_argument("--workloads", default="miniature,belebele")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores)")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "evomerge-bench" / "fitness_cost")
    ap.add_argument("--json", nargs="?", const="-", default=None,
                    help="alone: print the mode rows as JSON on stdout; with PATH: write the BenchResult there")
    ap.add_argument("--quick", action="store_true", help="fewer Belebele items (under 20 minutes on 2 cores)")
    args = ap.parse_args(argv)
    from evomerge.pool import local_cores

    items = pick(args.items, 96, 48, args.quick)
    threads = args.threads or local_cores()
    torch.set_num_threads(threads)
    args.root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: list[dict] = []
    for name in args.workloads.split(","):
        w = miniature(args.root) if name == "miniature" else belebele(args.root, items)
        rows += mode_rows(w, measure(w, args.candidates, threads))
    wall = time.perf_counter() - t0
    result = BenchResult("fitness_cost", f"Fitness cost at the same ranking ({args.candidates} candidates)",
                         bench_rows(rows) + [Row("wall time of the bench", wall, "s")])
    if args.json == "-":
        print(json.dumps(rows, indent=2))
    else:
        from report import markdown_table

        print(markdown_table([result]))
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
