"""The state store: SQLite in WAL mode at ``$LAS_HOME/state.db``.

Standard library only: the supervisor process imports this module and must start fast.

Tables (schema version in ``meta``; migrations in ``MIGRATIONS``, applied in order):

* ``instances``: one row per named instance, with the plan it runs (JSON, secret values
  masked: they live in ``$LAS_HOME/secrets/``, see store/secrets.py) and its current run;
* ``runs``: one row per run (``attempt``: its number among the instance's runs): state,
  reason, exit, workload and supervisor identity (pid + process start time + boot id,
  never pid alone), log path;
* ``transitions``: every state change of a run, with time and reason;
* ``events``: the append-only event log that ``las events`` shows.

Every write is a short transaction. ``BEGIN IMMEDIATE`` takes the write lock up front, so
read-check-write sequences (name taken? port promised?) are atomic across processes.

All SQL of las is here: the ``Store``'s methods read, the functions below take the open
``Transaction`` and read or write inside it. What they return are typed records
(store/records.py), never SQLite rows; a SQLite error leaves as a ``StoreError`` that names
its cause (``store_error``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pathlib costs the long-lived supervisor memory
    from pathlib import Path

from localaistack.errors import StoreError
from localaistack.store.records import (
    EVENT_COLUMNS,
    INSTANCE_COLUMNS,
    RUN_COLUMNS,
    TRANSITION_COLUMNS,
    Event,
    Instance,
    InstanceRun,
    Reservation,
    Run,
    Transition,
)

# The open write transaction that ``Store.transaction`` yields: callers pass it to the
# write functions below, and run no SQL of their own.
Transaction = sqlite3.Connection

ACTIVE_STATES = ("starting", "running", "stopping")
FINAL_STATES = ("stopped", "failed")

MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE instances (
        name        TEXT PRIMARY KEY,
        module      TEXT NOT NULL,
        mode        TEXT NOT NULL,
        plan        TEXT NOT NULL,
        created_at  REAL NOT NULL,
        current_run TEXT
    );
    CREATE TABLE runs (
        run_id        TEXT PRIMARY KEY,
        instance      TEXT NOT NULL,
        attempt       INTEGER NOT NULL,
        backend       TEXT NOT NULL,
        state         TEXT NOT NULL,
        reason        TEXT,
        exit_code     INTEGER,
        signal        TEXT,
        pid           INTEGER,
        pid_start     INTEGER,
        sup_pid       INTEGER,
        sup_start     INTEGER,
        owner_pid     INTEGER,
        owner_start   INTEGER,
        boot_id       TEXT NOT NULL,
        handle        TEXT,
        log_path      TEXT NOT NULL,
        stop_requested REAL,
        stop_timeout  REAL,
        lines_dropped INTEGER NOT NULL DEFAULT 0,
        health        TEXT NOT NULL DEFAULT 'unknown',
        created_at    REAL NOT NULL,
        started_at    REAL,
        finished_at   REAL
    );
    CREATE INDEX runs_instance ON runs(instance, attempt);
    CREATE INDEX runs_active ON runs(state) WHERE state IN ('starting','running','stopping');
    CREATE TABLE transitions (
        id         INTEGER PRIMARY KEY,
        run_id     TEXT NOT NULL,
        from_state TEXT,
        to_state   TEXT NOT NULL,
        at         REAL NOT NULL,
        reason     TEXT
    );
    CREATE TABLE events (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        at       REAL NOT NULL,
        instance TEXT,
        run_id   TEXT,
        type     TEXT NOT NULL,
        message  TEXT NOT NULL,
        data     TEXT
    );
    """,
    # 2: health probes
    """
    ALTER TABLE runs ADD COLUMN probes TEXT;
    ALTER TABLE runs ADD COLUMN healthy_at REAL;
    """,
    # 3: admission holds (the reservation between admission and the run's creation)
    """
    ALTER TABLE instances ADD COLUMN admitted_at REAL;
    ALTER TABLE instances ADD COLUMN admitted_over TEXT;
    """,
    # 4: who admitted (a process killed between admission and its run: found, and undone)
    """
    ALTER TABLE instances ADD COLUMN admitted_pid INTEGER;
    ALTER TABLE instances ADD COLUMN admitted_pid_start INTEGER;
    """,
)


# SQLite's primary result codes (the low byte of ``sqlite_errorcode``) that name a cause.
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_AUTH, _SQLITE_NOTADB = 23, 26


