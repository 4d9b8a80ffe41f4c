"""Reduced eval sets: a few anchor items, weighted, whose score estimates the whole dev split's (issue 16).

Method: tinyBenchmarks' anchor points (Polo et al., "tinyBenchmarks: evaluating LLMs with fewer examples", ICML
2024). Each dev item is a point whose coordinates are its values (e.g. `gold_prob`, or 0/1 `acc`) under the models
that answered it, the *responders* (the sources and a first generation of candidates). Items that the same models
get right and wrong together carry the same information about a new model, so k-means groups them into K
clusters; each cluster's anchor is its item nearest the cluster's centroid, weighted by the number of items in the
cluster. A new model's full-set score is estimated by the weighted mean of its anchor values, which is what a
reduced set (dev = the anchors, each with its `weight`) computes when scored as an ordinary set (scorers.py).

Why anchor points and not MERGE3's item response theory (IRT): a merge search has 5-50 responders when the set is
reduced (the sources and one generation); an IRT model (two or more parameters per item, an ability per model)
fitted on so few models is poorly determined, needs an optimizer with its own tolerances, and its estimate of a
new candidate needs that candidate's ability fitted from its anchor answers, i.e. a second fit per candidate
inside the search loop. Anchor points need no fitted model: the estimate is a weighted mean, the same arithmetic
every other score is, so the search, racing (a prefix of the items) and the ledger treat a reduced set like any
other; it is deterministic under a seed; and tinyBenchmarks found anchor points competitive with their IRT
estimators at ~100 anchors. The cost of the choice: anchor points do not extrapolate to models unlike the
responders (IRT's abilities do, to a degree), so the responders should span the search (sources + candidates).

The leave-one-responder-out check (`loo_check`) measures exactly that: each responder in turn is left out, the
anchors are picked from the others, and the left-out one's estimate is compared with its full-set mean; a random
K-item subset's error is reported beside it, so the anchors are seen to beat plain subsampling (or not).

Pure core (numpy, no I/O) above the line; `reduce_evalset` below it reads `evomerge eval --per-item` records
and writes the reduced set (`evomerge evalset reduce`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from evomerge.errors import UserError

# the leave-one-out check fits on all but one, and a cluster of items needs two models to mean anything
MIN_RESPONDERS = 3
_RESTARTS = 8  # k-means++ restarts; the lowest within-cluster sum of squares wins
_RANDOM_DRAWS = 50  # random K-item subsets per left-out responder, for the baseline error


@dataclass(frozen=True)
class Anchors:
    """Anchor items and how many items each stands for (its cluster's size); `estimate` maps a model's anchor
    values to an estimate of its mean over all the items."""

    ids: tuple[str, ...]
    weights: tuple[int, ...]

    def estimate(self, values: Mapping[str, float]) -> float:
        """The weighted mean of the anchors' values (`values` maps item id -> value; other ids are ignored)."""
        return sum(w * values[i] for i, w in zip(self.ids, self.weights)) / sum(self.weights)


@dataclass(frozen=True)
class Check:
    """Leave-one-responder-out error of the estimate (mean and max |estimate - full mean| over responders) and,
    for comparison, the mean error of a random subset of as many items."""

    mean_error: float
    max_error: float
    random_error: float

    def as_dict(self) -> dict[str, float]:
        return {"loo_mean_abs_error": self.mean_error, "loo_max_abs_error": self.max_error,
                "random_subset_mean_abs_error": self.random_error}


def pick_anchors(values: Sequence[Sequence[float]], item_ids: Sequence[str], k: int, seed: int = 0) -> Anchors:
    """K anchors of the items from `values` (responders x items): the medoids of a seeded k-means over the items'
    value vectors, each weighted by its cluster's size, in the items' order."""
    x = np.asarray(values, dtype=np.float64).T  # (items, responders)
    if x.ndim != 2 or x.shape[0] != len(item_ids):
        raise ValueError("need one value per responder and item")
    if not 0 < k < x.shape[0]:
        raise ValueError(f"need 0 < k < items ({k} anchors of {x.shape[0]} items)")
    rng = np.random.default_rng(seed)
    labels = _kmeans(x, k, rng)
    clusters = _fill([np.flatnonzero(labels == c) for c in range(k)], k, rng)
    picked = []
    for members in clusters:
        d = ((x[members] - x[members].mean(axis=0)) ** 2).sum(axis=1)
        picked.append((int(members[int(np.argmin(d))]), len(members)))  # argmin: ties to the first item
    picked.sort()
    return Anchors(tuple(item_ids[i] for i, _ in picked), tuple(n for _, n in picked))


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 100) -> np.ndarray:
    """Cluster labels of the rows of x: Lloyd's iterations from k-means++ starts, the best of `_RESTARTS`. With
    fewer distinct rows than k some clusters stay empty (`_fill` splits clusters for them)."""
    best, best_cost = None, math.inf
    for _ in range(_RESTARTS):
        centers = x[_plusplus(x, k, rng)]
        labels = np.full(len(x), -1)
        for _ in range(iters):
            d = _sq_distances(x, centers)  # (items, k)
            new = d.argmin(axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            for c in range(k):
                members = x[labels == c]
                if len(members):
                    centers[c] = members.mean(axis=0)
                else:  # an emptied cluster restarts at the item farthest from its own center
                    far = int(d[np.arange(len(x)), labels].argmax())
                    centers[c] = x[far]
        cost = float(((x - centers[labels]) ** 2).sum())
        if cost < best_cost:
            best, best_cost = labels, cost
    return best


def _sq_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(items, k) squared distances, |x|^2 - 2 x.c + |c|^2 (a matrix product, not an items x k x responders array)."""
    return np.maximum((x * x).sum(axis=1)[:, None] - 2 * x @ centers.T + (centers * centers).sum(axis=1)[None, :], 0)


def _plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """k-means++ starting rows: each next one drawn with probability proportional to its squared distance to the
    nearest chosen; once every row coincides with a chosen one, no more (fewer distinct rows than k)."""
    chosen = [int(rng.integers(len(x)))]
    d2 = ((x - x[chosen[0]]) ** 2).sum(axis=1)
    while len(chosen) < k and d2.sum() > 0:
        i = int(rng.choice(len(x), p=d2 / d2.sum()))
        chosen.append(i)
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(axis=1))
    return chosen + [chosen[0]] * (k - len(chosen))  # duplicates: their clusters come out empty


def _fill(clusters: list[np.ndarray], k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The non-empty clusters, the largest split in two (a seeded shuffle) until there are k: an empty cluster
    means fewer distinct value vectors than anchors (e.g. 0/1 values of few responders), and items that look
    alike to the responders still answer differently for a new model, so spare anchors go where most items are."""
    out = [c for c in clusters if len(c)]
    while len(out) < k:
        big = max(range(len(out)), key=lambda i: (len(out[i]), -i))
        members = rng.permutation(out[big])
        half = len(members) // 2
        out[big:big + 1] = [np.sort(members[:half]), np.sort(members[half:])]
    return out


def loo_check(values: Sequence[Sequence[float]], k: int, seed: int = 0) -> Check:
    """Leave each responder out in turn, pick anchors from the others, and compare its estimate with its mean
    over all items; beside it, the mean error of `_RANDOM_DRAWS` seeded random subsets of k items."""
    v = np.asarray(values, dtype=np.float64)  # (responders, items)
    r, n = v.shape
    if r < 2:
        raise ValueError("the leave-one-out check needs at least two responders")
    ids = [str(i) for i in range(n)]
    rng = np.random.default_rng(seed)
    errors, random_errors = [], []
    for out in range(r):
        anchors = pick_anchors(np.delete(v, out, axis=0), ids, k, seed)
        full = float(v[out].mean())
        errors.append(abs(anchors.estimate(dict(zip(ids, v[out]))) - full))
        random_errors += [abs(float(v[out, rng.choice(n, k, replace=False)].mean()) - full)
                          for _ in range(_RANDOM_DRAWS)]
    return Check(float(np.mean(errors)), float(np.max(errors)), float(np.mean(random_errors)))


# ---- the command: per-item records in, a reduced eval set out -----------------------------------------------------

@dataclass(frozen=True)
class ReduceReport:
    """What `evomerge evalset reduce` wrote and how well the anchors estimate the full set."""

    path: Path
    metric: str
    n_items: int
    anchors: Anchors
    responders: int
    check: Check

    def summary(self) -> str:
        c = self.check
        return (f"wrote {self.path}: {len(self.anchors.ids)} of {self.n_items} dev items as weighted anchors "
                f"({self.metric}, {self.responders} responders); leave-one-responder-out |estimate - full| "
                f"mean {c.mean_error:.4f}, max {c.max_error:.4f} (random {len(self.anchors.ids)} items: "
                f"{c.random_error:.4f}); estimator: {self.path / 'estimator.json'}")


def item_value(record: Mapping[str, Any], kind: str, metric: str) -> float:
    """One item's value of a metric from its `evomerge eval --per-item` record, by the scorers' own rules."""
    from evomerge.scorers import Verdict, score_instructions, score_multiple_choice

    if kind == "multiple_choice":
        return score_multiple_choice([record["loglikelihoods"]], [record["gold"]],
                                     [record["choices"]]).values[metric]
    constraints = record["constraints"]
    v = Verdict(tuple(c["strict"] for c in constraints), tuple(c["loose"] for c in constraints),
                record["language_ok"])
    return score_instructions([v]).values[metric]


def read_responses(path: Path, set_name: str, dev_ids: Sequence[str], kind: str, metric: str) -> list[float]:
    """One responder's values of the dev items, in `dev_ids`' order, from its per-item records (other sets'
    records in the file are skipped)."""
    if not path.is_file():
        raise UserError(str(path), "no such file", "write it with `evomerge eval MODEL --eval-set SET --per-item FILE`")
    got: dict[str, float] = {}
    sets = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            sets.add(rec["set"])
            if rec["set"] != set_name:
                continue
            got[str(rec["id"])] = item_value(rec, kind, metric)
        except (json.JSONDecodeError, KeyError, TypeError, IndexError, ValueError):
            raise UserError(f"{path}:{n}", f"not a per-item record of a {kind} set",
                            "write it with `evomerge eval MODEL --eval-set SET --per-item FILE`") from None
    if not got:
        raise UserError(str(path), f"no records of set {set_name!r} (it holds {', '.join(sorted(sets)) or 'none'})",
                        "pass the per-item records of this set's dev split")
    missing = [i for i in dev_ids if i not in got]
    if missing:
        raise UserError(str(path), f"no record of {len(missing)} of the {len(dev_ids)} dev items (e.g. "
                        f"{missing[0]!r})", "score the whole dev split: `evomerge eval` without --max-items or "
                        "--split holdout")
    return [got[i] for i in dev_ids]


def reduce_evalset(set_dir: Path, responses: Sequence[Path], k: int, out: Path, metric: str | None = None,
                   seed: int = 0, force: bool = False) -> ReduceReport:
    """`evomerge evalset reduce`: anchors of SET_DIR's dev split from the responders' per-item records, written
    as an eval set at `out` (the same card with `metric`; dev = the anchors, each with its `weight`; holdout and
    few-shot items unchanged) plus `out/estimator.json` (anchors, weights, metric, responders, the check)."""
    from evomerge.atomic import write_atomic
    from evomerge.evalsets import load_evalset, write_evalset
    from evomerge.scorers import ITEM_MEAN_METRICS
    from evomerge.yamlfile import load_yaml

    es = load_evalset(set_dir)
    kind, metric = es.card.kind, metric or es.card.metric
    if metric not in ITEM_MEAN_METRICS.get(kind, ()):
        means = ITEM_MEAN_METRICS.get(kind)
        raise UserError("--metric", f"{metric!r} is not a mean over items of a {kind} set",
                        f"use one of {', '.join(means)}" if means else "reduce multiple-choice or instruction sets")
    if any(it.weight != 1 for it in es.items):
        raise UserError(str(set_dir), "its items already carry weights (a reduced set?)", "reduce the full set")
    if len(responses) < MIN_RESPONDERS or len(set(responses)) < len(responses):
        raise UserError("--responses", f"{len(set(responses))} distinct responders; need at least {MIN_RESPONDERS}",
                        "per-item records of the sources and a first generation's candidates, one file per model")
    dev = [it for it in es.items if it.split == "dev"]
    if not 0 < k < len(dev):
        raise UserError("--items", f"{k} anchors of {len(dev)} dev items", f"choose 1 to {len(dev) - 1}")
    if out.resolve() == Path(set_dir).resolve():
        raise UserError("--out", "is the set being reduced", "write the reduced set to a directory of its own")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(str(out), "exists", "choose another --out, or --force to overwrite it")
    dev_ids = [it.id for it in dev]
    values = [read_responses(p, es.name, dev_ids, kind, metric) for p in responses]
    anchors = pick_anchors(values, dev_ids, k, seed)
    check = loo_check(values, k, seed)

    card = dict(load_yaml(Path(set_dir) / "card.yaml", "an eval-set card"), metric=metric)
    weight = dict(zip(anchors.ids, anchors.weights))
    # few-shot examples come from the dev items when the set has no `fewshot` items: the dropped dev items become
    # the examples, so the anchors still get examples from the same pool (redrawn: the pool changed)
    spare = "fewshot" if es.card.few_shot and not any(it.split == "fewshot" for it in es.items) else None
    items = []
    for line in (Path(set_dir) / "items.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        if obj["split"] == "dev":
            if str(obj["id"]) in weight:
                obj["weight"] = weight[str(obj["id"])]
            elif spare:
                obj["split"] = spare
            else:
                continue
        items.append(obj)
    write_evalset(out, card, items)
    estimator = {"set": es.name, "source": str(set_dir), "metric": metric, "items": len(dev), "seed": seed,
                 "anchors": [{"id": i, "weight": w} for i, w in zip(anchors.ids, anchors.weights)],
                 "responders": [str(p) for p in responses], **check.as_dict()}
    write_atomic(out / "estimator.json", json.dumps(estimator, indent=1) + "\n")
    return ReduceReport(out, metric, len(dev), anchors, len(responses), check)
