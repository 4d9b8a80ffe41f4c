"""Loaders that turn public Hugging Face datasets into local eval sets (`evomerge evalset pull`), one file per
source. Pulling is the only step that needs the Hub; afterwards everything runs offline from `eval_sets/`.

Each source module defines `LOCATIONS` (language -> where its rows are) and `build(dev_rows, holdout_rows, lang,
options) -> Built`. Rows are read through `datasets`, from the Hub or, with `local=DIR`, from `DIR/<split>.jsonl`
(or .json, .parquet, .csv) in the dataset's own schema: that is how tests feed them without a hub.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from evomerge.errors import UserError


@dataclass(frozen=True)
class Location:
    """Where one language's rows are on the Hub: dataset id, config, and the source splits of dev and holdout."""

    dataset: str
    config: str | None
    dev_split: str
    holdout_split: str


@dataclass(frozen=True)
class PullOptions:
    """What the user asked for."""

    lang: str
    n_dev: int
    n_holdout: int
    seed: int = 0
    few_shot: int = 0
    chat_template: bool | None = None  # None: the source's default


@dataclass(frozen=True)
class Built:
    """A source's output: the card (mapping), the items, and notes for the user (e.g. what was dropped)."""

    card: Mapping[str, Any]
    items: Sequence[Mapping[str, Any]]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Source:
    """A pullable dataset."""

    name: str
    locations: Mapping[str, Location]
    build: Callable[[list[dict], list[dict], Location, PullOptions], Built]
    doc: str


@dataclass(frozen=True)
class PullReport:
    """Where the set was written and how many items each split got."""

    path: Path
    n_dev: int
    n_holdout: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def read_rows(dataset: str, config: str | None, split: str, local: Path | None = None) -> list[dict]:
    """Rows of one split through `datasets`: from the Hub, or from `local/<split>.<jsonl|json|parquet|csv>`."""
    import datasets

    if local is not None:
        files = [p for ext in ("jsonl", "json", "parquet", "csv") for p in sorted(Path(local).glob(f"{split}.{ext}"))]
        if not files:
            raise UserError(str(local), f"no file for split {split!r}",
                            f"put the rows in {split}.jsonl (or .parquet/.csv) in the dataset's own schema")
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}[files[0].suffix[1:]]
        ds = datasets.load_dataset(builder, data_files={split: str(files[0])}, split=split)
    else:
        try:
            ds = datasets.load_dataset(dataset, config, split=split)
        except Exception as e:  # noqa: BLE001 - the Hub's many failure types all mean "could not fetch"
            raise UserError(f"{dataset}{'/' + config if config else ''}:{split}", f"could not load ({type(e).__name__}: "
                            f"{str(e)[:200]})", "check the network, the dataset's terms (some are gated), "
                            "or use --from DIR with local files") from None
    return [dict(r) for r in ds]


def seeded_sample(rows: Sequence[dict], n: int, key: str) -> list[int]:
    """Indices of a seeded sample of n rows (all rows when n >= len), in source order."""
    idx = list(range(len(rows)))
    if n < len(idx):
        idx = sorted(random.Random(key).sample(idx, n))
    return idx


def grouped_split(groups: Sequence[str], n_dev: int, n_holdout: int, key: str) -> tuple[list[int], list[int]]:
    """Split row indices so that no group (e.g. a passage) straddles dev and holdout: groups are shuffled (seeded)
    and taken whole while they fit; dev first, then holdout from the groups left."""
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    order = sorted(by_group)
    random.Random(key).shuffle(order)
    dev: list[int] = []
    holdout: list[int] = []
    for g in order:
        rows = by_group[g]
        if len(dev) + len(rows) <= n_dev:
            dev += rows
        elif len(holdout) + len(rows) <= n_holdout:
            holdout += rows
    return sorted(dev), sorted(holdout)


def _sources() -> dict[str, Source]:
    from evomerge.evalsources import belebele, flores, ifeval, xstorycloze

    return {s.name: s for s in (belebele.SOURCE, xstorycloze.SOURCE, ifeval.SOURCE, flores.SOURCE)}


def source_names() -> list[str]:
    """Names `evomerge evalset pull` accepts."""
    return sorted(_sources())


def pull(name: str, opts: PullOptions, out_root: str | Path = "eval_sets", set_name: str | None = None,
         local: str | Path | None = None, overwrite: bool = False) -> PullReport:
    """Read a source's rows for one language, build the eval set and write it to `out_root/<set_name>`."""
    from evomerge.evalsets import write_evalset

    sources = _sources()
    if name not in sources:
        raise UserError(name, "unknown eval-set source", f"known: {', '.join(sorted(sources))}")
    src = sources[name]
    if opts.lang not in src.locations:
        raise UserError(f"--lang {opts.lang}", f"{name} has no {opts.lang!r} data",
                        f"languages: {', '.join(sorted(src.locations))}")
    if opts.n_dev < 1 or opts.n_holdout < 0:
        raise UserError("--dev/--holdout", "out of range", "--dev >= 1 and --holdout >= 0")
    out = Path(out_root) / (set_name or f"{name}_{opts.lang}")
    if out.exists() and not overwrite:
        raise UserError(str(out), "exists", "choose another --name or pass --force")
    loc = src.locations[opts.lang]
    local_dir = Path(local) if local is not None else None
    dev_rows = read_rows(loc.dataset, loc.config, loc.dev_split, local_dir)
    holdout_rows = dev_rows if loc.holdout_split == loc.dev_split else read_rows(
        loc.dataset, loc.config, loc.holdout_split, local_dir)
    built = src.build(dev_rows, holdout_rows, loc, opts)
    card = dict(built.card)
    card["name"] = out.name
    write_evalset(out, card, built.items)
    n_dev = sum(1 for it in built.items if it["split"] == "dev")
    return PullReport(out, n_dev, sum(1 for it in built.items if it["split"] == "holdout"), built.notes)


def origin(loc: Location, opts: PullOptions, split_by: str) -> dict[str, Any]:
    """The card's `origin` record (what the test-split guard reads)."""
    out: dict[str, Any] = {"dataset": loc.dataset}
    if loc.config:
        out["config"] = loc.config
    out.update(dev_split=loc.dev_split, holdout_split=loc.holdout_split, split_by=split_by, seed=opts.seed,
               n_dev=opts.n_dev, n_holdout=opts.n_holdout)
    return out