def no_space(path: str) -> bool:
    """Whether the filesystem holding ``path`` has no block (or no inode) left for us."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
    except OSError:
        return False
    return st.f_bavail == 0 or (st.f_files > 0 and st.f_favail == 0)


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(os.path.dirname(os.path.abspath(path)) or ".").f_flag & os.ST_RDONLY)
    except OSError:
        return False


def store_error(exc: BaseException, path: str, doing: str = "writing") -> StoreError:
    """A clear ``StoreError`` naming the cause of a SQLite (or OS) error on ``path``.

    ``doing`` is "writing", "reading" or "opening". Disk full, a read-only filesystem,
    permissions and corruption each get their own message and hint; the cause is checked
    on the filesystem too (SQLite reports ENOSPC on its shared-memory file as an I/O
    error, and a read-only file as "readonly" whatever the reason).
    """
    if isinstance(exc, StoreError):
        return exc
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    err = getattr(exc, "errno", None)
    home = os.path.dirname(os.path.abspath(path))
    detail = f"{exc} ({name})" if primary is not None else str(exc)
    if (
        primary == _SQLITE_FULL
        or err in (errno.ENOSPC, errno.EDQUOT)
        or (primary in (_SQLITE_IOERR, _SQLITE_CANTOPEN) and no_space(path))
    ):
        return StoreError(
            f"disk full (ENOSPC) {doing} {path}: free space and retry",
            hint=f"free space on the filesystem that holds {home}; las records what it "
            "could not while the disk was full once there is room again",
            cause="full",
        )
    if err == errno.EROFS or (
        primary in (_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CANTOPEN) and _read_only_fs(path)
    ):
        return StoreError(
            f"read-only filesystem: cannot write {path} ({detail})",
            hint=f"remount the filesystem of {home} read-write, or set LAS_HOME elsewhere",
            cause="readonly",
        )
    if (
        err in (errno.EACCES, errno.EPERM)
        or primary in (_SQLITE_PERM, _SQLITE_AUTH)
        or (
            primary in (_SQLITE_READONLY, _SQLITE_CANTOPEN)
            and not os.access(path if os.path.exists(path) else home, os.R_OK | os.W_OK)
        )
    ):
        return StoreError(
            f"permission denied {doing} {path} ({detail})",
            hint=f"make {home} and its files yours (mode 0700/0600), or set LAS_HOME elsewhere",
            cause="permission",
        )
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreError(
            f"state database {path} is corrupt: {detail}",
            hint=corrupt_hint(path),
            cause="corrupt",
        )
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreError(
            f"state database {path} is busy: {detail}",
            hint="retry; if it persists, check for a hung las process",
            cause="busy",
        )
    if primary == _SQLITE_IOERR or isinstance(exc, OSError):
        return StoreError(
            f"I/O error {doing} {path}: {detail}",
            hint=f"check the disk and the filesystem that holds {home}",
            cause="io",
        )
    return StoreError(
        f"state database {path} is unusable ({doing}): {detail}",
        hint=f"check {home}: its permissions, free space and the file itself",
    )


def corrupt_hint(path: str) -> str:
    return (
        f"move it aside (`mv {path} {path}.corrupt`); the next las command then starts a "
        "fresh state, and `las ps --all` still lists workloads of this home that run on "
        "(found by their cgroups and container labels), which `las stop ?RUN_ID` ends"
    )


def translate(exc: BaseException, path: str | Path, doing: str = "reading") -> StoreError | None:
    """The ``StoreError`` for a SQLite error that escaped the store (None: not one)."""
    if isinstance(exc, StoreError):
        return exc
    if not isinstance(exc, sqlite3.Error):
        return None
    return store_error(exc, str(path), doing)


def _query(c: sqlite3.Connection, sql: str, params: Any = ()) -> list[sqlite3.Row]:
    """All rows of a read, errors while fetching included as a ``StoreError``."""
    try:
        return c.execute(sql, params).fetchall()
    except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
        raise
    except sqlite3.DatabaseError as exc:
        raise store_error(exc, getattr(c, "db_path", ""), "reading") from exc


def _query_one(c: sqlite3.Connection, sql: str, params: Any = ()) -> sqlite3.Row | None:
    rows = _query(c, sql, params)
    return rows[0] if rows else None


class _Conn(sqlite3.Connection):
    """A connection whose errors reach callers as a ``StoreError`` naming the cause.

    Constraint violations stay ``sqlite3.IntegrityError`` (the writes below test for
    them), and misuse stays ``sqlite3.ProgrammingError``; ``Store.transaction`` turns
    either into a ``StoreError`` if it reaches the caller.
    """

    db_path = ""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise  # a constraint callers test for, or a bug of ours: not the store's state
        except sqlite3.DatabaseError as exc:
            head = sql.lstrip()[:6].upper()
            doing = "reading" if head in ("SELECT", "PRAGMA") else "writing"
            raise store_error(exc, self.db_path, doing) from exc


def _connect(path: str | Path, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, factory=_Conn)
    conn.db_path = str(path)
    conn.row_factory = sqlite3.Row
    _use_wal(conn, timeout)
    # FULL: a committed state change survives a power loss, not only a crash of las.
    sqlite3.Connection.execute(conn, "PRAGMA synchronous=FULL")
    sqlite3.Connection.execute(conn, f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return conn


def _use_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the database in WAL mode (the file keeps it: only a new database changes).

    Processes that open a new database at the same moment all try to change its mode,
    and SQLite answers all but one "database is locked" at once, without waiting (each
    holds the read lock that the first must see released). Those try again, for up to
    ``timeout`` seconds: by then the first has changed it. Two `las` commands on a new
    home at once failed so before (tests/unit/test_store.py).
    """
    deadline = time.monotonic() + timeout
    run = sqlite3.Connection.execute  # raw errors: "locked" is retried here
    while True:
        try:
            if run(conn, "PRAGMA journal_mode").fetchone()[0] != "wal":
                run(conn, "PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _apply_migrations(c: sqlite3.Connection, path: str) -> None:
    """Bring the schema up to date (inside a write transaction)."""
    c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise StoreError(
            f"state database {path} has schema version {version}; this las "
            f"knows up to {len(MIGRATIONS)}",
            hint="upgrade las; do not use an older las on newer state",
        )
    for i in range(version, len(MIGRATIONS)):
        for stmt in MIGRATIONS[i].split(";"):
            if stmt.strip():
                c.execute(stmt)
    c.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(len(MIGRATIONS)),))


