"""Per-set scores -> named objectives -> one value (single-objective optimizers) or a vector (multi-objective). Pure.

An objective is a weighted mean of (eval set, metric) terms, e.g. `eu_skill` = Belebele-eu gold_prob and
XStoryCloze-eu gold_prob, `eu_instructions` = the Basque instruction set's prompt_acc, `eu_fidelity` = its lang_acc,
`en_retention` = the English sets' headline metrics. Every objective is higher-is-better: a lower-is-better
metric (bits per byte, perplexities) enters negated. `scalarize` folds objectives into one number by a weighted
mean or by their minimum (the worst objective: no language may be sacrificed).

A failed candidate has no fitness: it is recorded as a failed trial with its reason, and the optimizer is told the
worst value (optimizers/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from evomerge.errors import UserError
from evomerge.scorers import LOWER_IS_BETTER, SetScores

HOW = ("mean", "min")
# the objective an eval set's headline metric feeds by default, by kind
_ROLE = {"multiple_choice": "skill", "instruction": "instructions", "perplexity": "fluency"}


@dataclass(frozen=True)
class Term:
    """One eval set's metric and its weight inside an objective."""

    set: str
    metric: str
    weight: float = 1.0


@dataclass(frozen=True)
class Objective:
    """A named, higher-is-better combination of eval-set metrics."""

    name: str
    terms: tuple[Term, ...]


def metric_value(scores: SetScores, metric: str) -> float:
    """A metric oriented so that higher is better (lower-is-better metrics negated)."""
    v = scores.metric(metric)
    return -v if metric in LOWER_IS_BETTER else v


def objectives(scores: Mapping[str, SetScores], spec: Sequence[Objective]) -> dict[str, float]:
    """Each objective's weighted mean of its terms' (oriented) metric values."""
    out = {}
    for obj in spec:
        total = sum(t.weight for t in obj.terms)
        if total <= 0:
            raise ValueError(f"objective {obj.name}: weights must sum to a positive number")
        missing = [t.set for t in obj.terms if t.set not in scores]
        if missing:
            raise KeyError(f"objective {obj.name}: no scores for eval set {missing[0]!r}")
        out[obj.name] = sum(t.weight * metric_value(scores[t.set], t.metric) for t in obj.terms) / total
    return out


def scalarize(values: Mapping[str, float], weights: Mapping[str, float] | None = None, how: str = "mean") -> float:
    """One number from objectives: their weighted mean, or their minimum (weights then ignored)."""
    if not values:
        raise ValueError("no objectives to scalarize")
    if how == "min":
        return min(values.values())
    if how != "mean":
        raise ValueError(f"unknown scalarization {how!r}; use one of {', '.join(HOW)}")
    w = {k: (1.0 if weights is None else float(weights.get(k, 0.0))) for k in values}
    total = sum(w.values())
    if total <= 0:
        raise ValueError("objective weights must sum to a positive number")
    return sum(w[k] * v for k, v in values.items()) / total


def vector(values: Mapping[str, float], spec: Sequence[Objective]) -> list[float]:
    """Objectives in the spec's order, for multi-objective optimizers."""
    return [values[o.name] for o in spec]


def default_objectives(cards: Mapping[str, Any]) -> tuple[Objective, ...]:
    """Objectives implied by the sets' cards (name -> evalsets.Card): `<lang>_skill` (multiple choice),
    `<lang>_instructions` and `<lang>_fidelity` (instruction sets: card metric and lang_acc), `<lang>_fluency`
    (perplexity); every English set goes to `en_retention` instead (English is what the instruct model had)."""
    groups: dict[str, list[Term]] = {}
    for name, card in cards.items():
        lang = card.language
        if lang == "en":
            groups.setdefault("en_retention", []).append(Term(name, card.metric))
            continue
        groups.setdefault(f"{lang}_{_ROLE[card.kind]}", []).append(Term(name, card.metric))
        if card.kind == "instruction":
            groups.setdefault(f"{lang}_fidelity", []).append(Term(name, "lang_acc"))
    return tuple(Objective(k, tuple(v)) for k, v in groups.items())


def parse_objectives(raw: Any, where: str, sets: Mapping[str, Any]) -> tuple[Objective, ...]:
    """Validate objectives written as YAML against the sets' cards (name -> Card):

        objectives:
          eu_skill: [{set: belebele_eu, metric: gold_prob, weight: 1.0}, {set: xstorycloze_eu}]
          eu_instructions: [{set: instructions_eu}]

    A term's metric defaults to its set's card metric, its weight to 1."""
    from evomerge.scorers import METRICS

    if not isinstance(raw, dict) or not raw:
        raise UserError(where, "must be a mapping of objective name -> list of terms",
                        "e.g. {eu_skill: [{set: belebele_eu}]}")
    out = []
    for name, terms in raw.items():
        at = f"{where}.{name}"
        if not isinstance(terms, list) or not terms:
            raise UserError(at, "must be a non-empty list of terms", "e.g. [{set: belebele_eu, metric: acc}]")
        parsed = []
        for i, t in enumerate(terms):
            w = f"{at}[{i}]"
            if not isinstance(t, dict) or set(t) - {"set", "metric", "weight"} or "set" not in t:
                raise UserError(w, "a term is {set, metric?, weight?}", "e.g. {set: belebele_eu, metric: acc}")
            if t["set"] not in sets:
                raise UserError(f"{w}.set", f"unknown eval set {t['set']!r}", f"known: {', '.join(sorted(sets))}")
            card = sets[t["set"]]
            metric = t.get("metric", card.metric)
            if metric not in METRICS[card.kind]:
                raise UserError(f"{w}.metric", f"{t['set']} ({card.kind}) has no metric {metric!r}",
                                f"use one of {', '.join(METRICS[card.kind])}")
            weight = t.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise UserError(f"{w}.weight", "must be a number >= 0", "e.g. 1.0")
            parsed.append(Term(t["set"], metric, float(weight)))
        out.append(Objective(str(name), tuple(parsed)))
    return tuple(out)


def scalar_fitness(scores: Mapping[str, SetScores], metrics: Mapping[str, str], weights: Mapping[str, float]) -> float:
    """Weighted mean over sets of each set's (oriented) `metrics[set]`: one objective per set, scalarized."""
    spec = [Objective(name, (Term(name, metrics[name]),)) for name in scores]
    return scalarize(objectives(scores, spec), {name: weights[name] for name in scores}, "mean")
