"""The per-run supervisor: the parent of one native workload.

Started by ``las`` as ``python -m localaistack.runtime.supervisor --db DB --run RUN_ID
--ready-fd FD`` in a session of its own, it outlives the ``las`` command. It

* starts the workload in its own session and process group, with ``PR_SET_PDEATHSIG`` so
  that the workload dies with it (a workload is never left running unsupervised) and as
  child subreaper so that orphaned descendants come back to it;
* reports ``running`` (or ``failed``, with the OS error) on the ready pipe, then closes it;
* captures stdout and stderr into the run's log file, line by line, never blocking the
  workload on a full disk (lost lines are counted);
* on SIGTERM (what ``las stop`` sends it), sends the plan's stop signal to the whole group,
  waits the stop timeout, then SIGKILLs the group, and records which of the two ended it;
* reaps the workload, kills what is left of its group, and records the end durably.

It sleeps in ``select`` with no timeout while nothing happens: no polling. Standard library
only (and the store and log file modules, which are too): it starts often and lives long.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from localaistack.errors import StoreError
from localaistack.runtime import cgroups, procs
from localaistack.runtime.logfile import LogWriter
from localaistack.store.db import Store, add_event, set_run_state

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
DRAIN_AFTER_EXIT = 1.0  # seconds to read what descendants still hold open after the exit
READ_SIZE = 1 << 16

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _child_setup(supervisor_pid: int, cgroup_procs: str | None) -> None:
    """Runs in the forked child, before exec."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # The supervisor may have died before the line above took effect: die now, not later.
    if os.getppid() != supervisor_pid:
        os._exit(127)
    if cgroup_procs is not None:
        # Join before exec, so that no descendant is ever outside the run's cgroup.
        with contextlib.suppress(OSError):  # the process group still reaches descendants
            cgroups.join(cgroup_procs)


def describe_start_error(exc: OSError, argv0: str, workdir: str | None) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    what = exc.strerror or str(exc)
    if exc.filename is not None and workdir is not None and str(exc.filename) == workdir:
        return f"could not start: workdir {workdir}: {what} ({name})"
    if exc.errno == errno.ENOENT:
        return f"could not start: executable not found: {argv0} ({what})"
    if exc.errno == errno.EACCES:
        return f"could not start: permission denied: {argv0} ({what})"
    return f"could not start: {argv0}: {what} ({name})"


def exit_reason(
    status: int, stopping: bool, killed: bool, sig_name: str, last: str
) -> tuple[str, str, int | None, str | None]:
    """Final state, reason, exit code and signal name for a wait status."""
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        sig = None
    else:
        code = None
        sig = procs.signal_name(os.WTERMSIG(status))
    if stopping:
        if killed:
            return (
                "stopped",
                f"stopped: did not exit within the stop timeout after "
                f"{sig_name}; killed with SIGKILL",
                code,
                sig,
            )
        if sig == sig_name:
            return "stopped", f"stopped: exited on {sig_name}", code, sig
        how = f"exited with code {code}" if code is not None else f"ended by {sig}"
        return "stopped", f"stopped: {how} after {sig_name}", code, sig
    tail = f"; last output: {last}" if last else ""
    if code == 0:
        return "stopped", "exited on its own with code 0", code, sig
    if code is not None:
        return "failed", f"exited with code {code}{tail}", code, sig
    core = " (core dumped)" if os.WCOREDUMP(status) else ""
    return "failed", f"killed by signal {sig}{core}{tail}", code, sig