def _create_database(path: str, timeout: float) -> bool:
    """Make a new, complete state database at ``path``, atomically.

    It is built under a temporary name and linked into place, so that no process ever
    sees a half-made (0-byte) ``state.db``: a 0-byte one is refused as damaged (``Store``).
    Returns False when another process made one first (that one is used).
    """
    tmp = f"{path}.new-{os.getpid()}-{os.urandom(3).hex()}"
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        conn = _connect(tmp, timeout)
        try:
            conn.execute("BEGIN IMMEDIATE")
            _apply_migrations(conn, path)
            conn.execute("COMMIT")
        finally:
            conn.close()  # the last connection: its WAL is checkpointed into the file
        # A -wal or -shm without its database is what a removed one left (a process may
        # still hold it open): SQLite would replay it into the new file. Unlinked, the new
        # database gets its own; a holder keeps writing to the old, harmlessly. Under a
        # lock on the directory: no creator may unlink the -wal of one that linked first.
        import fcntl

        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX)
            if os.path.exists(path):
                return False
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path + suffix)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:
            os.close(dir_fd)  # releases the lock
    except OSError as exc:
        raise store_error(exc, path, "creating") from exc
    finally:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(tmp + suffix)


class Store:
    """A connection to the state database. Not shared across threads or processes.

    ``created`` is True when this ``Store`` made the database (a first use of the home).

    Raises:
        StoreError: the database cannot be opened: its cause named (disk full, read-only
            filesystem, permission, corrupt, or ``empty``: a 0-byte file is never taken
            for a new database, since runs recorded in the lost one may still be active).
    """

    def __init__(self, path: str | Path, *, timeout: float = 10.0) -> None:
        self.path = path
        self.created = False
        spath = str(path)
        try:
            size: int | None = os.stat(spath).st_size
        except FileNotFoundError:
            size = None
        except OSError as exc:
            raise store_error(exc, spath, "opening") from exc
        if size is None:
            self.created = _create_database(spath, timeout)
        elif size == 0:
            raise StoreError(
                f"state database {path} is empty (0 bytes): its records are lost, and las "
                "will not silently start a fresh one while workloads it started may run on",
                hint=corrupt_hint(spath),
                cause="empty",
            )
        # Set when the database can be read but not written (see _open_unwritable): every
        # write transaction raises it, reads go on.
        self.unwritable: StoreError | None = None
        try:
            self.conn = _connect(path, timeout)
            self._migrate()
        except (sqlite3.Error, StoreError) as exc:
            err = store_error(exc, spath, "opening")
            if self.created or err.cause not in ("full", "readonly"):
                raise err from exc
            self._open_unwritable(spath, err)

    def _open_unwritable(self, path: str, err: StoreError) -> None:
        """Open a database that cannot be written (a full disk, a read-only filesystem)
        for reading, so that `las ps`, `inspect` and `logs` still work.

        Opening a WAL database needs its shared-memory file, which SQLite creates when no
        other connection holds it (and sizes by writing: ENOSPC on a full disk). With none,
        no -wal file is left either (the last connection checkpointed it into the main
        file): the main file alone is the whole state, read as immutable.
        """
        from urllib.parse import quote

        if os.path.exists(path + "-wal") and os.path.getsize(path + "-wal") > 0:
            raise err  # the newest state is in the WAL: an immutable read would miss it
        try:
            self.conn = sqlite3.connect(
                f"file:{quote(path)}?immutable=1", uri=True, isolation_level=None, factory=_Conn
            )
            self.conn.db_path = path
            self.conn.row_factory = sqlite3.Row
            if self._schema_version() != len(MIGRATIONS):
                raise err
        except sqlite3.Error as exc:
            raise err from exc
        self.unwritable = err

    def __repr__(self) -> str:
        return f"<Store {self.path}>"

    def close(self) -> None:
        self.conn.close()

    def _schema_version(self) -> int | None:
        """The stored schema version without taking the write lock (None: no meta table)."""
        try:
            row = sqlite3.Connection.execute(
                self.conn, "SELECT value FROM meta WHERE key='schema_version'"
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise store_error(exc, str(self.path), "reading") from exc
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        # Every las command opens the store: the common case (up to date) must not write.
        if self._schema_version() == len(MIGRATIONS):
            return
        with self.transaction() as c:
            _apply_migrations(c, str(self.path))
        for suffix in ("-wal", "-shm"):
            side = f"{self.path}{suffix}"
            if os.path.exists(side):
                os.chmod(side, 0o600)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error).

        A SQLite error inside it reaches the caller as a ``StoreError``.
        """
        if self.unwritable is not None:
            raise self.unwritable
        self.conn.execute("BEGIN IMMEDIATE")  # errors: StoreError naming the cause (_Conn)
        try:
            yield self.conn
        except BaseException as exc:
            # SQLite may have rolled back itself already (a full disk, an I/O error).
            with contextlib.suppress(sqlite3.Error, StoreError):
                self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise store_error(exc, str(self.path)) from exc
            raise
        try:
            self.conn.execute("COMMIT")
        except StoreError:
            with contextlib.suppress(sqlite3.Error, StoreError):
                self.conn.execute("ROLLBACK")
            raise

    @contextmanager
    def waiting_at_most(self, seconds: float) -> Iterator[None]:
        """Inside the block, wait at most ``seconds`` for another process's write lock
        (instead of the ``timeout`` the store was opened with)."""
        busy = int(_query(self.conn, "PRAGMA busy_timeout")[0][0])
        try:
            self.conn.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")
            yield
        finally:
            if self.conn.in_transaction:  # a failed COMMIT leaves it open
                with contextlib.suppress(sqlite3.Error, StoreError):
                    self.conn.execute("ROLLBACK")
            with contextlib.suppress(sqlite3.Error, StoreError):
                self.conn.execute(f"PRAGMA busy_timeout={busy}")

    # --- reads -------------------------------------------------------------------------

    def instance(self, name: str) -> Instance | None:
        return get_instance(self.conn, name)

    def instances(self) -> list[Instance]:
        sql = f"SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY name"
        return [Instance._make(r) for r in _query(self.conn, sql)]

    def instances_with_runs(self) -> list[InstanceRun]:
        """Each instance with its current run (``ps``'s single query)."""
        cols = ", ".join([f"i.{c}" for c in Instance._fields] + [f"r.{c}" for c in Run._fields])
        rows = _query(
            self.conn,
            f"SELECT {cols} FROM instances i LEFT JOIN runs r ON r.run_id = i.current_run "
            "ORDER BY i.name",
        )
        n = len(Instance._fields)
        return [
            InstanceRun(Instance._make(r[:n]), None if r[n] is None else Run._make(r[n:]))
            for r in rows
        ]

    def run(self, run_id: str) -> Run | None:
        return get_run(self.conn, run_id)

    def runs_of(self, instance: str) -> list[Run]:
        sql = f"SELECT {RUN_COLUMNS} FROM runs WHERE instance=? ORDER BY attempt"
        return [Run._make(r) for r in _query(self.conn, sql, (instance,))]

    def active_runs(self) -> list[Run]:
        sql = f"SELECT {RUN_COLUMNS} FROM runs WHERE state IN ('starting','running','stopping')"
        return [Run._make(r) for r in _query(self.conn, sql)]

    def backends_used(self) -> set[str]:
        """The backends of this home's runs, past and present."""
        return {str(r[0]) for r in _query(self.conn, "SELECT DISTINCT backend FROM runs")}

    def transitions_of(self, run_id: str) -> list[Transition]:
        sql = f"SELECT {TRANSITION_COLUMNS} FROM transitions WHERE run_id=? ORDER BY id"
        return [Transition._make(r) for r in _query(self.conn, sql, (run_id,))]

    def events(self, after_id: int = 0, limit: int | None = None) -> list[Event]:
        """Events after ``after_id``, oldest first; with ``limit``, only the newest ones."""
        if limit is not None:
            rows = _query(
                self.conn,
                f"SELECT {EVENT_COLUMNS} FROM (SELECT * FROM events WHERE id > ? "
                "ORDER BY id DESC LIMIT ?) ORDER BY id",
                (after_id, int(limit)),
            )
        else:
            sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id"
            rows = _query(self.conn, sql, (after_id,))
        return [Event._make(r) for r in rows]

    def managed_processes(self) -> tuple[set[int], set[str]]:
        """``managed_processes`` outside a transaction."""
        return managed_processes(self.conn)

    def reservations(self, *, exclude: str | None = None) -> list[Reservation]:
        """``reservations`` outside a transaction."""
        return reservations(self.conn, exclude=exclude)

    def pending_admissions(self) -> list[tuple[str, bool, int, int | None]]:
        """``pending_admissions`` outside a transaction."""
        return pending_admissions(self.conn)


# --- reads inside a transaction (the write lock held: what they return stays so) -------


def get_instance(c: Transaction, name: str) -> Instance | None:
    row = _query_one(c, f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE name=?", (name,))
    return None if row is None else Instance._make(row)


def get_run(c: Transaction, run_id: str) -> Run | None:
    row = _query_one(c, f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id=?", (run_id,))
    return None if row is None else Run._make(row)


def run_state(c: Transaction, run_id: str) -> str | None:
    """The run's state (None: no such run)."""
    row = _query_one(c, "SELECT state FROM runs WHERE run_id=?", (run_id,))
    return None if row is None else str(row[0])


def current_run_state(c: Transaction, name: str) -> str | None:
    """The state of the instance's current run (None: no such instance, or no run)."""
    row = _query_one(
        c,
        "SELECT r.state FROM instances i JOIN runs r ON r.run_id = i.current_run WHERE i.name=?",
        (name,),
    )
    return None if row is None else str(row[0])


def instance_exists(c: Transaction, name: str) -> bool:
    return _query_one(c, "SELECT 1 FROM instances WHERE name=?", (name,)) is not None


def get_meta(c: Transaction, key: str) -> str | None:
    """A value las keeps about the home itself in ``meta`` (None: never set), such as
    ``service_boot_id``: the boot id under which `las serve` last started (service/boot.py)."""
    row = _query_one(c, "SELECT value FROM meta WHERE key=?", (key,))
    return None if row is None else str(row[0])


# --- writes (each called inside a transaction) -----------------------------------------


def add_event(
    c: Transaction,
    type_: str,
    message: str,
    *,
    instance: str | None = None,
    run_id: str | None = None,
    data: dict[str, Any] | None = None,
    at: float | None = None,
) -> None:
    c.execute(
        "INSERT INTO events (at, instance, run_id, type, message, data) VALUES (?,?,?,?,?,?)",
        (at or time.time(), instance, run_id, type_, message, json.dumps(data) if data else None),
    )


def set_run_state(
    c: Transaction,
    run_id: str,
    state: str,
    reason: str | None,
    *,
    at: float | None = None,
    **fields: Any,
) -> str | None:
    """Move a run to ``state``, record the transition and an event; returns the old state.

    A run already in a final state is never moved again (the first recorded end wins).
    """
    row = c.execute("SELECT state, instance FROM runs WHERE run_id=?", (run_id,)).fetchone()
    if row is None:
        return None
    old = str(row[0])
    if old in FINAL_STATES:
        return old
    now = at or time.time()
    cols = {"state": state, "reason": reason, **fields}
    if state in FINAL_STATES:
        cols.setdefault("finished_at", now)
    assignments = ", ".join(f"{k}=?" for k in cols)
    c.execute(f"UPDATE runs SET {assignments} WHERE run_id=?", (*cols.values(), run_id))
    if old != state:
        c.execute(
            "INSERT INTO transitions (run_id, from_state, to_state, at, reason) VALUES (?,?,?,?,?)",
            (run_id, old, state, now, reason),
        )
        add_event(c, state, reason or state, instance=str(row[1]), run_id=run_id, at=now)
    return old


def set_meta(c: Transaction, key: str, value: str) -> None:
    """Set a ``meta`` value (``get_meta``); the schema version is the migrations' alone."""
    if key == "schema_version":
        raise ValueError("the schema version is set by the migrations only")
    c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _home_of(c: Transaction) -> str:
    """``$LAS_HOME``: the directory of the connection's database file."""
    path = next(str(row[2]) for row in c.execute("PRAGMA database_list") if row[1] == "main")
    return os.path.dirname(path)


def insert_instance(c: Transaction, name: str, module: str, mode: str, plan: str) -> bool:
    """Create an instance; False when the name is already taken (nothing is changed).

    The plan is stored with its secret values masked; the values go to the instance's
    0600 secrets file (store/secrets.py), which only its supervisor reads.
    """
    from localaistack.store import secrets

    stored, hidden = secrets.split(json.loads(plan))
    try:
        c.execute(
            "INSERT INTO instances (name, module, mode, plan, created_at) VALUES (?,?,?,?,?)",
            (name, module, mode, json.dumps(stored) if hidden else plan, time.time()),
        )
    except sqlite3.IntegrityError:
        return False
    # Inside the write transaction nobody else creates an instance: a secrets file without
    # a row is left over from a creation that was rolled back.
    home = _home_of(c)
    secrets.sweep(home, [r[0] for r in c.execute("SELECT name FROM instances")])
    if hidden:
        secrets.write(home, name, hidden)
    else:
        secrets.remove(home, name)  # an earlier instance of that name's, if any
    add_event(c, "created", f"instance created from module {module} ({mode})", instance=name)
    return True


def promised_ports(c: Transaction, exclude: str | None = None) -> set[tuple[str, int]]:
    """(host, port) pairs held by instances whose current run is active."""
    rows = c.execute(
        """SELECT i.name, i.plan FROM instances i JOIN runs r ON r.run_id = i.current_run
           WHERE r.state IN ('starting','running','stopping')"""
    ).fetchall()
    out = set()
    for row in rows:
        if row[0] == exclude:
            continue
        for p in json.loads(row[1])["ports"]:
            out.add((p["host_ip"], int(p["host_port"])))
    return out


def create_run(
    c: Transaction,
    *,
    run_id: str,
    instance: str,
    backend: str,
    boot_id: str,
    log_path: str,
    reason: str,
    owner_pid: int | None = None,
    owner_start: int | None = None,
    sup_pid: int | None = None,
    sup_start: int | None = None,
) -> int:
    """Insert the next run of ``instance`` as ``starting`` and make it current.

    Returns its number among the instance's runs (the ``attempt`` column).
    """
    now = time.time()
    attempt = int(
        c.execute(
            "SELECT COALESCE(MAX(attempt), 0) + 1 FROM runs WHERE instance=?", (instance,)
        ).fetchone()[0]
    )
    c.execute(
        """INSERT INTO runs (run_id, instance, attempt, backend, state, reason, boot_id,
           log_path, owner_pid, owner_start, sup_pid, sup_start, created_at)
           VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)""",
        (
            run_id,
            instance,
            attempt,
            backend,
            "starting",
            reason,
            boot_id,
            log_path,
            owner_pid,
            owner_start,
            sup_pid,
            sup_start,
            now,
        ),
    )
    c.execute("UPDATE instances SET current_run=? WHERE name=?", (run_id, instance))
    c.execute(
        "INSERT INTO transitions (run_id, from_state, to_state, at, reason) VALUES (?,?,?,?,?)",
        (run_id, None, "starting", now, reason),
    )
    add_event(
        c,
        "starting",
        f"run {run_id} (attempt {attempt}): {reason}",
        instance=instance,
        run_id=run_id,
        at=now,
    )
    return attempt


def delete_instance(c: Transaction, name: str) -> None:
    """Forget an instance and all its runs."""
    c.execute("DELETE FROM runs WHERE instance=?", (name,))
    c.execute("DELETE FROM instances WHERE name=?", (name,))


def claim_supervisor(
    c: Transaction, run_id: str, pid: int, start: int | None, *, was: tuple[Any, Any]
) -> bool:
    """Record (pid, start) as the run's supervisor if it still is ``was`` (the one read
    before): False when another process claimed the run meanwhile."""
    cur = c.execute(
        "UPDATE runs SET sup_pid=?, sup_start=? WHERE run_id=? AND sup_pid IS ? AND sup_start IS ?",
        (pid, start, run_id, was[0], was[1]),
    )
    return bool(cur.rowcount)


def request_stop(c: Transaction, run_id: str, timeout: float, at: float) -> None:
    """Record a stop request (at ``at``, with ``timeout`` seconds of grace) unless an
    earlier deadline is recorded already."""
    c.execute(
        "UPDATE runs SET stop_requested=?, stop_timeout=? WHERE run_id=? AND ("
        "stop_requested IS NULL OR stop_timeout IS NULL "
        "OR stop_requested + stop_timeout > ?)",
        (at, timeout, run_id, at + timeout),
    )


def set_run_health(
    c: Transaction, run_id: str, health: str, probes: str, *, healthy_at: float | None = None
) -> None:
    """The run's health and its last probes (JSON); ``healthy_at``: it became healthy."""
    c.execute("UPDATE runs SET health=?, probes=? WHERE run_id=?", (health, probes, run_id))
    if healthy_at is not None:
        c.execute("UPDATE runs SET healthy_at=? WHERE run_id=?", (healthy_at, run_id))


def set_run_reason(c: Transaction, run_id: str, reason: str) -> None:
    c.execute("UPDATE runs SET reason=? WHERE run_id=?", (reason, run_id))


# The run handle's envelope (runs.handle): {"backend", "version", "state"}; the state is
# the backend's own (runtime/backend.py). Releases before the envelope stored the state
# alone: read as version 0 and converted (the state was the same dict).
HANDLE_VERSION = 1


def encode_handle(backend: str, version: int, state: dict[str, Any]) -> str:
    return json.dumps({"backend": backend, "version": version, "state": state})


def decode_handle(text: str, backend: str) -> tuple[str, int, dict[str, Any]]:
    """(backend, version, state) of a stored handle; ``backend``: the run's, which an
    unversioned handle (version 0, converted) belongs to. ValueError: not a handle."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"a handle is a JSON object, not {type(data).__name__}")
    if "version" not in data:  # unversioned: the state itself, as stored until version 1
        return backend, HANDLE_VERSION, data
    version, state = data["version"], data.get("state")
    if not isinstance(version, int) or not isinstance(state, dict):
        raise ValueError("its version or state is malformed")
    return str(data.get("backend", backend)), version, state


def handle_state(text: str | None) -> dict[str, Any]:
    """A stored handle's backend state, whatever its version ({} when none or unreadable)."""
    if not text:
        return {}
    try:
        _, _, state = decode_handle(text, "")
    except (ValueError, TypeError):
        return {}
    return state


def set_run_pid(c: Transaction, run_id: str, pid: int, pid_start: int | None) -> None:
    """The run's main process as the host sees it (a container's init, once known)."""
    c.execute("UPDATE runs SET pid=?, pid_start=? WHERE run_id=?", (pid, pid_start, run_id))


def set_run_handle(c: Transaction, run_id: str, handle: str) -> None:
    """A new handle of the run (its backend's state changed: the processes it recorded)."""
    c.execute("UPDATE runs SET handle=? WHERE run_id=?", (handle, run_id))


def home_label(db: str | Path) -> str:
    """The label value that tells containers of this LAS_HOME (given its state.db) apart."""
    import hashlib

    home = os.path.dirname(os.path.realpath(db))
    return hashlib.sha256(home.encode()).hexdigest()[:16]


# --- the reservation ledger ------------------------------------------------------------
#
# Derived, never stored twice: an instance holds its plan's resources while its current run
# is active (starting, running, stopping), so a run that ends releases them in the same
# write that records its end and the ledger cannot drift from the runs. The one window the
# runs do not cover is between admission and the creation of the run (two transactions,
# `las run` then the runtime's start): ``mark_admitted`` records it on the instance
# (``admitted_at``, and ``admitted_over``: the run that was current then), and the hold
# lasts until a new run is created or ``ADMISSION_HOLD`` seconds pass (a `las run` killed
# in between does not hold memory for ever).

ADMISSION_HOLD = 120.0


def reservations(
    c: Transaction,
    *,
    exclude: str | None = None,
    now: float | None = None,
    hold: float = ADMISSION_HOLD,
) -> list[Reservation]:
    """The ledger: every instance whose current run is active or that was just admitted."""
    since = (time.time() if now is None else now) - hold
    rows = c.execute(
        """SELECT i.name, i.plan, r.state FROM instances i
           LEFT JOIN runs r ON r.run_id = i.current_run
           WHERE r.state IN ('starting','running','stopping')
              OR (i.admitted_at > ? AND i.current_run IS i.admitted_over)
           ORDER BY i.name""",
        (since,),
    ).fetchall()
    out = []
    for name, plan_json, state in rows:
        if name == exclude:
            continue
        plan = json.loads(plan_json)
        res = plan.get("resources") or {}
        gpus: dict[str, int] = {}
        for g in plan.get("gpus") or ():
            gpus[str(g["uuid"])] = gpus.get(str(g["uuid"]), 0) + int(g.get("vram") or 0)
        memory = res.get("memory")
        cpus = res.get("cpus")
        out.append(
            Reservation(
                instance=str(name),
                memory=None if memory is None else int(memory),
                cpus=None if cpus is None else float(cpus),
                gpus=gpus,
                state=str(state) if state in ACTIVE_STATES else "admitted",
            )
        )
    return out


def mark_admitted(c: Transaction, name: str, at: float | None = None) -> None:
    """Hold ``name``'s reservation until its next run is created (or ``ADMISSION_HOLD``),
    recording this process (pid and start time) as the one that will create it."""
    c.execute(
        "UPDATE instances SET admitted_at=?, admitted_over=current_run, admitted_pid=?, "
        "admitted_pid_start=? WHERE name=?",
        (time.time() if at is None else at, os.getpid(), _own_start_time(), name),
    )


def clear_admission(c: Transaction, name: str) -> None:
    """Drop an admission hold at once (the start it was for failed before creating a run)."""
    c.execute(
        "UPDATE instances SET admitted_at=NULL, admitted_over=NULL, admitted_pid=NULL, "
        "admitted_pid_start=NULL WHERE name=?",
        (name,),
    )


def pending_admissions(c: Transaction) -> list[tuple[str, bool, int, int | None]]:
    """Admissions whose run is not created yet, and by whom: (instance, whether it has
    any run, the admitting process's pid and start time)."""
    rows = c.execute(
        """SELECT i.name, EXISTS (SELECT 1 FROM runs r WHERE r.instance = i.name),
                  i.admitted_pid, i.admitted_pid_start
           FROM instances i
           WHERE i.admitted_at IS NOT NULL AND i.current_run IS i.admitted_over
             AND i.admitted_pid IS NOT NULL"""
    ).fetchall()
    return [(str(n), bool(has), int(pid), start) for n, has, pid, start in rows]


def _own_start_time() -> int | None:
    """This process's start time (clock ticks after boot, /proc/self/stat's 22nd field)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def managed_processes(c: Transaction) -> tuple[set[int], set[str]]:
    """Pids (workload and supervisor) and container ids of the active runs: what las runs."""
    pids: set[int] = set()
    containers: set[str] = set()
    rows = c.execute(
        "SELECT pid, sup_pid, handle FROM runs WHERE state IN ('starting','running','stopping')"
    ).fetchall()
    for pid, sup_pid, handle in rows:
        pids.update(p for p in (pid, sup_pid) if p)
        cid = handle_state(handle).get("container")
        if cid:
            containers.add(str(cid))
    return pids, containers
