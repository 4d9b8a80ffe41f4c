"""`evomerge space show`: a search space as a human reads it — dimensions, genes, seeds, and the recipe at a point."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

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
    lines.append(f"what every tensor group gets (value at the {label}):")
    lines += _table([("model", "parameter", "tensor group", "set by", "value"),
                     *tensor_groups(space, n, values)])
    if space.seeds:
        lines.append("seed candidates (evaluated first):")
        for s in space.seeds:
            lines.append(f"  {s.name}: " + ", ".join(f"{k}={v:g}" for k, v in s.values.items()))
    lines.append(f"eval sets ({space.eval_split} split): " + ", ".join(Path(e.path).name + f" x{e.weight:g}" for e in space.eval_sets))
    lines.append(f"recipe at the {label} (mergekit YAML):")
    lines.append(dump_recipe_yaml(space.recipe(values, n)).rstrip())
    return "\n".join(lines)


# One representative tensor per group (Llama-style names, as the recipe resolves them; mergekit matches by name).
_OUTSIDE = (("embeddings", "model.embed_tokens.weight"), ("final norm", "model.norm.weight"),
            ("output head", "lm_head.weight"))
_INSIDE = (("attention", "model.layers.{l}.self_attn.q_proj.weight"), ("norms", "model.layers.{l}.input_layernorm.weight"),
           ("mlp", "model.layers.{l}.mlp.down_proj.weight"))


def tensor_groups(space: Space, n_layers: int, values: Mapping[str, float]) -> list[tuple[str, str, str, str, str]]:
    """(model, parameter, tensor group, set by, value) for every merged model's parameters that the space sets
    (genes or fixed values) and every method-wide parameter a gene sets.

    "set by" is found by moving each gene and watching which tensors' resolved coefficients move (so it is what
    the recipe does, not a restatement of its rules): a group no gene moves shows its fixed value or mergekit's
    default; a group outside the layers that only a layer gene moves follows that layer's value (mergekit's rule
    for tensors outside the layers), which is said outright."""
    genes = space.expand(n_layers)
    families = {g.name: g for g in space.genes}
    groups = [(name, [tensor]) for name, tensor in _OUTSIDE[:1]]
    groups += [(f"layers {kind}", [t.format(l=l) for l in range(n_layers)]) for kind, t in _INSIDE]
    groups += [(name, [tensor]) for name, tensor in _OUTSIDE[1:]]
    tensors = [t for _, ts in groups for t in ts]
    base = _coefficients(space.recipe(values, n_layers), tensors, n_layers)
    moved_by: dict[tuple[str, str], set[str]] = {}  # (slot, tensor) -> dimensions whose change moves it
    for g in genes:
        other = g.low if values[g.name] != g.low else g.high
        if other == values[g.name]:
            continue
        moved = _coefficients(space.recipe({**values, g.name: other}, n_layers), tensors, n_layers)
        for key, v in moved.items():
            if v != base[key]:
                moved_by.setdefault(key, set()).add(g.name)
    order = [g.name for g in genes]
    rows = []
    for slot in _slots(space):
        model, param = slot
        key = f"{space.model(model).ref if model else None}|{param}"
        mine = []
        for group, ts in groups:
            dims = sorted({d for t in ts for d in moved_by.get((key, t), ())}, key=order.index)
            vals = [base[(key, t)] for t in ts]
            mine.append((model or "(method)", param, group, _set_by(space, families, genes, model, param, group,
                                                                      dims), _values(vals)))
        if len({r[3:] for r in mine}) == 1:  # one setting for the whole model: one row
            mine = [(*mine[0][:2], "every tensor", *mine[0][3:])]
        rows += mine
    return rows


def _coefficients(recipe, tensors: Sequence[str], n_layers: int) -> dict[tuple[str, str], Any]:
    """("model ref|param", tensor) -> resolved value, for every per-model and method-wide parameter ("None|param")."""
    out: dict[tuple[str, str], Any] = {}
    refs = [m.model for m in recipe.inputs]
    for t in tensors:
        c = recipe.coefficients(t, n_layers)
        for param, per in c.per_model.items():
            for ref, v in zip(refs, per):
                out[(f"{ref}|{param}", t)] = v
        for param, v in c.shared.items():
            out[(f"None|{param}", t)] = v
    return out


def _slots(space: Space) -> list[tuple[str | None, str]]:
    """The (model name or None for method-wide, parameter) pairs the space sets."""
    out = []
    for m in space.merged_models:
        params = set(space.fixed.get(m.name, {})) | {g.parameter for g in space.genes if m.name in g.models}
        out += [(m.name, p) for p in sorted(params)]
    method = set(space.method_parameters) | {g.parameter for g in space.genes if not g.models}
    out += [(None, p) for p in sorted(method)]
    return out


def _set_by(space: Space, families: Mapping[str, Any], genes: Sequence[Any], model: str | None, param: str,
            group: str, dims: Sequence[str]) -> str:
    by_dim = {g.name: g for g in genes}
    if dims:
        fams = [families[by_dim[d].family] for d in dims]
        names = dims[0] if len(dims) <= 1 else (", ".join(dims) if len(dims) <= 3 else f"{dims[0]} .. {dims[-1]}")
        if not group.startswith("layers ") and all(f.granularity != "global" and not f.tensors for f in fams):
            return f"no gene of its own: takes {names}'s value (mergekit: tensors outside the layers take the first)"
        grain = sorted({f"tensors: {f.tensors}" if f.tensors else f.granularity for f in fams})
        count = f", {len(dims)} genes" if len(dims) > 1 else ""
        return f"gene{'s' if len(dims) > 1 else ''} {names} ({', '.join(grain)}{count})"
    fixed = space.fixed.get(model, {}).get(param) if model else space.method_parameters.get(param)
    if fixed is not None:
        return "no gene: fixed (" + ("merge.fixed" if model else "merge.parameters") + ")"
    return "no gene: mergekit's default"


def _values(vals: Sequence[Any]) -> str:
    def f(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return f(vals[0]) if all(v == vals[0] for v in vals) else ", ".join(f(v) for v in vals)


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
