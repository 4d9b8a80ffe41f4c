"""A run directory: `runs/<name>/` holds `run.json` (what was run, with the search space's text), `study.db` (the
ledger) and, after export, `export/`. The directory alone is enough to inspect or export a run."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from evomerge.atomic import write_atomic
from evomerge.errors import UserError
from evomerge.space import Space, parse_space

RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunInfo:
    """What `run.json` records."""

    name: str
    space_source: str  # the space file's absolute path (its relative paths resolve against it)
    space_yaml: str  # the space file's text at the start of the run
    seed: int
    workers: int
    n_layers: int
    created: float
    evomerge: str
    # the engine the workers scored with, recorded when they first start (None before; `resume` reuses it)
    backend: str | None = None  # "hf" or "vllm"
    device: str | None = None  # "cuda" or "cpu"
    dtype: str | None = None
    tensor_parallel: int | None = None

    def space(self) -> Space:
        """The run's search space, parsed from the recorded text."""
        import yaml

        return parse_space(yaml.safe_load(self.space_yaml), self.space_source)


def create_run(run_dir: Path, info: RunInfo) -> None:
    """Make a new run directory; refuses to reuse one that holds a run."""
    if (run_dir / RUN_FILE).exists():
        owner = RunLock.owner(run_dir)
        if owner:
            raise UserError(str(run_dir), f"a run with this name exists and is in use by {owner}",
                            "choose another --name, or wait for that process to finish")
        raise UserError(str(run_dir), "a run with this name exists",
                        f"continue it with `evomerge resume {run_dir}`, choose another --name, or delete the directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(str(run_dir), f"cannot create the run directory ({e.strerror})", "choose a writable --runs-dir") from None
    if not os.access(run_dir, os.W_OK):
        raise UserError(str(run_dir), "run directory is not writable", "choose a writable --runs-dir")
    try:
        write_atomic(run_dir / RUN_FILE, json.dumps(asdict(info), indent=2))
    except OSError as e:
        raise UserError(str(run_dir / RUN_FILE), f"cannot write ({e.strerror})",
                        "choose a writable --runs-dir with free space") from None


def read_run(run_dir: str | Path) -> RunInfo:
    """Read `run.json` of an existing run."""
    p = Path(run_dir) / RUN_FILE
    if not p.is_file():
        raise UserError(str(run_dir), "not a run directory (no run.json)", "pass runs/<name> of a finished search")
    try:
        return RunInfo(**json.loads(p.read_text()))
    except (ValueError, TypeError):  # malformed JSON, or fields missing or unknown
        raise UserError(str(p), "malformed run description", "restore run.json (the search writes it at the start)"
                        ) from None


def record_engine(run_dir: Path, backend: str, device: str, dtype: str, tensor_parallel: int) -> RunInfo:
    """Write the engine the run's workers use into run.json (once: the first start of a run's workers)."""
    from dataclasses import replace

    info = replace(read_run(run_dir), backend=backend, device=device, dtype=dtype, tensor_parallel=tensor_parallel)
    write_atomic(Path(run_dir) / RUN_FILE, json.dumps(asdict(info), indent=2))
    return info


def engine_for_resume(info: RunInfo, backend: str, tensor_parallel: int | None) -> tuple[str, int | None]:
    """The backend and tensor-parallel size a resumed run uses: the recorded ones (scores of one run must come
    from one engine). An explicit different choice is refused in one line; "auto" and None take the record."""
    if info.backend is None:  # the workers never started: nothing to keep
        return backend, tensor_parallel
    if backend not in ("auto", info.backend):
        raise UserError("--backend", f"this run scored with {info.backend} (on {info.device}), not {backend}",
                        f"drop --backend or pass --backend {info.backend}; start a new run to change it")
    if tensor_parallel is not None and tensor_parallel != info.tensor_parallel:
        raise UserError("--tensor-parallel", f"this run scored with tensor parallel {info.tensor_parallel}, "
                        f"not {tensor_parallel}", "drop --tensor-parallel; start a new run to change it")
    return info.backend, info.tensor_parallel if info.backend == "vllm" else None


def new_info(name: str, space_path: Path, seed: int, workers: int, n_layers: int) -> RunInfo:
    from evomerge import __version__

    return RunInfo(name, str(space_path.resolve()), space_path.read_text(), seed, workers, n_layers, time.time(),
                   __version__)


class RunLock:
    """An exclusive lock on a run directory (flock on RUN/lock), so two processes never drive one run.

    The lock dies with its process (a kill -9 releases it), so a crashed run can always be resumed.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "lock"
        self._fh = None

    @staticmethod
    def owner(run_dir: Path) -> str | None:
        """Who holds the run's lock now ("pid N on HOST"), or None when nobody does."""
        import fcntl

        path = Path(run_dir) / "lock"
        if not path.is_file():
            return None
        with open(path) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return fh.read().strip() or "another process"
            return None  # closing the file releases the probe's lock

    def __enter__(self) -> "RunLock":
        import fcntl
        import socket

        try:
            fh = open(self.path, "a+")
        except OSError as e:
            raise UserError(str(self.path.parent), f"cannot open the run's lock file ({e.strerror})",
                            "the run directory must be writable") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            fh.close()
            raise UserError(str(self.path.parent), f"the run is in use by {owner}",
                            "wait for it to finish, or stop that process first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the flock
            self._fh = None
