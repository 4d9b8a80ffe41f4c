"""Loaders that turn public Hugging Face datasets into local eval sets (`evomerge evalset pull`), one file per
source. Pulling is the only step that needs the Hub; afterwards everything runs offline from `eval_sets/`.

Each source module defines `LOCATIONS` (language -> where its rows are: dataset id, config, splits, revision,
the columns every row must have, the licence) and `build(dev_rows, holdout_rows, loc, options) -> Built`. Rows are
read through `datasets`, from the Hub or, with `local=DIR`, from `DIR/<split>.jsonl` (or .json, .parquet, .csv,
.tsv, or a file name the source publishes) in the dataset's own schema: that is how tests feed them without a hub,
and how sources that are not on the Hub (IFEval eu/gl) are pulled. A row that does not fit the schema is a
one-line `UserError` naming the dataset, the split, the row and the column.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from evomerge.errors import UserError


@dataclass(frozen=True)
class Location:
    """Where one language's rows are: dataset id, config, the source splits of dev and holdout, and what a row of
    them must hold. `revision` and `data_files` (split -> file pattern in the repo) load a Hub branch such as the
    parquet export `refs/convert/parquet` of a dataset whose loading script `datasets` refuses; `fetch` (when set)
    means the rows are not on the Hub under a licence that lets us download them for the user: the text says how
    to get the file, and only `--from DIR` pulls. `local_names` (split -> file names) are accepted in DIR besides
    `<split>.<ext>`, e.g. the file name the source publishes."""

    dataset: str
    config: str | None
    dev_split: str
    holdout_split: str
    columns: tuple[str, ...] = ()
    license: str = ""
    revision: str | None = None
    data_files: tuple[tuple[str, str], ...] = ()
    fetch: str = ""
    local_names: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def where(self, split: str) -> str:
        """`dataset[/config]:split`, the name errors use."""
        return f"{self.dataset}{'/' + self.config if self.config else ''}:{split}"


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


_BUILDERS = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv", "tsv": "csv"}


def _local_file(loc: Location, split: str, local: Path) -> Path:
    names = [f"{split}.{ext}" for ext in _BUILDERS] + list(dict(loc.local_names).get(split, ()))
    found = [local / n for n in names if (local / n).is_file()]
    if not found:
        if not Path(local).is_dir():
            raise UserError(f"--from {local}", "not a directory", "pass the folder that holds the split files")
        raise UserError(str(local), f"no file for split {split!r} of {loc.dataset}",
                        f"put the rows in {' or '.join(names[:1] + names[len(_BUILDERS):])} (or .parquet/.csv) "
                        "in the dataset's own schema")
    return found[0]


def _check_json(path: Path, loc: Location, split: str) -> None:
    """A JSON Lines file (or one JSON array) of objects, else a one-line error naming the line."""
    import json

    raw = path.read_text(encoding="utf-8", errors="replace")
    if raw.lstrip().startswith("["):
        try:
            rows = json.loads(raw)
        except ValueError as e:
            raise UserError(str(path), f"not valid JSON ({e})", f"it should hold {loc.where(split)}'s rows") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise UserError(str(path), "must be a list of JSON objects", f"one per row of {loc.where(split)}")
        return
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise UserError(f"{path}:{n}", f"not a JSON object ({e})",
                            f"JSON Lines: one row of {loc.where(split)} per line") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{n}", "not a JSON object", f"JSON Lines: one row of {loc.where(split)} per line")


def read_rows(loc: Location, split: str, local: Path | None = None) -> list[dict]:
    """Rows of one split through `datasets`: from the Hub (at `loc.revision`, from `loc.data_files` when given), or
    from a local file in DIR (see `Location.local_names`)."""
    import datasets

    if local is not None:
        path = _local_file(loc, split, Path(local))
        ext = path.suffix[1:].lower()
        builder = _BUILDERS.get(ext, "json")
        extra = {"sep": "\t"} if ext == "tsv" else {}
        if builder == "json":
            _check_json(path, loc, split)
        bars, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
        datasets.disable_progress_bars()  # a local file reads in a blink: no bars around the one-line report
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parse errors come back as one UserError
        try:
            ds = datasets.load_dataset(builder, data_files={split: str(path)}, split=split, **extra)
        except Exception as e:  # noqa: BLE001 - a malformed file fails in many ways inside datasets/pyarrow
            cause = e.__cause__ or e
            raise UserError(str(path), f"cannot be read as {builder} ({type(cause).__name__}: "
                            f"{' '.join(str(cause).split())[:160]})",
                            f"it should hold {loc.where(split)}'s rows, one per line/record") from None
        finally:
            datasets.logging.set_verbosity(verbosity)
            if bars:
                datasets.enable_progress_bars()
    elif loc.fetch:
        raise UserError(loc.where(split), "not downloadable from the Hub by evomerge", loc.fetch)
    else:
        kwargs: dict[str, Any] = {}
        if loc.revision:
            kwargs["revision"] = loc.revision
        if loc.data_files:
            kwargs["data_files"] = dict(loc.data_files)
        try:
            ds = datasets.load_dataset(loc.dataset, None if loc.data_files else loc.config, split=split, **kwargs)
        except Exception as e:  # noqa: BLE001 - the Hub's many failure types all mean "could not fetch"
            raise UserError(loc.where(split), f"could not load ({type(e).__name__}: {' '.join(str(e).split())[:200]})",
                            "check the network, the dataset's terms (some are gated), "
                            "or use --from DIR with local files") from None
    return [dict(r) for r in ds]


def check_columns(rows: Sequence[Mapping[str, Any]], loc: Location, split: str) -> None:
    """Every row has every column the source reads, with a value: else a one-line error naming the dataset, split,
    row and column."""
    for i, row in enumerate(rows):
        for col in loc.columns:
            if col not in row:
                raise UserError(f"{loc.where(split)}: row {i}", f"no column {col!r}",
                                f"{loc.dataset} rows have {', '.join(loc.columns)}; this row has "
                                f"{', '.join(sorted(map(str, row))) or 'nothing'}")
            if row[col] is None:
                raise UserError(f"{loc.where(split)}: row {i}", f"column {col!r} is empty",
                                "the source's rows must fill it")


def text(row: Mapping[str, Any], col: str, loc: Location, split: str, i: int) -> str:
    """A non-empty text cell, as the dataset has it (lm-eval's templates use the raw text too)."""
    value = row.get(col)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{loc.where(split)}: row {i}: {col}", f"must be non-empty text, got {value!r}",
                        "is this the dataset's own schema?")
    return value


