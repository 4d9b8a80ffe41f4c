"""One result format for every benchmark: each bench script's `--json PATH` writes a `BenchResult` there, and
`bench/run_all.py` gathers them into one JSON file and one markdown table.

A row is one measured figure, usually a ratio measured side by side in the same run, with the goal it is held to
(as text, e.g. ">= 50x") and whether it met it (None where there is no goal).
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    metric: str
    value: float
    unit: str = ""  # "x" for ratios, "fraction", "s", "MB", ...
    goal: str | None = None
    met: bool | None = None
    note: str = ""


@dataclass(frozen=True)
class BenchResult:
    bench: str  # the script's short name, e.g. "disk_merge"
    title: str
    rows: list[Row]
    device: str = field(default_factory=lambda: f"{platform.machine()} CPU, {_cores()} cores")
    plots: list[str] = field(default_factory=list)  # PNG paths written by the bench
    details: dict[str, Any] = field(default_factory=dict)  # raw timings, per-seed values, ...
    error: str = ""  # set by run_all.py when the script was missing, failed or timed out (rows then empty)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def write_json(path: str | Path | None, result: BenchResult) -> None:
    """Write `result` to `path` (no-op when path is None, i.e. the script ran without --json)."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(result), indent=2) + "\n")
    tmp.replace(path)


def read_json(path: str | Path) -> BenchResult:
    data = json.loads(Path(path).read_text())
    return BenchResult(data["bench"], data["title"], [Row(**r) for r in data["rows"]], data.get("device", ""),
                       data.get("plots", []), data.get("details", {}), data.get("error", ""))


def markdown_table(results: list[BenchResult]) -> str:
    """One table, a row per figure: bench | metric | value | goal | met."""
    lines = ["| benchmark | metric | value | goal | met |", "|---|---|---|---|---|"]
    for res in results:
        if res.error:
            lines.append(f"| {res.title} | **failed**: {res.error.replace('|', '/')} | - | - | - |")
        for r in res.rows:
            value = f"{r.value:.3g}{r.unit if r.unit == 'x' else (' ' + r.unit if r.unit else '')}"
            met = "-" if r.met is None else ("yes" if r.met else "**no**")
            note = f" ({r.note})" if r.note else ""
            cells = [res.title, r.metric + note, value, r.goal or "-", met]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")  # a | would split a cell
    return "\n".join(lines)


def add_arguments(ap: Any) -> None:
    """The two flags every bench script takes: `--json PATH` (write a BenchResult there) and `--quick` (small
    sizes and few repetitions, about two minutes or less: what `run_all.py --quick` runs)."""
    ap.add_argument("--json", type=Path, default=None, help="write the result (bench/report.py's BenchResult) here")
    ap.add_argument("--quick", action="store_true", help="small sizes and few repetitions (a minute or two)")


def pick(value: Any, normal: Any, quick: Any, is_quick: bool) -> Any:
    """A flag's value: what the user gave, else the quick or the normal default."""
    if value is not None:
        return value
    return quick if is_quick else normal
