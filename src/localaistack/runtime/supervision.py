"""Supervised runs: spawning, stopping and watching the per-instance supervisors.

Every run, native or in a container, has a supervisor process (runtime/supervisor.py); this
module is the CLI side of it. The persisted handle of a run is its row in ``runs``: the
supervisor's pid and start time, the workload's pid (= its process group and session id)
and start time, the boot id, and (``handle``) the backend's own state, such as its cgroup or
container id. Liveness is always checked against pid, start time and boot id together,
never against a pid alone.

What happens when the supervisor of a native run dies (SIGKILL, OOM killer): the workload
was started with ``PR_SET_PDEATHSIG=SIGKILL`` and dies with it, so no server keeps holding
memory unseen. The next ``las`` command notices the dead supervisor (``reconcile``), kills
whatever is left of the workload's process group and cgroup (without a cgroup: the
processes its supervisor recorded, which left the group and have no parent-death signal),
and records the run as ``failed`` with the reason ("lost: the supervisor died...", how many
were killed, and when). Re-adopting is not offered: the
workload's output pipes died with the supervisor, so it could no longer be logged. (A
container outlives its supervisor and is re-adopted: see the runtime manager.)
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from pathlib import Path
from typing import Any

from localaistack.errors import StartFailed, StoreError
from localaistack.runtime import backends, procs
from localaistack.runtime.spawn import Pending, new_run_id, spawn_supervisor
from localaistack.store.db import (
    FINAL_STATES,
    Store,
    Transaction,
    add_event,
    claim_supervisor,
    handle_state,
    request_stop,
    set_run_state,
)
from localaistack.store.records import Run

READY_TIMEOUT = 30.0
# How much longer than the stop timeout we wait for the supervisor; plus the backend's
# ``capabilities.stop_margin`` (a container's: the supervisor kills it itself 15 s after
# the engine should have, then asks the engine for its end and removes it).
STOP_GRACE_EXTRA = 10.0
# The longest stop timeout (`las stop --timeout` refuses more; the supervisor clamps a
# plan's to it), and the signal that tells a supervisor to SIGKILL now: the same as in
# runtime/supervisor.py (not imported from there: it costs `las` tens of milliseconds).
STOP_TIMEOUT_MAX = 3600.0
STOP_NOW = signal.SIGUSR1
STOP_RECORD_WAIT = 2.0  # seconds `las stop` waits for the store before it signals anyway
ORPHAN_START_GRACE = 10.0  # a 'starting' run without supervisor, whose las is gone, is lost


def _tail_text(path: str | Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


class _Lines:
    """JSON messages, one per line, from the supervisor's ready pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def next(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message; None on timeout or when the pipe closes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result