def integer(row: Mapping[str, Any], col: str, loc: Location, split: str, i: int, lo: int, hi: int) -> int:
    """An integer cell within [lo, hi] (a digit string, as some sources store it, or a whole float is accepted)."""
    value = row.get(col)
    n = None
    if isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            n = int(str(value).strip())
        except ValueError:
            n = None
    if n is None or not lo <= n <= hi:
        raise UserError(f"{loc.where(split)}: row {i}: {col}", f"must be an integer from {lo} to {hi}, got {value!r}",
                        "is this the dataset's own schema?")
    return n


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
    dev_rows = read_rows(loc, loc.dev_split, local_dir)
    check_columns(dev_rows, loc, loc.dev_split)
    if loc.holdout_split == loc.dev_split:
        holdout_rows = dev_rows
    else:
        holdout_rows = read_rows(loc, loc.holdout_split, local_dir)
        check_columns(holdout_rows, loc, loc.holdout_split)
    built = src.build(dev_rows, holdout_rows, loc, opts)
    card = dict(built.card)
    card["name"] = out.name
    write_evalset(out, card, built.items)
    n_dev = sum(1 for it in built.items if it["split"] == "dev")
    return PullReport(out, n_dev, sum(1 for it in built.items if it["split"] == "holdout"), built.notes)


def origin(loc: Location, opts: PullOptions, split_by: str, test_split: bool = False) -> dict[str, Any]:
    """The card's `origin` record (what the test-split guard reads): `test_split` marks dev items that are a
    benchmark's evaluation data, for sources the guard's list of known test splits does not name."""
    from evomerge.evalsets import KNOWN_TEST_SPLITS

    out: dict[str, Any] = {"dataset": loc.dataset}
    if loc.config:
        out["config"] = loc.config
    out.update(dev_split=loc.dev_split, holdout_split=loc.holdout_split, split_by=split_by, seed=opts.seed,
               n_dev=opts.n_dev, n_holdout=opts.n_holdout)
    if test_split and (loc.dataset, loc.dev_split) not in KNOWN_TEST_SPLITS:
        out["test_split"] = True
    return out


def source_line(loc: Location, name: str) -> str:
    """The card's `source`: dataset, config, revision and benchmark name."""
    parts = [loc.dataset] + ([loc.config] if loc.config else []) + ([f"@ {loc.revision}"] if loc.revision else [])
    return f"{' '.join(parts)} ({name})"
