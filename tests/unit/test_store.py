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
    for round_ in range(12):
        db = tmp_path / f"state-{round_}.db"
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
        assert [p.returncode for p in openers] == [0] * 4, (round_, failed)


# --- damaged, lost and unwritable databases (issue #17, items 6 and 7) ---------------------


def test_a_new_database_is_complete_when_it_appears(tmp_path: Path) -> None:
    from localaistack.store.db import MIGRATIONS, Store

    db = tmp_path / "state.db"
    s = Store(db)
    assert s.created and db.stat().st_size > 0
    assert (db.stat().st_mode & 0o777) == 0o600
    assert s._schema_version() == len(MIGRATIONS)
    s.close()
    assert not Store(db).created
    assert sorted(p.name for p in tmp_path.iterdir() if ".new-" in p.name) == []


def test_an_empty_database_is_refused_not_reinitialised(tmp_path: Path) -> None:
    import pytest

    from localaistack.errors import StoreError
    from localaistack.store.db import Store

    db = tmp_path / "state.db"
    db.touch(mode=0o600)
    with pytest.raises(StoreError) as err:
        Store(db)
    assert err.value.cause == "empty" and err.value.exit_code == 5
    assert "empty (0 bytes)" in err.value.message
    assert err.value.hint is not None and f"mv {db} {db}.corrupt" in err.value.hint
    assert db.stat().st_size == 0


def test_a_garbage_database_says_corrupt_not_permissions(tmp_path: Path) -> None:
    import pytest

    from localaistack.errors import StoreError
    from localaistack.store.db import Store

    db = tmp_path / "state.db"
    db.write_bytes(b"not a database at all " * 500)
    with pytest.raises(StoreError) as err:
        Store(db)
    assert err.value.cause == "corrupt"
    assert "corrupt" in err.value.message
    assert err.value.hint is not None and "mv " in err.value.hint
    assert "permission" not in (err.value.hint + err.value.message).lower()


def test_a_removed_databases_wal_is_not_replayed_into_a_new_one(tmp_path: Path) -> None:
    from localaistack.store.db import Store, insert_instance

    db = tmp_path / "state.db"
    keep = Store(db)  # holds the WAL open, as a supervisor would
    plan = '{"ports": [], "gpus": [], "mode": "native"}'
    with keep.transaction() as c:
        insert_instance(c, "old", "m", "native", plan)
    db.unlink()  # the records are lost; its -wal and -shm stay
    fresh = Store(db)
    assert fresh.created and fresh.instances() == []
    fresh.close()
    keep.close()


def test_store_errors_name_their_cause(tmp_path: Path) -> None:
    import errno
    import sqlite3

    from localaistack.store.db import store_error

    path = str(tmp_path / "state.db")

    def sqlite_error(code: int, text: str) -> sqlite3.Error:
        exc = sqlite3.OperationalError(text)
        exc.sqlite_errorcode = code  # type: ignore[attr-defined]
        exc.sqlite_errorname = "X"  # type: ignore[attr-defined]
        return exc

    full = store_error(sqlite_error(13, "database or disk is full"), path)
    assert full.cause == "full" and full.exit_code == 5
    assert full.message == f"disk full (ENOSPC) writing {path}: free space and retry"
    assert store_error(OSError(errno.ENOSPC, "No space left on device"), path).cause == "full"
    assert store_error(OSError(errno.EROFS, "Read-only file system"), path).cause == "readonly"
    assert store_error(OSError(errno.EACCES, "Permission denied"), path).cause == "permission"
    assert store_error(sqlite_error(26, "file is not a database"), path).cause == "corrupt"
    assert (
        store_error(sqlite_error(11, "database disk image is malformed"), path).cause == "corrupt"
    )
    assert store_error(sqlite_error(5, "database is locked"), path).cause == "busy"


def test_the_store_hands_out_typed_records_and_store_errors(tmp_path: Path) -> None:
    import json
    import sqlite3

    import pytest

    from localaistack.errors import StoreError
    from localaistack.store.db import (
        Store,
        create_run,
        get_run,
        insert_instance,
        run_state,
        set_run_state,
        translate,
    )
    from localaistack.store.records import Event, Instance, InstanceRun, Run, Transition

    plan = json.dumps({"ports": [], "gpus": [], "resources": {}})
    store = Store(tmp_path / "state.db")
    with store.transaction() as tx:
        assert insert_instance(tx, "one", "mod", "native", plan)
        assert insert_instance(tx, "two", "mod", "native", plan)
        create_run(
            tx,
            run_id="r1",
            instance="one",
            backend="native",
            boot_id="b",
            log_path="/l",
            reason="requested",
        )
        set_run_state(tx, "r1", "running", "started", pid=42)
        assert run_state(tx, "r1") == "running" and run_state(tx, "nope") is None
        assert get_run(tx, "r1") == store.run("r1")
    inst = store.instance("one")
    assert isinstance(inst, Instance) and inst.current_run == "r1" and inst.plan == plan
    run = store.run("r1")
    assert isinstance(run, Run) and (run.state, run.pid, run.attempt) == ("running", 42, 1)
    assert store.runs_of("one") == [run] and store.active_runs() == [run]
    assert [(i.name, r) for i, r in store.instances_with_runs()] == [("one", run), ("two", None)]
    assert all(isinstance(x, InstanceRun) for x in store.instances_with_runs())
    assert [(t.from_state, t.to_state) for t in store.transitions_of("r1")] == [
        (None, "starting"),
        ("starting", "running"),
    ]
    assert all(isinstance(t, Transition) for t in store.transitions_of("r1"))
    events = store.events()
    assert all(isinstance(e, Event) for e in events) and events[-1].type == "running"
    assert store.backends_used() == {"native"}
    # A SQLite error in a transaction, or met outside the store, leaves as a StoreError.
    with pytest.raises(StoreError), store.transaction() as tx:
        raise sqlite3.OperationalError("disk I/O error")
    assert translate(sqlite3.DatabaseError("x"), tmp_path / "state.db") is not None
    assert translate(ValueError("x"), tmp_path / "state.db") is None
    store.close()
