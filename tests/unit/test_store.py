"""The state store (store/db.py) under processes that use it at the same moment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

OPEN = """
import os, sys
from localaistack.store.db import Store
print("ready", flush=True)
os.read(0, 1)  # every opener waits for its byte: they open the store together
Store(sys.argv[1]).close()
"""


def test_processes_that_open_a_new_state_database_at_once_all_get_it(tmp_path: Path) -> None:
    """Two `las` commands on a new home at once: both open the new database. (Before,
    SQLite refused all but one switch to WAL mode at once: "database is locked".)"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for attempt in range(12):
        db = tmp_path / f"state-{attempt}.db"
        go_r, go_w = os.pipe()
        pipe = subprocess.PIPE
        argv = [sys.executable, "-c", OPEN, str(db)]
        openers = [
            subprocess.Popen(argv, stdin=go_r, stdout=pipe, stderr=pipe, env=env) for _ in range(4)
        ]
        os.close(go_r)
        try:
            for p in openers:
                assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        finally:
            os.write(go_w, b"x" * len(openers))
            os.close(go_w)
        failed = [p.communicate(timeout=60)[1].decode()[-300:] for p in openers]
        assert [p.returncode for p in openers] == [0] * 4, (attempt, failed)