class Supervisor:
    def __init__(self, db: Path, run_id: str, ready_fd: int | None) -> None:
        self.db_path = db
        self.run_id = run_id
        self.ready_fd = ready_fd
        self.store = Store(db)
        run = self.store.run(run_id)
        if run is None:
            raise SystemExit(f"supervisor: no run {run_id} in {db}")
        self.run_row = run
        inst = self.store.instance(run["instance"])
        assert inst is not None
        self.instance = str(inst["name"])
        self.plan: dict[str, Any] = json.loads(inst["plan"])
        self.pid: int | None = None
        self.pid_start: int | None = None
        self.stopping = False
        self.killed = False
        self.stop_deadline: float | None = None
        self.last_lines: dict[str, bytes] = {}
        self.cgroup: cgroups.RunCgroup | None = None

    def __repr__(self) -> str:
        return f"<Supervisor run={self.run_id} pid={self.pid} stopping={self.stopping}>"

    # --- reporting ---------------------------------------------------------------------

    def report_ready(self, message: dict[str, Any]) -> None:
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, (json.dumps(message) + "\n").encode())
        except OSError:
            pass  # las went away (killed mid-run): nobody waits, the state says it all
        finally:
            os.close(self.ready_fd)
            self.ready_fd = None

    def record(self, state: str, reason: str | None, **fields: Any) -> None:
        """Record a state change; a store that cannot be written never stops supervision.

        Retries for a few seconds (the database may be locked, or the disk briefly full);
        then says so in the run's log and in the supervisor's own log and carries on. The
        next `las` command's reconciliation records what the store missed.
        """
        deadline = time.monotonic() + 5.0
        while True:
            try:
                with self.store.transaction() as c:
                    set_run_state(c, self.run_id, state, reason, **fields)
                return
            except (sqlite3.Error, StoreError) as exc:
                if time.monotonic() > deadline:
                    msg = f"las: could not record state {state!r} ({reason}): {exc}"
                    print(msg, file=sys.stderr, flush=True)
                    with contextlib.suppress(Exception):
                        self.writer.note(msg)
                    return
                time.sleep(0.1)

    # --- main --------------------------------------------------------------------------

    def run(self) -> int:
        native = self.plan["native"]
        logs = self.plan["logs"]
        self.writer = LogWriter(
            self.run_row["log_path"], max_size=logs["max_size"], keep=logs["keep"]
        )
        sel = selectors.DefaultSelector()
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(s, lambda *_: None)
        sel.register(rfd, selectors.EVENT_READ, "signal")
        _prctl(PR_SET_CHILD_SUBREAPER, 1)

        env = {v["name"]: v["value"] for v in native["env"]}
        argv = list(native["argv"])
        me = os.getpid()
        self.cgroup, cgroup_note = cgroups.create(self.run_id)
        procs_file = str(self.cgroup.procs_file) if self.cgroup else None
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=native.get("workdir"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=lambda: _child_setup(me, procs_file),  # noqa: PLW1509 (single-threaded)
                close_fds=True,
            )
        except OSError as exc:
            reason = describe_start_error(exc, argv[0], native.get("workdir"))
            self.writer.note(f"las: {reason}")
            self.writer.close()
            self.record("failed", reason, lines_dropped=self.writer.dropped_lines)
            self.report_ready({"state": "failed", "reason": reason})
            if self.cgroup:
                self.cgroup.remove()
            return 0
        self.pid = proc.pid
        self.pid_start = procs.start_time(proc.pid)
        assert proc.stdout is not None and proc.stderr is not None
        streams = {proc.stdout.fileno(): "O", proc.stderr.fileno(): "E"}
        for fd in streams:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, "output")
        self.record(
            "running",
            f"started pid {proc.pid}",
            pid=proc.pid,
            pid_start=self.pid_start,
            started_at=time.time(),
            sup_pid=me,
            sup_start=procs.start_time(me),
            handle=json.dumps(
                {
                    "cgroup": str(self.cgroup.path) if self.cgroup else None,
                    "cgroup_note": cgroup_note,
                }
            ),
        )
        self.report_ready({"state": "running", "pid": proc.pid})

        status: int | None = None
        while status is None:
            timeout = None
            if self.stop_deadline is not None:
                timeout = max(0.0, self.stop_deadline - time.monotonic())
            for key, _ in sel.select(timeout):
                if key.data == "output":
                    self._read(key.fd, streams, sel)
                else:
                    try:
                        sigs = os.read(rfd, 512)
                    except BlockingIOError:
                        sigs = b""
                    if any(b in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) for b in sigs):
                        self._begin_stop()
            status = self._reap(proc.pid)
            if (
                status is None
                and self.stop_deadline is not None
                and (time.monotonic() >= self.stop_deadline)
            ):
                self.killed = True
                self.stop_deadline = None
                self.writer.note("las: stop timeout passed; sending SIGKILL to the process group")
                self._kill_all(proc.pid)
        proc.returncode = status  # we reaped it ourselves

        # The workload is gone: end what is left of its group and any orphan that came back
        # to us as subreaper, then read what they wrote until the pipes close.
        self._kill_all(proc.pid)
        deadline = time.monotonic() + DRAIN_AFTER_EXIT
        while streams and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                if key.data == "output":
                    self._read(key.fd, streams, sel)
                else:
                    try:
                        os.read(rfd, 512)
                    except BlockingIOError:
                        pass
            self._reap_orphans()
        for fd, stream in list(streams.items()):
            self.writer.flush_partial(stream)
            sel.unregister(fd)
        self._reap_orphans()
        if self.cgroup:
            self.cgroup.remove()

        last = self._last_line()
        sig_name = self.plan["stop"]["signal"]
        state, reason, code, sig = exit_reason(status, self.stopping, self.killed, sig_name, last)
        dropped = self.writer.dropped_lines  # the workload's lines (not our final note)
        if dropped:
            reason += f"; {dropped} log line(s) could not be written"
        self.writer.note(f"las: {reason}")
        self.writer.close()
        self.record(
            state, reason, exit_code=code, signal=sig, lines_dropped=dropped
        )
        return 0

    def _kill_all(self, pid: int) -> None:
        """SIGKILL the workload's group, its cgroup, and orphans that came back to us."""
        procs.kill_group(pid, signal.SIGKILL, self.pid_start)
        if self.cgroup:
            self.cgroup.kill_all()
        for child in procs.children_of(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)

    def _read(self, fd: int, streams: dict[int, str], sel: selectors.BaseSelector) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        stream = streams[fd]
        if not data:
            self.writer.flush_partial(stream)
            sel.unregister(fd)
            del streams[fd]
            return
        self.writer.feed(stream, data)
        stripped = data.rstrip(b"\n")
        if stripped:
            self.last_lines[stream] = stripped.rsplit(b"\n", 1)[-1]

    def _last_line(self) -> str:
        raw = self.last_lines.get("E") or self.last_lines.get("O") or b""
        text = raw.decode("utf-8", "replace").strip()
        return text[:300]

    def _begin_stop(self) -> None:
        if self.stopping or self.pid is None:
            return
        self.stopping = True
        row = self.store.run(self.run_id)
        timeout = float(self.plan["stop"]["timeout"])
        if row is not None and row["stop_timeout"] is not None:
            timeout = float(row["stop_timeout"])
        sig_name = self.plan["stop"]["signal"]
        self.record("stopping", f"stop requested: sending {sig_name}, SIGKILL after {timeout:g}s")
        self.writer.note(f"las: stop requested: sending {sig_name} to the process group")
        sig = getattr(signal, sig_name)
        procs.kill_group(self.pid, sig, self.pid_start)
        for pid in self.cgroup.pids() if self.cgroup else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)  # descendants that left the process group
        self.stop_deadline = time.monotonic() + timeout

    def _reap(self, pid: int) -> int | None:
        status = None
        while True:
            try:
                got, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return status
            if got == 0:
                return status
            if got == pid:
                status = st

    def _reap_orphans(self) -> None:
        while True:
            try:
                got, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if got == 0:
                return


