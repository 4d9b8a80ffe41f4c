"""`evomerge dashboard RUN`: optuna-dashboard on a run's study, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

from evomerge.errors import UserError


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Block serving the dashboard (Ctrl-C stops it)."""
    from evomerge.ledger import storage_url
    from evomerge.rundir import read_run

    read_run(run_dir)  # a clear error when RUN is not a run directory
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise UserError("optuna-dashboard", "not installed", "pip install 'evomerge[dashboard]'") from None
    if host not in ("127.0.0.1", "localhost", "::1"):  # the study names models, paths and scores; say who can read it
        print(f"warning: serving on {host}: anyone who can reach this machine on port {port} can read the study",
              file=sys.stderr)
    print(f"dashboard for {run_dir} on http://{host}:{port}/  (Ctrl-C stops it)")
    run_server(storage_url(Path(run_dir)), host=host, port=port)


_NOTE_WARNED = False


def save_study_note(study, body: str) -> bool:
    """Write `body` (markdown) as the study's note, which optuna-dashboard shows on the study's page. Without
    optuna-dashboard (the `dashboard` extra) nothing is written and one line says so, once per process."""
    global _NOTE_WARNED
    try:
        from optuna_dashboard import save_note
    except ImportError:
        if not _NOTE_WARNED:
            print("note: optuna-dashboard is not installed, so the study has no holdout note "
                  "(pip install 'evomerge[dashboard]')", file=sys.stderr)
            _NOTE_WARNED = True
        return False
    save_note(study, body)
    return True