class SparePool:
    """One supervisor spawned ahead of need, for a long-lived caller (`las serve`): a new
    supervisor is a new Python that takes longer to get ready than planning and admission
    take, so a start that finds a spare waiting skips that. It waits on its go pipe as
    any pending supervisor does (``spawn``), and exits if the pool is closed or this
    process dies. Thread-safe: one pool serves every request of the service.

    Only a spare of the same database file (same device and inode as when it was spawned)
    is handed out: a home whose database was replaced gets a fresh one.
    """

    def __init__(self, db: Path, home: Path) -> None:
        import threading

        self.db, self.home = Path(db), Path(home)
        self._lock = threading.Lock()
        self._spare: tuple[Pending, tuple[int, int]] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<SparePool {self.db}>"

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.db)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def take(self) -> Pending | None:
        """The spare supervisor, if one waits and is alive, for this database; else None."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is None:
            return None
        pending, identity = spare
        if identity == self._identity() and procs.is_same_process(pending.pid, pending.start):
            return pending
        _let_go(pending)
        return None

    def refill(self) -> None:
        """Spawn a spare if none waits (a failure to spawn leaves none: the next start
        spawns its own, and says why if it cannot)."""
        with self._lock:
            if self._spare is not None or self._closed:
                return
            identity = self._identity()
            if identity is None:
                return
            try:
                pending = spawn_supervisor(self.db, self.home, new_run_id())
            except StartFailed:
                return
            self._spare = (pending, identity)

    def close(self) -> None:
        """Let the spare go (it exits without running anything)."""
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
        if spare is not None:
            _let_go(spare[0])


def _let_go(pending: Pending) -> None:
    """Close a pending supervisor's pipes: it exits without running anything (and removes
    its run directory); reaped by whoever reaps this process's children."""
    for fd in (pending.go_fd, pending.ready_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


class Supervisors:
    """Starts, stops and watches runs through their supervisors."""

    def __init__(self, store: Store, home: Path) -> None:
        self.store = store
        self.home = home

    def __repr__(self) -> str:
        return f"<Supervisors home={self.home}>"

    # --- start -------------------------------------------------------------------------

    def spawn(self, run_id: str, extra_args: tuple[str, ...] = ()) -> Pending:
        """``spawn_supervisor`` for this store (see there)."""
        return spawn_supervisor(Path(self.store.path), self.home, run_id, extra_args)

    def cancel(self, pending: Pending) -> None:
        """Let a spawned supervisor go without a run: it exits (and removes its directory
        when no run was recorded)."""
        os.close(pending.go_fd)
        os.close(pending.ready_fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pending.pid, 0)

    def start(
        self,
        run: Run,
        *,
        wait_healthy: bool = False,
        ready_timeout: float = READY_TIMEOUT,
        extra_args: tuple[str, ...] = (),
        pending: Pending | None = None,
    ) -> dict[str, Any]:
        """Let the supervisor of ``run`` go and wait until the workload runs or fails.

        ``pending`` is the supervisor ``spawn`` started for this run (its pid is recorded
        in the run already); without it one is spawned now. Blocks until the supervisor
        reports on its ready pipe (at most ``ready_timeout``). Returns the supervisor's
        message: ``{"state": "running", "pid": N}`` or ``{"state": "failed", "reason":
        ...}``. With ``wait_healthy`` (for a plan with a health probe) it goes on blocking
        until the supervisor reports ``healthy`` or a final ``failed``/``stopped`` (the
        supervisor enforces the start timeout; the pipe closing means the supervisor is
        gone), and returns that message with ``pid``.

        Raises:
            StartFailed: when the supervisor itself cannot be started or dies before
                reporting; the run is recorded as failed first.
        """
        run_id = str(run.run_id)
        if pending is None:
            pending = self.claim(run, extra_args)
            if pending is None:
                raise StartFailed(
                    f"run {run_id} got another supervisor meanwhile",
                    hint="another las command started it: see `las ps`",
                )
        pid, sup_log = pending.pid, pending.sup_log
        try:
            os.write(pending.go_fd, b"go\n")
        except BrokenPipeError:
            pass  # it died already: reported below
        finally:
            os.close(pending.go_fd)
        reader = _Lines(pending.ready_fd)
        try:
            message = reader.next(ready_timeout)
            if message is not None and message.get("state") == "running" and wait_healthy:
                final = reader.next(None)
                while final is not None and final.get("state") == "running":
                    final = reader.next(None)
                if final is None:
                    final = {
                        "state": "failed",
                        "reason": "the supervisor exited before reporting health",
                    }
                message = {**final, "pid": message.get("pid")}
        finally:
            os.close(pending.ready_fd)
        if message is None:
            self._reap_child(pid)
            detail = _tail_text(sup_log).splitlines()
            reason = "the supervisor exited before reporting" + (
                f": {detail[-1]}" if detail else ""
            )
            with self.store.transaction() as c:
                set_run_state(c, run_id, "failed", f"lost: {reason}")
            procs.kill_group(pid, signal.SIGKILL, pending.start)
            raise StartFailed(reason, hint=f"see {sup_log}")
        return message

    def claim(self, run: Run, extra_args: tuple[str, ...] = ()) -> Pending | None:
        """Spawn a supervisor for ``run`` and record it as the run's, unless the run's
        supervisor changed since ``run`` was read (another las command claimed it first:
        the new supervisor is let go, and None returned). Give the result to ``start``.

        The check and the record are one UPDATE: of several las commands that find the
        same supervisor dead at once, exactly one re-adopts its container.

        Raises:
            StartFailed: the supervisor cannot be started (the run is recorded failed).
        """
        run_id = str(run.run_id)
        try:
            pending = self.spawn(run_id, extra_args)
        except StartFailed as exc:
            with self.store.transaction() as c:
                set_run_state(c, run_id, "failed", exc.message)
            raise
        with self.store.transaction() as c:
            claimed = claim_supervisor(
                c, run_id, pending.pid, pending.start, was=(run.sup_pid, run.sup_start)
            )
        if not claimed:
            self.cancel(pending)
            return None
        return pending

    @staticmethod
    def _reap_child(pid: int) -> None:
        """Reap a supervisor this process spawned, if it has exited (no zombie left)."""
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    # --- stop --------------------------------------------------------------------------

    def stop(self, run: Run, timeout: float | None, plan_timeout: float) -> tuple[bool, str | None]:
        """Ask the supervisor to stop the workload and wait until the run has ended.

        The request is recorded first (its deadline: now + ``timeout``, or the plan's; the
        store keeps the earliest of all pending requests, and the supervisor reads it at
        every SIGTERM, so the shortest pending deadline wins), then the supervisor gets
        SIGTERM, whether the record worked or not: a store that cannot be written (a full
        disk, a lock held too long) never keeps the signal from the workload. When it could
        not be recorded and ``timeout`` passes, the supervisor gets STOP_NOW (SIGKILL now).

        Blocks for at most the stop timeout plus a margin. Returns (whether the run has
        ended: its supervisor exited, its end is recorded, or its workload is gone; why the
        request could not be recorded, or None). Stopping an ended run does nothing. If the
        supervisor is gone, the run is reconciled instead (by the caller).
        """
        run_id = str(run.run_id)
        effective = min(timeout if timeout is not None else plan_timeout, STOP_TIMEOUT_MAX)
        unrecorded = self._record_stop(run_id, effective)
        sup_pid, sup_start = run.sup_pid, run.sup_start
        if sup_pid is None:
            # Still starting: the supervisor has not been recorded yet; wait briefly for it.
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                row = self.store.run(run_id)
                if row is None or row.sup_pid is not None:
                    break
                time.sleep(0.02)
            row = self.store.run(run_id)
            if row is None or row.sup_pid is None:
                return True, unrecorded
            sup_pid, sup_start = row.sup_pid, row.sup_start
        if not procs.is_same_process(sup_pid, sup_start):
            return True, unrecorded
        try:
            pidfd = os.pidfd_open(sup_pid)
        except ProcessLookupError:
            return True, unrecorded
        try:
            if not procs.is_same_process(sup_pid, sup_start):
                return True, unrecorded
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            except ProcessLookupError:
                return True, unrecorded  # it exited just now: reconciled by the caller
            margin = STOP_GRACE_EXTRA + backends.get(run.backend).capabilities.stop_margin
            if unrecorded is not None and timeout is not None:
                # The supervisor cannot read this timeout: it is told when it has passed.
                if self._wait_ended(pidfd, run_id, effective, True):
                    return True, unrecorded
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, STOP_NOW)
                ended = self._wait_ended(pidfd, run_id, margin, True)
            else:
                ended = self._wait_ended(pidfd, run_id, effective + margin, unrecorded is not None)
        finally:
            os.close(pidfd)
        self._reap_child(sup_pid)
        return ended, unrecorded

    def _record_stop(self, run_id: str, timeout: float) -> str | None:
        """Record a stop request unless an earlier deadline is recorded already; why it
        could not be recorded, or None. Waits at most STOP_RECORD_WAIT for the store."""
        now = time.time()
        try:
            with self.store.waiting_at_most(STOP_RECORD_WAIT), self.store.transaction() as c:
                request_stop(c, run_id, timeout, now)
        except StoreError as exc:
            return exc.message
        return None

    def _wait_ended(self, pidfd: int, run_id: str, seconds: float, unwritable: bool) -> bool:
        """Wait up to ``seconds`` for the run to end: the supervisor exits (its pidfd is
        readable) or the store records a final state; where the store cannot be written
        (``unwritable``), also its backend telling that nothing is left of it."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if select.select([pidfd], [], [], max(0.0, min(left, 0.25)))[0]:
                return True
            if self._ended(run_id, unwritable):
                return True
            if left <= 0:
                return False

    def _ended(self, run_id: str, unwritable: bool) -> bool:
        try:
            row = self.store.run(run_id)
        except StoreError:
            return False
        if row is None or row.state in FINAL_STATES:
            return True
        if not unwritable or row.pid is None:
            return False
        backend = backends.get(str(row.backend))
        return backend.gone(run_id, int(row.pid), row.pid_start)

    # --- reconcile -----------------------------------------------------------------------

    def is_alive(self, run: Run, boot: str) -> bool:
        """Whether the run is still watched by a live supervisor (cheap: /proc reads)."""
        if run.boot_id != boot:
            return False
        if run.sup_pid is not None:
            return procs.is_same_process(run.sup_pid, run.sup_start)
        if procs.is_same_process(run.owner_pid, run.owner_start):
            return True
        return bool(time.time() - float(run.created_at) < ORPHAN_START_GRACE)

    def mark_lost(self, c: Transaction, run: Run, boot: str) -> None:
        """Record a run whose supervisor is gone, ending whatever is left of its workload.

        What is left is its backend's to end (``Backend.end_lost``). The reason says how
        many processes were killed, and when.
        """
        run_id = str(run.run_id)
        if run.boot_id != boot:
            reason = "lost: the machine rebooted (boot id changed) while the run was active"
            set_run_state(c, run_id, "failed", reason)
            return
        try:
            state = handle_state(run.handle)
        except (ValueError, AttributeError, TypeError):
            state = {}
        pid = int(run.pid) if run.pid is not None else None
        backend = backends.get(str(run.backend))
        killed, not_removed = backend.end_lost(run_id, state, pid, run.pid_start)
        if run.sup_pid is None:
            reason = "lost: las exited before the supervisor was started"
        else:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            what = (
                f"{killed} process(es) of the workload were still running and were killed "
                f"with SIGKILL by las at {when}"
                if killed
                else "the workload died with it"
            )
            reason = f"lost: the supervisor (pid {run.sup_pid}) died unexpectedly; {what}"
        if not_removed:
            reason += f"; cgroup not removed: {', '.join(not_removed)}"
        set_run_state(c, run_id, "failed", reason)
        add_event(c, "reconciled", reason, instance=str(run.instance), run_id=run_id)
