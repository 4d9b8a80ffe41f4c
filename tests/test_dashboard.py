"""`evomerge dashboard` serves the run's study on 127.0.0.1 by default."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from evomerge.ledger import Ledger
from evomerge.rundir import create_run, new_info
from evomerge.space import load_space

from conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_binds_loopback(tmp_path):
    space_path = REPO / "search_spaces" / "quickstart.yaml"
    run = tmp_path / "d"
    create_run(run, new_info("d", Path(space_path), 0, 1, 4))
    Ledger.open(run, "d", load_space(space_path).expand(4), create=True)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "evomerge", "dashboard", str(run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, status = time.time() + 60, None
        while time.time() < deadline and status is None:
            time.sleep(0.5)
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status
            except OSError:
                continue
        assert status == 200
        out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if _has_ss() else ""
        if out:
            listening = [line for line in out.splitlines() if f":{port} " in line]
            assert listening and all("127.0.0.1:" in line for line in listening), listening
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _has_ss() -> bool:
    from shutil import which

    return which("ss") is not None