USAGE = "usage: python -m localaistack.runtime.supervisor --db DB --run RUN_ID [--ready-fd FD]"


def _parse_args(argv: list[str]) -> dict[str, str]:
    """``--name value`` pairs (no argparse: it costs the long-lived supervisor memory)."""
    if len(argv) % 2 or not all(a.startswith("--") for a in argv[::2]):
        raise SystemExit(USAGE)
    args = {k[2:]: v for k, v in zip(argv[::2], argv[1::2], strict=True)}
    if not {"db", "run"} <= set(args) or not set(args) <= {"db", "run", "ready-fd"}:
        raise SystemExit(USAGE)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    ready = args.get("ready-fd")
    sup = Supervisor(Path(args["db"]), args["run"], int(ready) if ready else None)
    try:
        return sup.run()
    except BaseException as exc:
        # A bug in the supervisor: leave nothing running and record why, then re-raise so
        # the traceback lands in the supervisor's own log file.
        if sup.pid is not None:
            sup._kill_all(sup.pid)
        reason = f"lost: the supervisor failed: {type(exc).__name__}: {exc}"
        try:
            sup.record("failed", reason)
            with sup.store.transaction() as c:
                add_event(c, "supervisor-error", reason, instance=sup.instance, run_id=sup.run_id)
        finally:
            sup.report_ready({"state": "failed", "reason": reason})
        raise


if __name__ == "__main__":
    sys.exit(main())
