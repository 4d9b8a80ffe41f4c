"""`evomerge space show`: a search space as a human reads it — dimensions, genes, seeds, and the recipe at a point."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from evomerge.errors import UserError
from evomerge.hub import Shapes
from evomerge.recipe import dump_recipe_yaml
from evomerge.space import Space


def point_from_genome(space: Space, n_layers: int, text: str) -> dict[str, float]:
    """`--genome v1,v2,...`: gene values in the table's order."""
    genes = space.expand(n_layers)
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError("--genome", "must be comma-separated numbers", "e.g. --genome 0.5,1.0,1.2") from None
    if len(vals) != len(genes):
        raise UserError("--genome", f"{len(vals)} values for {len(genes)} dimensions", "one value per table row")
    for g, v in zip(genes, vals):
        if not g.low <= v <= g.high:
            raise UserError("--genome", f"{g.name} = {v} is outside [{g.low}, {g.high}]", "stay inside the bounds")
    return {g.name: v for g, v in zip(genes, vals)}


def point_from_trial(run_dir: Path, number: int) -> dict[str, float]:
    """`--trial N`: the gene values a run's trial was evaluated at."""
    import optuna

    from evomerge.ledger import storage_url
    from evomerge.rundir import read_run

    info = read_run(run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=info.name, storage=storage_url(run_dir))
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise UserError("--trial", f"run {info.name!r} has no trial {number}", f"trials are 0..{len(trials) - 1}")
    return dict(trials[number].params)


def describe(space: Space, shapes: Shapes, values: Mapping[str, float] | None = None, label: str = "initial point") -> str:
    """The text `evomerge space show` prints."""
    n = shapes.n_layers
    genes = space.expand(n)
    values = dict(values) if values is not None else {g.name: g.init for g in genes}
    lines = [f"search space {space.source}",
             f"method {space.method} ({space.dtype}); {n} decoder layers; {len(genes)} dimensions",
             "models:"]
    for m in space.models:
        tag = f" [{m.language}]" if m.language else ""
        lines.append(f"  {m.name:10s} {m.role:9s}{tag:6s} {m.ref}  ({shapes.architectures.get(m.name, '?')}, "
                     f"vocab {shapes.vocab_sizes.get(m.name, '?')})")
    if len(set(shapes.vocab_sizes.values())) > 1:
        lines.append("  note: vocabulary sizes differ; the merged model takes the instruct model's tokenizer")
    lines.append("genes:")
    rows = [("dimension", "parameter", "models", "covers", "low", "high", "init", "step", "value")]
    for g in genes:
        spec = next(s for s in space.genes if s.name == g.family)
        covers = spec.tensors or (
            "all tensors" if spec.granularity == "global" else
            f"{g.module + ' ' if g.module else ''}{_covers(spec.granularity, g.index, spec.count, n)}")
        rows.append((g.name, g.parameter, g.model, covers, f"{g.low:g}", f"{g.high:g}", f"{g.init:g}",
                     f"{g.step:g}", f"{values[g.name]:.4g}"))
    lines += _table(rows)
    if space.seeds:
        lines.append("seed candidates (evaluated first):")
        for s in space.seeds:
            lines.append(f"  {s.name}: " + ", ".join(f"{k}={v:g}" for k, v in s.values.items()))
    lines.append(f"eval sets ({space.eval_split} split): " + ", ".join(Path(e.path).name + f" x{e.weight:g}" for e in space.eval_sets))
    lines.append(f"recipe at the {label} (mergekit YAML):")
    lines.append(dump_recipe_yaml(space.recipe(values, n)).rstrip())
    return "\n".join(lines)


def _covers(granularity: str, index: int | None, count: int | None, n: int) -> str:
    if granularity == "per_layer":
        return f"layer {index}"
    if granularity == "blocks":
        layers = [l for l in range(n) if l * count // n == index]
        return f"layers {layers[0]}-{layers[-1]}"
    t = index / (count - 1)
    return f"control point t={t:.2f} (layer {t * (n - 1):.1f})"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
