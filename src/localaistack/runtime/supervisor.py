"""The per-instance supervisor: the parent of one workload, native or in a container.

Started by ``las`` as ``python -S -c "...from localaistack.runtime.supervisor import
main..." --db DB --run RUN_ID --ready-fd FD`` (runtime/spawn.py) in a session of its own,
it outlives the ``las`` command. For a native workload it

* starts it in its own session and process group and cgroup (with its memory and CPU
  limits where this process may write them), with ``PR_SET_PDEATHSIG`` so that the workload
  dies with it (a workload is never left running unsupervised), and as child subreaper so
  that orphaned descendants come back to it;
* reports ``running`` (or ``failed``, with the OS error) on the ready pipe, and ``healthy``
  later when the plan has a health probe and the caller waits for it;
* captures stdout and stderr into the run's log file, never blocking the workload on a full
  disk (lost lines are counted);
* runs the health probe (non-blocking, in the same event loop) and records transitions;
* on SIGTERM (what ``las stop`` sends it), sends the plan's stop signal to every process of
  the run (its cgroup's members and our descendants: those that left the process group
  too), waits the stop timeout, then SIGKILLs them, and records which of the two ended it;
* reaps the workload, kills what is left of the run until nothing is (counted in the
  reason), removes the cgroup, and records the end durably (a write the store refuses, a
  full disk, is kept and retried until it is committed: ``record``);
* once a second, checks the run's listening sockets (sock_diag: TCP and UDP, IPv4 and
  IPv6) against the policy and, without a cgroup, records the run's processes for the next
  ``las`` command should this process die;
* stops the workload when its home is lost (its state database removed or replaced,
  looked at every second: ``_check_home``), since no las command could see it any more;
* when the plan asks for restarts, starts the next attempt (a run of its own) after a
  bounded, growing backoff.

For a container it drives the engine instead (create and start through its API, or
``run -d``; then the CLI's ``logs --follow``, ``wait``, ``stop``, ``inspect``, ``rm``), with
the same states, logs, probes and restarts; it becomes child subreaper only once the
container runs (the engine's own processes are not its children, as after a ``run -d`` by
hand). ``--adopt CONTAINER --since TIME`` follows a container whose supervisor died.

It sleeps in ``select`` while nothing happens, but for the probe's cadence, the once-a-second
watch above (~0.1 % of a core, bench/native.py), and a memory sampler where no cgroup can
enforce a limit. Standard library only, and it imports
as little as it can: it starts often and lives long.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import math
import os
import re
import selectors
import signal
import sqlite3
import sys
import time
from typing import TYPE_CHECKING, Any

from localaistack.errors import StoreError
from localaistack.runtime import cgroups, procs
from localaistack.runtime.logs.writer import LogWriter
from localaistack.store import secrets
from localaistack.store.db import (
    FINAL_STATES,
    Store,
    add_event,
    create_run,
    home_label,
    set_run_state,
)

if TYPE_CHECKING:
    import subprocess

    from localaistack.runtime import probes

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
DRAIN_AFTER_EXIT = 1.0  # seconds to read what descendants still hold open after the exit
READ_SIZE = 1 << 18  # measured best with a 1 MiB pipe (bench/native.py log capture)
PIPE_SIZE = 1 << 20  # the default /proc/sys/fs/pipe-max-size
TAIL_BYTES = 8192  # of each stream, kept to quote in a failure's reason
# A line that reports an error: a log level E/ERROR/FATAL, or the words people use.
ERROR_LINE = re.compile(
    r"(^|\s)(E|ERROR|FATAL|CRITICAL)(\s|:)|(?i:\b(error|failed|cannot|couldn't|invalid|fatal)\b)"
)
# How often the supervisor looks at the run's processes: their listening sockets (a TCP
# listener or unbound UDP socket on an address the policy does not allow is caught within
# ~WATCH_EVERY of being opened) and, where no cgroup tracks them, which of them left the
# process group (recorded, for the next las command should this process die).
WATCH_FIRST = 0.3  # seconds after the start
WATCH_EVERY = 1.0
SWEEP_LIMIT = 5.0  # seconds the end of a run goes on killing what is left of the run
SAMPLE_EVERY = 0.5  # seconds between RSS samples, only where no cgroup enforces a limit
HOME_CHECK_EVERY = 1.0  # seconds between looks at the state database's identity (one stat)
STORE_RETRY_FIRST = 0.1  # seconds before the first retry of a write the store refused
STORE_RETRY_MAX = 2.0  # the longest wait between retries (doubling up to it)
# The longest stop timeout las applies (`las stop --timeout` refuses more; a plan's is
# clamped to it): a run is never `stopping` for longer than this plus a few seconds.
# SIGUSR1 to a supervisor: SIGKILL the workload now (a stop timeout of 0); `las stop` sends
# it when the timeout it was given passed and the store could not record it. Both are
# also in runtime/supervision.py (a test checks they agree).
STOP_TIMEOUT_MAX = 3600.0
STOP_NOW = signal.SIGUSR1
F_SETPIPE_SZ = 1031


@functools.cache
def _libc() -> Any:
    # ctypes costs ~4 ms to import: loaded by the supervisor's first prctl (the child
    # subreaper's), which comes before any child is forked (and calls this again).
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc().prctl(option, arg, 0, 0, 0) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _pin_changed(pinned: Any) -> str | None:
    """How a trust pin's file differs from its planned sha256 now (None: none does).

    Hashed right before exec, to narrow the window between the planner's check and the
    exec (docs/policy.md: ~12-15 ms of CPU for a 10 MiB binary, measured).
    """
    import hashlib

    for item in pinned:
        path, want = item["path"], item["sha256"]
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        except OSError as exc:
            return f"{path} cannot be read ({exc.strerror}): pinned sha256 {want}"
        if digest.hexdigest() != want:
            return f"{path} changed: pinned sha256 {want}, now {digest.hexdigest()}"
    return None


def _child_setup(
    supervisor_pid: int,
    cgroup_procs: list[str] | None,
    creds: tuple[int, int, list[int]] | None = None,
    cpus: list[int] | None = None,
) -> None:
    """Runs in the forked child, before exec: least privilege, and death with the supervisor.

    ``creds`` (uid, gid, supplementary groups) is the plan's user to drop to; the cgroup is
    joined first, while the child may still write it. ``cpus``: pin the workload to these
    CPUs (where no cgroup quota holds its CPU limit); before exec, so every thread and
    child it makes inherits the affinity.
    """
    if cgroup_procs is not None:
        # Join before exec, so that no descendant is ever outside the run's cgroup.
        with contextlib.suppress(OSError):  # the process group still reaches descendants
            cgroups.join(cgroup_procs)
    if cpus is not None:
        with contextlib.suppress(OSError):  # the supervisor reads it back and says so
            os.sched_setaffinity(0, cpus)
    if creds is not None:
        uid, gid, groups = creds
        os.setgroups(groups)
        os.setgid(gid)  # as root: real, effective and saved ids alike
        os.setuid(uid)
    # After the uid change, which clears the parent-death signal.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # no setuid/file-capability escalation, ever
    os.umask(0o077)  # files the workload creates are private unless it says otherwise
    # The supervisor may have died before the line above took effect: die now, not later.
    if os.getppid() != supervisor_pid:
        os._exit(127)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g}{unit}"
    return f"{n}B"


def describe_start_error(
    exc: OSError, argv0: str, workdir: str | None, shown_workdir: str | None = None
) -> str:
    """Why the exec failed; ``argv0`` and ``shown_workdir`` as shown (secrets masked),
    ``workdir`` the real one (to tell which path failed)."""
    name = errno.errorcode.get(exc.errno or 0, "")
    what = exc.strerror or str(exc)
    if exc.filename is not None and workdir is not None and str(exc.filename) == workdir:
        return f"could not start: workdir {shown_workdir or workdir}: {what} ({name})"
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
    tail = f"; {last}" if last else ""
    if code == 0:
        return "stopped", "exited on its own with code 0", code, sig
    if code is not None:
        return "failed", f"exited with code {code}{tail}", code, sig
    core = " (core dumped)" if os.WCOREDUMP(status) else ""
    return "failed", f"killed by signal {sig}{core}{tail}", code, sig


class Attempt:
    """One run (attempt) of the workload under this supervisor."""

    def __init__(self, run_id: str, log_path: str) -> None:
        self.run_id = run_id
        self.log_path = log_path
        self.pid: int | None = None
        self.pid_start: int | None = None
        self.cgroup: cgroups.RunCgroup | None = None
        self.started = 0.0  # monotonic
        self.healthy_since: float | None = None  # monotonic

    def __repr__(self) -> str:
        return f"<Attempt run={self.run_id} pid={self.pid}>"


class Supervisor:
    """Supervises one instance's runs: the first, and restarts when the plan asks for them."""

    def __init__(self, store: Store, run_id: str, ready_fd: int | None) -> None:
        self.db_path = str(store.path)
        self.ready_fd = ready_fd
        self.store = store
        run = self.store.run(run_id)
        if run is None:
            raise SystemExit(f"supervisor: no run {run_id} in {store.path}")
        inst = self.store.instance(run["instance"])
        assert inst is not None
        self.instance = str(inst["name"])
        self.boot_id = str(run["boot_id"])
        # The stored plan is the plan as shown (its secrets masked where they sit): the real
        # values come from the instance's secrets file. What this process writes is composed
        # from the shown plan; only what it quotes from elsewhere is masked by value (hide).
        hidden = secrets.read(os.path.dirname(os.path.abspath(store.path)), self.instance)
        stored = json.loads(inst["plan"])
        self.secrets: list[str] = list(hidden["values"]) if hidden else []
        self.shown: dict[str, Any] = secrets.repaired(stored, hidden)
        self.plan: dict[str, Any] = secrets.reveal(stored, hidden)
        self.health_spec: dict[str, Any] | None = self.plan.get("health")
        self.restart: dict[str, Any] = self.plan["restart"]
        self.attempt = Attempt(run_id, str(run["log_path"]))
        self.me = os.getpid()
        self.me_start = procs.start_time(self.me)
        self.stop_requested = False
        self.stopping = False
        self.killed = False
        self.stop_deadline: float | None = None
        self.kill_at = 0.0  # while stopping: when SIGKILL is due (monotonic)
        self.last_lines: dict[str, bytes] = {}
        self.failures: list[str] = []  # reasons of the failed attempts, in order
        self.restart_times: list[float] = []  # monotonic times of restarts in the window
        self.health = Health(self.health_spec)
        self.probe: probes.Probe | None = None
        self.probe_fd = -1
        self.next_probe: float | None = None
        self.health_failure: str | None = None  # why we stopped it (start timeout, unhealthy)
        self.sel = selectors.DefaultSelector()
        self.reported_running = False
        self.container = self.plan["mode"] == "container"
        self.backend = str(run["backend"])
        self.cid = ""
        self.adopt: str | None = None  # a container id to re-adopt instead of starting one
        self.adopt_since: str | None = None
        self._keep: list[subprocess.Popen[bytes]] = []
        self.sandboxed = False  # the plan runs the native workload under bwrap
        self.creds: tuple[int, int, list[int]] | None = None  # the native workload's user
        # The state database as opened (device, inode): another file there, or none, means
        # the home was removed or replaced: its records are gone, so the workload is
        # stopped rather than left running where no las command can see it (_home_lost).
        st = os.stat(self.db_path)
        self.db_ident = (st.st_dev, st.st_ino)
        self.home_lost: str | None = None
        self.next_home_check: float | None = None
        # Writes the store refused (disk full...), kept in order and retried until they
        # are committed; the first failure's cause and time, for the note that says so.
        self.deferred: list[tuple[Any, str]] = []
        self.store_trouble: str | None = None
        self.trouble_since = 0.0
        self.next_store_retry: float | None = None
        self.retry_wait = STORE_RETRY_FIRST

    def __repr__(self) -> str:
        return f"<Supervisor instance={self.instance} {self.attempt!r} stopping={self.stopping}>"

    @property
    def run_id(self) -> str:
        return self.attempt.run_id

    @property
    def pid(self) -> int | None:
        return self.attempt.pid

    # --- reporting ---------------------------------------------------------------------

    def hide(self, text: str) -> str:
        """Quoted text (the workload's output, an engine's or a probe's message) with the
        plan's secret values shown as ``***``. Never for a whole message las composes: a
        short secret would change its words. Compose those from ``self.shown``."""
        return secrets.mask(text, self.secrets) if self.secrets else text

    def _note(self, text: str) -> None:
        """A line of las's own in the run's log (composed from the shown plan, and from
        quoted text already passed through ``hide``)."""
        self.writer.note(text)

    def report_ready(self, message: dict[str, Any], *, close: bool = True) -> None:
        """Tell the waiting `las run` (if any) how the start went (composed as ``_note``)."""
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, (json.dumps(message) + "\n").encode())
        except OSError:
            close = True  # las went away (killed, or --detach): nobody waits any more
        if close:
            os.close(self.ready_fd)
            self.ready_fd = None

    def record(self, state: str, reason: str | None, **fields: Any) -> None:
        """Record a state change; a store that cannot be written never stops supervision.

        A write the store refuses (a full disk, a read-only or failing filesystem) is kept,
        with the time it happened, and retried in order with a bounded backoff
        (``STORE_RETRY_FIRST`` doubling up to ``STORE_RETRY_MAX`` s) for as long as this
        supervisor lives: the event loop goes on meanwhile. The final state is waited for:
        the supervisor does not exit before it is committed (unless its home is gone), so
        no other `las` command takes the run for lost. A final state recorded late says so
        in its reason, and an event says from when to when the store refused writes.
        """
        at = time.time()
        final = state in FINAL_STATES

        def action(c: sqlite3.Connection) -> None:
            why = reason
            if final and why is not None and self.store_trouble:
                why += f"; recorded late: {self.store_trouble}"
            set_run_state(c, self.run_id, state, why, at=at, **fields)

        self._write(action, f"state {state!r} ({reason})", final=final)

    def _write(self, action: Any, what: str, *, final: bool = False) -> None:
        """Commit ``action`` (after any writes still waiting: order is kept); see record."""
        self.deferred.append((action, what))
        if self._flush_deferred() or not final:
            return
        while not self._flush_deferred():
            if self._home_lost() is not None:
                self._say(f"las: gave up recording {what}: {self.home_lost}")
                self.deferred.clear()
                return
            time.sleep(self.retry_wait)

    def _flush_deferred(self) -> bool:
        """Try the waiting writes, in one transaction; True when none is left."""
        if not self.deferred:
            return True
        try:
            with self.store.transaction() as c:
                for action, _ in self.deferred:
                    action(c)
                if self.store_trouble:
                    since = time.strftime("%H:%M:%S", time.gmtime(self.trouble_since))
                    add_event(c, "store-late", f"state changes from {since} UTC on were "
                              f"recorded late: {self.store_trouble}", instance=self.instance,
                              run_id=self.run_id)  # fmt: skip
        except (sqlite3.Error, StoreError) as exc:
            if self.store_trouble is None:
                self.store_trouble = str(exc)
                self.trouble_since = time.time()
                self._say(f"las: could not record {self.deferred[0][1]}: {exc}; retrying "
                          f"every {STORE_RETRY_MAX:g}s at most until it can")  # fmt: skip
            else:
                self.retry_wait = min(self.retry_wait * 2, STORE_RETRY_MAX)
            self.next_store_retry = time.monotonic() + self.retry_wait
            return False
        if self.store_trouble:
            self._say(f"las: recorded {len(self.deferred)} state change(s) late "
                      f"({self.store_trouble})")  # fmt: skip
        self.deferred.clear()
        self.store_trouble = None
        self.next_store_retry = None
        self.retry_wait = STORE_RETRY_FIRST
        return True

    def _say(self, msg: str) -> None:
        """A line in the supervisor's own log and, while it is open, in the run's log."""
        with contextlib.suppress(OSError, ValueError):
            print(msg, file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            if not self.writer.closed:
                self.writer.note(msg)

    def _home_lost(self) -> str | None:
        """Why this supervisor's home is gone (its database removed or replaced), or None.

        One ``stat``, a few microseconds: the event loop calls it every ``HOME_CHECK_EVERY``.
        """
        if self.home_lost is not None:
            return self.home_lost
        try:
            st = os.stat(self.db_path)
        except FileNotFoundError:
            home = os.path.dirname(self.db_path)
            self.home_lost = (
                f"its LAS_HOME {home} was removed" if not os.path.isdir(home)
                else f"its state database {self.db_path} was removed"
            )  # fmt: skip
        except OSError:
            return None  # cannot tell (a permission change): not a reason to stop
        else:
            if (st.st_dev, st.st_ino) != self.db_ident:
                self.home_lost = f"its state database {self.db_path} was replaced by another file"
        return self.home_lost

    def _check_home(self) -> None:
        """Stop the workload once its home is lost: no record of it would be left."""
        self.next_home_check = time.monotonic() + HOME_CHECK_EVERY
        why = self._home_lost()
        if why is None or self.stop_requested:
            return
        self.next_home_check = None
        self.stop_requested = True  # no restart either
        self._say(f"las: {why}; stopping the workload (no las command could see it)")
        self._begin_stop(f"home lost ({why})")

    # --- main --------------------------------------------------------------------------

    def run(self) -> int:
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        os.set_blocking(rfd, False)
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, STOP_NOW):
            signal.signal(s, lambda *_: None)
        self.sigfd = rfd
        self.sel.register(rfd, selectors.EVENT_READ, "signal")
        if not self.container:  # a container's helpers start later (_follow_container)
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
        while True:
            failure = self.run_attempt()
            if failure is None:
                return 0
            delay = self.restart_delay(failure)
            if delay is None:
                return 0
            if not self.wait_to_restart(delay, failure):
                return 0

    def run_attempt(self) -> str | None:
        """Start the workload, supervise it until it ends, record the end.

        Returns the failure's reason when the plan's restart policy asks for a restart,
        else None (the end is final).
        """
        logs = self.plan["logs"]
        self.writer = LogWriter(self.attempt.log_path, max_size=logs["max_size"], keep=logs["keep"])
        self.stopping = self.killed = False
        self.stop_deadline = None
        self.health_failure = None
        self.sampled_oom: str | None = None
        self.sample_memory: int | None = None
        self.next_sample: float | None = None
        self.violation: str | None = None
        self.next_watch: float | None = None
        self.leftovers: set[int] = set()  # processes other than the main one SIGKILLed
        self.probe_pids: set[int] = set()  # command probes: ours, not the workload's
        self.known: dict[int, int | None] = {}  # members seen by the watch -> start time
        self.last_lines = {}
        if self._home_lost() is not None:  # lost while waiting to restart: start nothing
            self._say(f"las: {self.home_lost}; not starting the workload again")
            return None
        launched = self._launch_container() if self.container else self._launch_native()
        if launched is None:
            return None  # could not start: recorded; a workload that cannot start is not restarted
        main_pid, streams, handle = launched
        cg = self.attempt.cgroup
        self.attempt.started = time.monotonic()
        self.health.reset()
        fields: dict[str, Any] = {"health": self.health.state}
        what = f"container {handle['container'][:12]}" if self.container else f"pid {main_pid}"
        self.record(
            "running",
            f"started {what}",
            pid=self.attempt.pid,
            pid_start=self.attempt.pid_start,
            started_at=time.time(),
            sup_pid=self.me,
            sup_start=self.me_start,
            handle=json.dumps(handle),
            **fields,
        )
        if not self.reported_running:
            self.reported_running = True
            waits_for_health = self.health_spec is not None
            self.report_ready(
                {"state": "running", "pid": self.attempt.pid}, close=not waits_for_health
            )
        if self.container:
            followed = self._follow_container()
            if followed is None:
                return None  # recorded: the container is removed, nothing to restart
            main_pid, streams = followed
            self._record_container_pid()
        else:
            if self.sample_memory:
                self.next_sample = time.monotonic()
            self._watch_setup(cg is None)
        if self.stop_requested:
            self._begin_stop()
        elif self.health_spec is not None:
            self.next_probe = time.monotonic()
        self.next_home_check = time.monotonic() + HOME_CHECK_EVERY

        status = self._supervise(main_pid, streams)
        self.next_home_check = None
        self._cancel_probe()
        self.next_probe = None

        # The workload is gone: end what is left of the run (its cgroup, and every
        # descendant of ours: orphans came back to us as subreaper), then read what they
        # wrote until the pipes close. (For a container, `logs --follow` ends by itself once
        # the container has stopped.)
        self.next_watch = None
        if not self.container:
            self._stop_grace(streams)
            self._sweep()
        deadline = time.monotonic() + DRAIN_AFTER_EXIT
        while streams and time.monotonic() < deadline:
            for key, _ in self.sel.select(max(0.0, deadline - time.monotonic())):
                if key.data == "output":
                    self._read(key.fd, streams)
                elif key.data == "signal":
                    self._signals()
            self._reap_orphans()
        for fd, stream in list(streams.items()):
            self.writer.flush_partial(stream)
            self.sel.unregister(fd)
        self._kill_helpers()
        self._reap_orphans()
        oom = self._memory_verdict(cg)

        last = self._last_line()
        sig_name = self.plan["stop"]["signal"]
        by_request = (
            self.stopping
            and self.health_failure is None
            and self.sampled_oom is None
            and self.violation is None
        )
        if self.container:
            state, reason, code, sig = self._container_end(by_request, sig_name, last)
        else:
            if self.sandboxed and os.WIFEXITED(status) and os.WEXITSTATUS(status) > 128:
                # bwrap exits 128+N when the workload was killed by signal N: say so.
                status = os.WEXITSTATUS(status) - 128
            state, reason, code, sig = exit_reason(status, by_request, self.killed, sig_name, last)
        if self.violation is not None:
            state, reason = "failed", self.violation  # never restarted: it would do it again
        elif self.health_failure is not None:
            state, reason = "failed", self.health_failure
        elif oom is not None and not by_request:
            state, reason = "failed", oom
        if self.home_lost is not None:
            reason += f" (stopped by las: {self.home_lost})"
        if self.leftovers:
            reason += f"; {len(self.leftovers)} leftover process(es) killed"
        if cg:
            # Before the record, so that a directory that stays is in the reason.
            not_removed = cg.remove()
            if not_removed:
                reason += f"; cgroup not removed: {', '.join(not_removed)}"
        self.writer.settle()  # a record cut short by a full disk, completed if it fits now
        dropped = self.writer.dropped_lines  # the workload's lines (not our final note)
        if dropped:
            reason += f"; {dropped} log line(s) could not be written"
        restart = (
            state == "failed"
            and not self.stop_requested
            and self.violation is None
            and (
                self.restart["policy"] == "on-failure"
                or (self.health_failure is not None and self.restart.get("on_unhealthy"))
            )
        )
        self._note(f"las: {reason}")
        self.writer.close()
        self.record(
            state,
            reason,
            exit_code=code,
            signal=sig,
            lines_dropped=dropped,
            health=self.health.state,
        )
        if restart:
            return reason
        self.report_ready({"state": state, "reason": reason})
        return None

    def _spawn_helper(
        self, argv: list[str], env: dict[str, str], cwd: str, pipes: bool
    ) -> subprocess.Popen[bytes]:
        """A short-lived helper (engine CLI) that dies with the supervisor."""
        import subprocess

        me = self.me
        out = subprocess.PIPE if pipes else subprocess.DEVNULL
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=lambda: _child_setup(me, None),  # noqa: PLW1509 (single-threaded)
        )

    def _launch_native(self) -> tuple[int, dict[int, str], dict[str, Any]] | None:
        import subprocess

        native = self.plan["native"]
        changed = _pin_changed(native.get("pinned", ()))
        if changed is not None:  # a trust pin's file changed since planning: never exec it
            name = self.plan["module"]["name"]
            self._start_failed(
                f"refused to start: {changed}; the trust pin covers it (re-pin with "
                f"`las trust {name}` if the change is intended)"
            )
            return None
        env = {v["name"]: v["value"] for v in native["env"]}
        # A sandbox (bwrap) is an argv prefix: it execs the workload's argv inside.
        self.sandboxed = bool(native.get("sandbox"))
        argv = [*native.get("sandbox", ()), *native["argv"]]
        me = self.me
        creds = None
        if native.get("uid") is not None:
            uid, gid = int(native["uid"]), int(native["gid"])
            try:  # resolved here, not in the forked child (no NSS look-ups after fork)
                groups = os.getgrouplist(native["user"], gid)
            except (KeyError, OSError):
                groups = [gid]
            creds = (uid, gid, groups)
        self.creds = creds  # command health probes run as the workload's user too
        res = self.plan["resources"]
        self.attempt.cgroup, limit_notes = cgroups.create(
            self.run_id, memory=res.get("memory"), cpus=res.get("cpus"),
            home=home_label(self.db_path),
        )  # fmt: skip
        cg = self.attempt.cgroup
        procs_file = list(cg.procs_files) if cg else None
        self.sample_memory = (
            res.get("memory") if not (limit_notes.get("memory", "").startswith("cgroup")) else None
        )  # no cgroup enforces it: the supervisor samples the tree's RSS
        pin: list[int] | None = None
        if res.get("cpus") is not None and not limit_notes["cpus"].startswith("cgroup"):
            # No cgroup quota: pin to ceil(cpus) CPUs instead (cgroups.affinity_for).
            pin, limit_notes["cpus"] = cgroups.affinity_for(
                float(res["cpus"]), os.sched_getaffinity(0), limit_notes["cpus"]
            )
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=native.get("workdir"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=lambda: _child_setup(me, procs_file, creds, pin),  # noqa: PLW1509
                close_fds=True,
            )
        except subprocess.SubprocessError as exc:  # the child's setup failed (not the exec)
            user = f" as {native['user']} (uid {native['uid']})" if creds else ""
            reason = f"could not start{user}: the process setup failed: {exc}"
            self._start_failed(reason + self._remove_cgroup(cg))
            return None
        except OSError as exc:
            # Told from the real workdir, shown from the shown plan.
            shown = [*native.get("sandbox", ()), *self.shown["native"]["argv"]]
            reason = describe_start_error(
                exc, shown[0], native.get("workdir"), self.shown["native"].get("workdir")
            )
            self._start_failed(reason + self._remove_cgroup(cg))
            return None
        self.attempt.pid = proc.pid
        self.attempt.pid_start = procs.start_time(proc.pid)
        if pin is not None:
            limit_notes["cpus"] = self._affinity_read_back(proc.pid, pin, limit_notes["cpus"])
        proc.returncode = 0  # reaped by us, not by Popen
        assert proc.stdout is not None and proc.stderr is not None
        streams = {proc.stdout.fileno(): "O", proc.stderr.fileno(): "E"}
        self._watch(streams)
        self._keep = [proc]
        self.handle: dict[str, Any] = {"cgroup": cg.paths if cg else None, "limits": limit_notes}
        return proc.pid, streams, self.handle

    @staticmethod
    def _remove_cgroup(cg: cgroups.RunCgroup | None) -> str:
        """Remove the run's cgroup; what stays, as a reason's suffix ("" when all went)."""
        failed = cg.remove() if cg else []
        return f"; cgroup not removed: {', '.join(failed)}" if failed else ""

    @staticmethod
    def _affinity_read_back(pid: int, pin: list[int], note: str) -> str:
        """The note, unless the workload's affinity is not what the child set (then why)."""
        try:
            got = sorted(os.sched_getaffinity(pid))
        except OSError:  # already gone: the child set it before exec or failed to start
            return note
        if got == pin:
            return note
        why = note.partition("; ")[2]  # "no cgroup CPU quota: ..."
        return (
            f"not enforced: the workload's CPU affinity is cpu {cgroups.cpu_list(got)}, "
            f"not cpu {cgroups.cpu_list(pin)}; {why}"
        )

    def _launch_container(self) -> tuple[int, dict[int, str], dict[str, Any]] | None:
        from localaistack.runtime import engines

        c = self.plan["container"]
        engine = engines.Engine(c["engine"], global_args=c["engine_args"])
        self.engine = engine
        res = self.plan["resources"]
        name = f"las-{self.instance}-{self.run_id}"
        try:
            spec = engines.ContainerRunSpec(
                name=name,
                image=c["image"],
                argv=c["argv"],
                env=[(v["name"], v["value"]) for v in c["env"] if not v.get("secret")],
                secret_env=[(v["name"], v["value"]) for v in c["env"] if v.get("secret")],
                workdir=c.get("workdir"),
                user=c.get("user"),
                volumes=[
                    engines.VolumeMount(v["source"], v["target"], v["read_only"])
                    for v in c["volumes"]
                ],
                ports=[
                    engines.PublishedPort(
                        p["host_ip"], p["host_port"], p["container_port"], p["protocol"]
                    )
                    for p in self.plan["ports"]
                ],
                memory=res.get("memory"),
                cpus=res.get("cpus"),
                pids_limit=int(c.get("pids_limit", 1024)),
                gpus=[(g["vendor"], g["uuid"]) for g in self.plan["gpus"]],
                cap_add=c.get("cap_add", ()),
                read_only_root=bool(c.get("read_only_root", True)),
                labels={
                    "las.instance": self.instance,
                    "las.run": self.run_id,
                    "las.home": home_label(self.db_path),
                },
                ulimits=engines.suggested_ulimits() if engine.name == "podman" else (),
                stop_signal=self.plan["stop"]["signal"],
            )
            cid = self.adopt or engine.run(spec)
            self.adopt = None
        except engines.EngineError as exc:
            self._start_failed(  # the engine's message may quote argv or env: masked
                f"could not start: {self.hide(exc.message)}"
                + (f" ({self.hide(exc.hint)})" if exc.hint else "")
            )
            return None
        self.cid = cid
        # Its helpers (`logs --follow`, `wait`) start once `running` is reported: they are
        # engine CLIs, Go programs that would compete with `las run` for the CPU on its way
        # out. Nothing is missed meanwhile: `logs` replays the output from the start (or
        # from --since), and `wait` on a container that has ended returns its exit at once.
        return (0, {}, {"container": cid, "container_name": name, "engine": engine.name})

    def _follow_container(self) -> tuple[int, dict[int, str]] | None:
        """Start the container's helpers: its output (to the run's log) and its end.

        Returns the ``wait`` helper's pid (its exit is the container's end) and the output
        pipes; None if they cannot start (the engine CLI vanished): the container is then
        removed and the run recorded as failed.
        """
        import subprocess

        from localaistack.runtime import engines

        engine, cid = self.engine, self.cid
        env, cwd = engine.subprocess_env(), engine.cwd
        # The helpers' orphans come back to us. Not before: on the start path the engine's
        # own processes (conmon) are not ours, as after a `podman run -d` by hand.
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        try:
            follow = engine.logs_args(cid, follow=True, since=self.adopt_since)
            logs = self._spawn_helper(follow, env, cwd, True)
            waiter = self._spawn_helper([*engine.base_args(), "wait", cid], env, cwd, False)
        except (OSError, subprocess.SubprocessError, engines.EngineError) as exc:
            with contextlib.suppress(engines.EngineError):
                engine.remove(cid)
            reason = f"lost: cannot follow container {cid[:12]} ({exc}); it was removed"
            self._note(f"las: {reason}")
            self.writer.close()
            self.record("failed", reason, lines_dropped=self.writer.dropped_lines)
            self.report_ready({"state": "failed", "reason": reason})
            return None
        self.adopt_since = None
        assert logs.stdout is not None and logs.stderr is not None
        streams = {logs.stdout.fileno(): "O", logs.stderr.fileno(): "E"}
        self._watch(streams)
        self._keep = [logs, waiter]
        for p in self._keep:
            p.returncode = 0  # reaped by us, not by Popen
        return waiter.pid, streams

    def _record_container_pid(self) -> None:
        """The container's init as the host sees it: what `las ps` shows as its pid.

        Asked after `las run` has been told the container runs: it costs an engine call.
        """
        from localaistack.runtime import engines

        try:
            st = self.engine.inspect(self.cid)
        except engines.EngineError:
            return
        if st is None or not st.pid:
            return
        pid, start = st.pid, procs.start_time(st.pid)
        self.attempt.pid, self.attempt.pid_start = pid, start
        self._write(
            lambda c: c.execute(
                "UPDATE runs SET pid=?, pid_start=? WHERE run_id=?", (pid, start, self.run_id)
            ),
            "container pid",
        )

    def _watch(self, streams: dict[int, str]) -> None:
        for fd in streams:
            os.set_blocking(fd, False)
            # A bigger pipe: a fast writer blocks less often on a full pipe, and each read
            # takes more at once (fewer wake-ups per megabyte).
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
            self.sel.register(fd, selectors.EVENT_READ, "output")

    def _start_failed(self, reason: str) -> None:
        self._note(f"las: {reason}")
        self.writer.close()
        self.record(
            "failed",
            reason,
            lines_dropped=self.writer.dropped_lines,
            sup_pid=self.me,
            sup_start=self.me_start,
        )
        self.report_ready({"state": "failed", "reason": reason})

    def _container_end(
        self, by_request: bool, sig_name: str, last: str
    ) -> tuple[str, str, int | None, str | None]:
        """Final state of the container: exit code, out-of-memory; then remove it."""
        from localaistack.runtime import engines

        engine, cid = self.engine, self.cid
        try:
            st = engine.final_state(cid)
        except engines.EngineError as exc:
            st = None
            why = self.hide(exc.message)  # the engine's words
            last = f"{last}; inspect failed: {why}" if last else why
        with contextlib.suppress(engines.EngineError):
            engine.remove(cid)
        if st is None or st.exit_code is None:
            return "failed", f"lost: the container {cid[:12]} is gone ({last})", None, None
        code = st.exit_code
        sig = procs.signal_name(code - 128) if code > 128 else None
        limit = self.plan["resources"].get("memory")
        oom, how = engine.oom_detected(st, limit)
        if oom and not by_request:
            size = engines.format_bytes(limit or st.memory_limit)
            return "failed", f"out of memory (limit {size}; {how})", code, sig
        tail = f"; {last}" if last else ""
        if by_request:
            if sig == sig_name:
                return "stopped", f"stopped: exited on {sig_name}", code, sig
            if code == 137:
                return (
                    "stopped",
                    f"stopped: did not exit within the stop timeout after "
                    f"{sig_name}; killed with SIGKILL",
                    code,
                    sig,
                )
            return "stopped", f"stopped: exited with code {code} after {sig_name}", code, sig
        if code == 0:
            return "stopped", "exited on its own with code 0", code, sig
        named = f" ({sig})" if sig else ""
        return "failed", f"exited with code {code}{named}{tail}", code, sig

    def _kill_helpers(self) -> None:
        for p in getattr(self, "_keep", []):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        self._keep = []

    def _supervise(self, pid: int, streams: dict[int, str]) -> int:
        """The event loop while the workload runs; returns its wait status."""
        while True:
            now = time.monotonic()
            timers = [
                t
                for t in (
                    self.next_sample,
                    self.next_watch,
                    self.next_home_check,
                    self.next_store_retry,
                    self.stop_deadline,
                    self.next_probe,
                    self.probe.deadline if self.probe else None,
                    self.start_deadline(),
                )
                if t is not None
            ]
            timeout = max(0.0, min(timers) - now) if timers else None
            for key, _ in self.sel.select(timeout):
                if key.data == "output":
                    self._read(key.fd, streams)
                elif key.data == "signal":
                    self._signals()
                elif key.data == "probe" and self.probe is not None:
                    result = self.probe.on_ready()
                    if result is not None:
                        self._probe_done(result)
                    elif self.probe is not None:
                        self.sel.modify(self.probe_fd, self.probe.events, "probe")
            status = self._reap(pid)
            if status is not None:
                return status
            now = time.monotonic()
            if self.stop_deadline is not None and now >= self.stop_deadline:
                self.killed = True
                self.stop_deadline = None
                self._kill_all(pid)  # (then the note: a full disk must not keep the kill)
                self._stop_note("las: stop timeout passed; sent SIGKILL to the process group")
            if self.probe is not None and now >= self.probe.deadline:
                expired = self._cancel_probe(expire=True)
                if expired is not None:
                    self._probe_done(expired)
            deadline = self.start_deadline()
            if deadline is not None and now >= deadline and not self.stopping:
                last = self.health.last_message()
                limit = float(self.health_spec["start_timeout"])  # type: ignore[index]
                self._unhealthy_stop(
                    f"did not become healthy within {limit:g}s (last probe: {last})"
                )
            if self.next_probe is not None and now >= self.next_probe and self.probe is None:
                self._start_probe()
            if self.next_sample is not None and now >= self.next_sample:
                self._sample_memory(pid)
            if self.next_watch is not None and now >= self.next_watch:
                self._watch_tree(pid)
            if self.next_home_check is not None and now >= self.next_home_check:
                self._check_home()
            if self.next_store_retry is not None and now >= self.next_store_retry:
                self._flush_deferred()

    def _allowed_listen(self) -> set[str] | None:
        """Addresses the workload may listen on besides loopback; None: anything goes."""
        hosts = {p["host_ip"] for p in self.plan["ports"]} or {"127.0.0.1"}
        if hosts & {"0.0.0.0", "::"}:
            return None  # the policy exposes this module on every address
        return hosts

    def _watch_setup(self, untracked: bool) -> None:
        """Arm the watch of the run's processes: the listener check (unless the policy
        exposes the module everywhere) and, ``untracked`` (no cgroup), the record of them."""
        self.listen_allowed = self._allowed_listen()
        self.track = untracked
        if self.listen_allowed is None and not untracked:
            return
        self.next_watch = time.monotonic() + WATCH_FIRST

    def _listen_setup(self) -> None:
        """At the first check (off the start path: importing socket costs ~4 ms)."""
        from localaistack.runtime import sockdiag

        self.sockdiag = sockdiag
        self.own_netns = sockdiag.netns_of(self.me)
        # network namespace inode -> its sock_diag socket (None: cannot be made)
        self.dumpers: dict[int | None, sockdiag.Dumper | None] = {}
        self.netns: dict[int, int | None] = {}  # member -> its namespace
        self.foreign: set[int] = set()  # socket inodes on a bad address, not the run's

    def _watch_tree(self, pid: int) -> None:
        """The periodic look at the run's processes (every WATCH_EVERY seconds)."""
        self.next_watch = time.monotonic() + WATCH_EVERY
        cg = self.attempt.cgroup
        members = cg.members() if cg else set(procs.descendants(self.me, self.probe_pids))
        if self.track:
            self._record_members(members - {pid})
        if self.listen_allowed is not None and not self.stopping:
            self._check_listeners(members | {pid})

    def _record_members(self, others: set[int]) -> None:
        """No cgroup: keep the run's processes but the main one (pid, start time) in the
        run's handle, for the next las command to kill should this process die (they have
        no parent-death signal, and would be re-parented to init). Written on a change."""
        if others == set(self.known):
            return
        self.known = {p: self.known.get(p) or procs.start_time(p) for p in others}
        self.handle["descendants"] = sorted([p, s] for p, s in self.known.items() if s)
        handle = json.dumps(self.handle)
        self._write(
            lambda c: c.execute("UPDATE runs SET handle=? WHERE run_id=?", (handle, self.run_id)),
            "the run's processes",
        )

    def _dumper(self, netns: int | None, pid: int) -> Any:
        """The sock_diag socket of a network namespace (made once; None: it cannot be)."""
        if netns in self.dumpers:
            return self.dumpers[netns]
        where = None if netns == self.own_netns else f"/proc/{pid}/ns/net"
        try:
            dumper = self.sockdiag.Dumper(where)
        except OSError as exc:
            dumper = None
            self._note(
                f"las: the listener check cannot see the network namespace of pid {pid}: "
                f"{exc.strerror or exc}"
            )
        self.dumpers[netns] = dumper
        return dumper

    def _check_listeners(self, members: set[int]) -> None:
        """Stop a workload that listens where the policy does not allow (TCP listeners and
        unconnected UDP sockets, IPv4 and IPv6, of any process of the run)."""
        allowed = self.listen_allowed
        assert allowed is not None
        if not hasattr(self, "dumpers"):
            self._listen_setup()
        # The namespaces of the run's processes (a sandbox may give it one of its own).
        self.netns = {p: self.netns.get(p) or self.sockdiag.netns_of(p) for p in members}
        spaces = {self.own_netns: self.me}
        for p, ns in self.netns.items():
            if ns is not None:
                spaces.setdefault(ns, p)
        suspects = []
        for ns, p in spaces.items():
            dumper = self._dumper(ns, p)
            if dumper is None:
                continue
            before = len(dumper.unavailable)
            try:
                found = dumper.listeners()
            except OSError as exc:
                self._note(f"las: the listener check failed: {exc.strerror or exc}")
                self.dumpers[ns] = None
                continue
            if len(dumper.unavailable) > before:  # said once per dump refused
                refused = "; ".join(f"{k}: {v}" for k, v in dumper.unavailable.items())
                self._note(f"las: the listener check cannot see {refused}")
            suspects += [
                s
                for s in found
                if s.addr not in allowed and not s.addr.startswith("127.") and s.addr != "::1"
            ]
        self.foreign &= {s.inode for s in suspects}  # forget sockets that are gone
        new = [s for s in suspects if s.inode not in self.foreign]
        if not new:
            return
        owners = self.sockdiag.socket_inodes(sorted(members))  # only now: a few readlinks
        for s in new:
            owner = owners.get(s.inode)
            if owner is None:
                self.foreign.add(s.inode)  # another program's: not looked at again
                continue
            self.violation = (
                f"listening on {s.shown()} ({s.proto.upper()}, pid {owner}); "
                f"policy allows {', '.join(sorted(allowed))} only"
            )
            self._note(f"las: {self.violation}; stopping it")
            self._begin_stop(reason_text=self.violation)
            return

    def _sample_memory(self, pid: int) -> None:
        """The fallback when no cgroup enforces the memory limit: RSS of the whole tree."""
        limit = self.sample_memory
        assert limit is not None
        cg = self.attempt.cgroup
        members = cg.pids() if cg else procs.descendants(self.me, self.probe_pids)
        rss = cgroups.tree_rss(members)
        if rss > limit and not self.stopping:
            self.sampled_oom = (
                f"out of memory (limit {_size(limit)}; the process tree used "
                f"{_size(rss)}, sampled every {SAMPLE_EVERY:g}s)"
            )
            self._note(f"las: {self.sampled_oom}; killing it")
            self.stopping = True
            self._kill_all(pid)
            self.next_sample = None
            return
        self.next_sample = time.monotonic() + SAMPLE_EVERY

    def _memory_verdict(self, cg: cgroups.RunCgroup | None) -> str | None:
        """Whether the attempt was killed for memory, and how that is known."""
        if self.sampled_oom:
            return self.sampled_oom
        limit = self.plan["resources"].get("memory")
        if cg is None or not limit or self.container:
            return None
        if cg.has_oom_counter():
            if cg.oom_kills() > 0:
                return f"out of memory (limit {_size(limit)}; from the cgroup's OOM kill counter)"
            return None
        if cg.hit_limit():
            return (
                f"out of memory (limit {_size(limit)}; the cgroup's memory use reached its "
                "limit: this kernel has no OOM kill counter)"
            )
        return None

    def start_deadline(self) -> float | None:
        if self.health_spec is None or self.health.state != "starting" or self.stopping:
            return None
        return self.attempt.started + float(self.health_spec["start_timeout"])

    # --- health ------------------------------------------------------------------------

    def _start_probe(self) -> None:
        assert self.health_spec is not None
        self.next_probe = None
        host = next(
            (p["host_ip"] for p in self.plan["ports"] if p["name"] == self.health_spec.get("port")),
            "127.0.0.1",
        )
        from localaistack.runtime import probes  # only supervisors with a probe pay for it

        if self.container:
            spec = dict(self.health_spec)
            if spec["kind"] == "command":
                spec["command"] = self.engine.exec_args(self.cid, spec["command"])
            probe = probes.make_probe(spec, host, self.engine.subprocess_env())
        else:
            env = {v["name"]: v["value"] for v in self.plan["native"]["env"]}
            # As the workload's user, with its privileges and no more, dying with us.
            me, creds = self.me, self.creds
            probe = probes.make_probe(
                self.health_spec, host, env, lambda: _child_setup(me, None, creds)
            )
        result = probe.start()
        child = getattr(probe, "proc", None)
        if child is not None:  # a command probe: its process is no part of the workload
            if len(self.probe_pids) > 16:
                self.probe_pids = {p for p in self.probe_pids if procs.stat(p) is not None}
            self.probe_pids.add(child.pid)
        if result is not None:
            self._probe_done(result)
            return
        self.probe = probe
        self.probe_fd = probe.fileno()
        self.sel.register(self.probe_fd, probe.events, "probe")

    def _cancel_probe(self, expire: bool = False) -> probes.ProbeResult | None:
        """End the probe in flight; with ``expire`` its timeout's result. None: no probe."""
        probe, self.probe = self.probe, None
        if probe is None:  # (no import of the probes module: most workloads have no probe)
            return None
        from localaistack.runtime.probes import ProbeResult

        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.probe_fd)
        if expire:
            return probe.expire()
        probe.close()
        return ProbeResult(False, "cancelled", 0.0)

    def _probe_done(self, result: probes.ProbeResult) -> None:
        result.message = self._shown_probe_message(result.message)
        if self.probe is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.probe_fd)
            self.probe = None
        if self.stopping:
            return
        old, new = self.health.observe(result)
        if new != old or self.health.phase_changed:
            self.health.phase_changed = False
            if new == "healthy":
                self.attempt.healthy_since = time.monotonic()
            elif new == "unhealthy":
                self.attempt.healthy_since = None
            self._record_health(old, new, result)
            if new == "healthy" and old == "starting":
                self.report_ready({"state": "healthy"})
        elif self.health.should_persist():
            self._record_health(old, new, result)
        if new == "unhealthy" and self.restart.get("on_unhealthy"):
            self._unhealthy_stop(f"unhealthy: {result.message}")
            return
        self.next_probe = time.monotonic() + self.health.next_delay(
            time.monotonic() - self.attempt.started
        )

    def _shown_probe_message(self, message: str) -> str:
        """A probe's message as shown. A command probe's names the command (shown from the
        shown plan) or quotes its output (masked by value); an HTTP or TCP probe's holds
        only the plan's address, port and path, where no secret sits."""
        if not self.secrets or self.health_spec is None or self.health_spec["kind"] != "command":
            return message
        real0 = str(self.health_spec["command"][0]) if self.health_spec["command"] else ""
        shown = self.shown.get("health") or {}
        shown0 = str(shown["command"][0]) if shown.get("command") else real0
        head = f"cannot run {real0}: "
        if message.startswith(head):  # CommandProbe: "cannot run ARGV0: why"
            return f"cannot run {shown0}: {self.hide(message[len(head) :])}"
        code, sep, tail = message.partition(": ")
        if sep and code.startswith("exit "):  # "exit N: the output's last line"
            return f"{code}: {self.hide(tail)}"
        return message

    def _record_health(self, old: str, new: str, result: probes.ProbeResult) -> None:
        history = json.dumps([r.as_dict() for r in self.health.history])
        message = f"{new}: {result.message} ({result.latency * 1000:.1f} ms)"

        def write(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE runs SET health=?, probes=? WHERE run_id=?", (new, history, self.run_id)
            )
            if new == "healthy" and old != "healthy":
                c.execute("UPDATE runs SET healthy_at=? WHERE run_id=?", (time.time(), self.run_id))
            if new != old:
                add_event(c, "health", message, instance=self.instance, run_id=self.run_id)

        self._write(write, f"health {new}")
        if new != old:
            self._note(f"las: health {message}")

    def _unhealthy_stop(self, reason: str) -> None:
        self.health_failure = reason
        self._note(f"las: {reason}; stopping")
        self._begin_stop(reason_text=f"{reason}; stopping")

    # --- restarts ----------------------------------------------------------------------

    def restart_delay(self, failure: str) -> float | None:
        """Seconds to wait before the next attempt, or None when the budget is spent."""
        now = time.monotonic()
        self.failures.append(failure)
        window = float(self.restart.get("window", 600.0))
        reset_after = float(self.restart.get("reset_after", 300.0))
        since = self.attempt.healthy_since
        if since is None and self.health_spec is None:
            since = self.attempt.started  # no probe: running counts as healthy
        if since is not None and now - since >= reset_after:
            self.restart_times.clear()  # it was stable long enough: a fresh budget
            self.failures = [failure]
        self.restart_times = [t for t in self.restart_times if now - t < window]
        if len(self.restart_times) >= int(self.restart["max_restarts"]):
            attempts = len(self.restart_times) + 1
            reason = (
                f"restart budget exhausted after {attempts} attempts (first failure: "
                f"{self.failures[0]}; last: {self.failures[-1]})"
            )
            self._write(
                lambda c: c.execute(
                    "UPDATE runs SET reason=? WHERE run_id=?", (reason, self.run_id)
                ),
                "budget",
            )
            self._write(
                lambda c: add_event(
                    c, "failed", reason, instance=self.instance, run_id=self.run_id
                ),
                "budget event",
            )
            self.report_ready({"state": "failed", "reason": reason})
            return None
        n = len(self.restart_times)
        base = float(self.restart["backoff"]) * (2**n)
        jitter = 0.8 + 0.4 * int.from_bytes(os.urandom(2), "big") / 0xFFFF  # no `random` import
        return float(min(base, 300.0) * jitter)

    def wait_to_restart(self, delay: float, failure: str) -> bool:
        """Create the next run, wait the backoff, and return True to start it (False: stop)."""
        run_id = os.urandom(6).hex()  # the same form as las's uuid4().hex[:12]
        log_path = os.path.join(os.path.dirname(self.attempt.log_path), f"{run_id}.log")
        n = len(self.restart_times) + 1
        reason = (
            f"restart {n} of at most {self.restart['max_restarts']} in {delay:.2f}s "
            f"after: {failure}"
        )
        self._write(
            lambda c: create_run(
                c,
                run_id=run_id,
                instance=self.instance,
                backend=self.backend,
                boot_id=self.boot_id,
                log_path=log_path,
                reason=reason,
                sup_pid=self.me,
                sup_start=self.me_start,
            ),
            "restart",
        )
        self.attempt = Attempt(run_id, log_path)
        self.restart_times.append(time.monotonic())
        deadline = time.monotonic() + delay
        while not self.stop_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            for key, _ in self.sel.select(left):
                if key.data == "signal":
                    self._signals()
            self._reap_orphans()
        self.record("stopped", "stopped while waiting to restart")
        self.report_ready({"state": "stopped", "reason": "stopped while waiting to restart"})
        return False

    # --- stopping and reaping ------------------------------------------------------------

    def _signals(self) -> None:
        try:
            sigs = os.read(self.sigfd, 512)
        except BlockingIOError:
            return
        now = STOP_NOW in sigs
        if now or any(b in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) for b in sigs):
            self.stop_requested = True
            if not self.stopping:
                self._begin_stop(now=now)
            else:
                self._stop_sooner(0.0 if now else None)

    def _stop_timeout(self) -> tuple[float, float]:
        """(seconds from now until SIGKILL, the timeout asked) for a stop request.

        The earliest deadline among the requests recorded (``las stop --timeout``: the
        store keeps the earliest, runtime/supervision.py), else the plan's timeout; never
        more than STOP_TIMEOUT_MAX. Read again at every stop signal: a later, shorter
        request moves the deadline earlier (never later).
        """
        asked = float(self.plan["stop"]["timeout"])
        left = asked
        try:
            row = self.store.run(self.run_id)
        except (sqlite3.Error, StoreError):
            row = None  # the store is unreadable: the plan's timeout
        if row is not None and row["stop_timeout"] is not None:
            asked = float(row["stop_timeout"])
            left = asked
            if row["stop_requested"] is not None:  # it counts from the request
                left = min(asked, float(row["stop_requested"]) + asked - time.time())
        if math.isnan(left) or math.isnan(asked):  # never from las, which refuses it
            left = asked = 0.0
        bound = min(max(0.0, left), STOP_TIMEOUT_MAX)
        return bound, min(max(0.0, asked), STOP_TIMEOUT_MAX)

    def _stop_note(self, text: str) -> None:
        """A note of the stop in the run's log; one that cannot be written (a full disk)
        is left out: stopping goes on."""
        with contextlib.suppress(OSError):
            self._note(text)

    def _stop_sooner(self, timeout: float | None) -> None:
        """Another stop request while stopping: its deadline, if earlier, replaces ours."""
        if self.stop_deadline is None:
            return  # SIGKILL was sent already
        left, asked = (timeout, timeout) if timeout is not None else self._stop_timeout()
        deadline = time.monotonic() + left
        if deadline >= self.kill_at:
            return
        # For a container too: at this deadline, `ENGINE kill` (by _supervise), whatever
        # the `ENGINE stop` helper that runs with the longer timeout does.
        self.stop_deadline = self.kill_at = deadline
        what = f"stop requested again: SIGKILL after {asked:g}s"
        self._stop_note(f"las: {what}")
        self.record("stopping", what)

    def _kill_all(self, pid: int) -> None:
        """SIGKILL the workload's group and every other member of the run (its cgroup, and
        our descendants: what left the group came back to us as subreaper).

        While the workload (``pid``) may still be alive: the event loop reaps it; the end
        of the run sweeps (``_sweep``) what is left.
        """
        if self.container and self.cid:
            from localaistack.runtime import engines

            with contextlib.suppress(engines.EngineError):
                self.engine.kill(self.cid)
            return
        # The group id is our own child's pid: while any member lives, the kernel cannot
        # reuse it, so one killpg reaches exactly the workload's group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self._kill_members(exclude=pid)

    def _members(self) -> set[int]:
        """Every process of the run: its cgroup's members, and our descendants but the
        health probes' (zombies too: see ``_kill_members``)."""
        cg = self.attempt.cgroup
        found = cg.members() if cg else set()
        found.update(procs.descendants(self.me, self.probe_pids))
        return found

    def _kill_members(self, exclude: int | None = None) -> int:
        """SIGKILL every live member once (counted as leftovers); returns how many."""
        n = 0
        for member in self._members():
            st = procs.stat(member)
            if member == exclude or st is None or st.state == "Z":
                continue  # a zombie runs nothing: its parent (or we) will reap it
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
                self.leftovers.add(member)
                n += 1
        cg = self.attempt.cgroup
        if cg is not None and cg.version == "v2" and n:
            with contextlib.suppress(OSError):  # kernel 5.14+: forks since the look too
                cgroups._write(os.path.join(cg.path, "cgroup.kill"), "1")
        return n

    def _sweep(self) -> None:
        """The end of a run (the workload has been reaped): SIGKILL what is left of it, and
        again what it forked meanwhile, until nothing is left (at most SWEEP_LIMIT)."""
        deadline = time.monotonic() + SWEEP_LIMIT
        while True:
            n = self._kill_members()
            self._reap_orphans()
            if n == 0:
                return
            if time.monotonic() > deadline:
                self._note(f"las: processes of the run still alive after {SWEEP_LIMIT:g}s "
                           "of SIGKILL")  # fmt: skip
                return
            time.sleep(0.005)

    def _stop_grace(self, streams: dict[int, str]) -> None:
        """On a stop, the workload exited before the stop timeout: the rest of the run (it
        had the stop signal too) gets until the same deadline to exit, then the sweep."""
        if not self.stopping or self.killed or self.stop_deadline is None:
            return
        deadline = self.stop_deadline
        while time.monotonic() < deadline:
            self._reap_orphans()
            if not any(
                (st := procs.stat(p)) is not None and st.state != "Z" for p in self._members()
            ):
                return
            left = max(0.0, min(0.05, deadline - time.monotonic()))
            for key, _ in self.sel.select(left):
                if key.data == "output":
                    self._read(key.fd, streams)
                elif key.data == "signal":
                    self._signals()

    def _read(self, fd: int, streams: dict[int, str]) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        stream = streams[fd]
        if not data:
            self.writer.flush_partial(stream)
            self.sel.unregister(fd)
            del streams[fd]
            return
        self.writer.feed(stream, data)
        # Keep the end of each stream (bounded, a small copy) for the failure reason.
        tail = self.last_lines.get(stream, b"") + data[-TAIL_BYTES:]
        self.last_lines[stream] = tail[-TAIL_BYTES:]

    def _last_line(self) -> str:
        """What to quote from the workload's last output: its first error among the last
        lines (a crash's cause usually precedes its epilogue), else its last line."""
        raw = self.last_lines.get("E") or self.last_lines.get("O") or b""
        lines = [x.strip() for x in raw.decode("utf-8", "replace").splitlines() if x.strip()]
        if not lines:
            return ""
        recent = lines[-20:]
        # Quoted: masked by value before it is cut (a cut must not leave part of a secret).
        for line in recent[:-1]:
            if ERROR_LINE.search(line):
                return f"error: {self.hide(line)[:300]}"
        return f"last output: {self.hide(recent[-1])[:300]}"

    def _begin_stop(self, reason_text: str | None = None, now: bool = False) -> None:
        if self.stopping or (self.pid is None and not self.cid):
            return
        self.stopping = True
        self._cancel_probe()
        self.next_probe = None
        left, timeout = (0.0, 0.0) if now else self._stop_timeout()
        if reason_text is not None:  # las's own stop (unhealthy, a violation): the plan's
            left = timeout = min(float(self.plan["stop"]["timeout"]), STOP_TIMEOUT_MAX)
        sig_name = self.plan["stop"]["signal"]
        what = reason_text or "stop requested"
        # The signal first, the record after: a store that cannot be written (a full disk)
        # may delay the record, never the stop.
        if self.container:
            # `ENGINE stop` sends the stop signal set at `run` and SIGKILLs after the timeout;
            # run it as a helper so the loop keeps reading logs meanwhile.
            engine = self.engine
            self._keep.append(
                self._spawn_helper(
                    [*engine.base_args(), "stop", "-t", str(max(0, round(left))), self.cid],
                    engine.subprocess_env(),
                    engine.cwd,
                    False,
                )
            )
            self._keep[-1].returncode = 0
            self.kill_at = time.monotonic() + left  # when the engine SIGKILLs it
            self.stop_deadline = self.kill_at + 15.0  # then kill it ourselves
        else:
            sig = getattr(signal, sig_name)
            assert self.pid is not None
            if not self.sandboxed:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, sig)  # our live child leads the group
            # Then every other member of the run, once: those that left the group too (the
            # cgroup's, our descendants). bwrap (our child) dies on the stop signal and,
            # with --die-with-parent, SIGKILLs the workload at once: it gets none.
            for member in self._members():
                st = procs.stat(member)
                if st is None or st.state == "Z" or member == self.pid:
                    continue
                if st.pgid == self.pid and not self.sandboxed:
                    continue  # the killpg reached it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member, sig)
            self.stop_deadline = self.kill_at = time.monotonic() + left
        self._stop_note(f"las: {what}: sending {sig_name} to the process group")
        self.record("stopping", f"{what}: sending {sig_name}, SIGKILL after {timeout:g}s")

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


class Health:
    """The health state machine of one attempt (no I/O: the supervisor does that).

    ``unknown`` when no probe is declared. Otherwise ``starting`` until the first success
    (probing after 20 ms, backing off to every 50 ms for the first 10 s, then up to
    min(interval, 1 s)), then ``healthy``; in the liveness phase a probe runs every
    ``interval``, ``failure_threshold`` consecutive failures make it ``unhealthy`` and one
    success makes it ``healthy`` again.
    """

    HISTORY = 10

    def __init__(self, spec: dict[str, Any] | None) -> None:
        self.spec = spec
        self.reset()

    def reset(self) -> None:
        self.state = "unknown" if self.spec is None else "starting"
        self.failures = 0
        self.startup_probes = 0
        self.history: list[probes.ProbeResult] = []
        self.phase_changed = False
        self._persisted_at = 0.0

    def observe(self, result: probes.ProbeResult) -> tuple[str, str]:
        assert self.spec is not None
        old = self.state
        self.history = [*self.history[-(self.HISTORY - 1) :], result]
        if result.ok:
            self.failures = 0
            self.state = "healthy"
        elif self.state == "starting":
            self.startup_probes += 1
        else:
            self.failures += 1
            if self.failures >= int(self.spec["failure_threshold"]):
                self.state = "unhealthy"
        return old, self.state

    def should_persist(self) -> bool:
        """Liveness probes are saved at most once per interval (startup ones never)."""
        if self.state == "starting" or self.spec is None:
            return False
        now = time.monotonic()
        if now - self._persisted_at >= float(self.spec["interval"]) * 0.9:
            self._persisted_at = now
            return True
        return False

    def next_delay(self, since_start: float) -> float:
        assert self.spec is not None
        interval = float(self.spec["interval"])
        if self.state == "starting":
            cap = 0.05 if since_start < 10 else min(interval, 1.0)
            return float(min(0.02 * (1.5 ** min(self.startup_probes, 20)), cap))
        return interval

    def last_message(self) -> str:
        return self.history[-1].message if self.history else "no probe completed"


USAGE = (
    "usage: python -m localaistack.runtime.supervisor --db DB --run RUN_ID [--ready-fd FD] "
    "[--go-fd FD] [--adopt CONTAINER_ID --since TIME]"
)


def _parse_args(argv: list[str]) -> dict[str, str]:
    """``--name value`` pairs (no argparse: it costs the long-lived supervisor memory)."""
    if len(argv) % 2 or not all(a.startswith("--") for a in argv[::2]):
        raise SystemExit(USAGE)
    args = {k[2:]: v for k, v in zip(argv[::2], argv[1::2], strict=True)}
    if not {"db", "run"} <= set(args) or not set(args) <= {
        "db",
        "run",
        "ready-fd",
        "go-fd",
        "adopt",
        "since",
    }:
        raise SystemExit(USAGE)
    return args


def _wait_for_go(fd: int, store: Store, run_id: str) -> bool:
    """Block until ``las`` says go (its run is recorded): True; or it gave up: False.

    ``las`` starts the supervisor before it plans, so that this process starts while the
    plan is made and admitted. If ``las`` closes the pipe instead (a refusal, or ``las``
    was killed), nothing is started; a run that was recorded all the same ends failed.
    """
    with os.fdopen(fd, "rb") as go:
        if go.readline().strip() == b"go":
            return True
    with store.transaction() as c:
        row = c.execute("SELECT state FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is not None and row[0] == "starting":
            set_run_state(c, run_id, "failed", "lost: las exited before the run was started")
    if row is None:  # nothing was recorded: leave no trace (this log file included)
        run_dir = os.path.join(os.path.dirname(os.path.abspath(store.path)), "runs", run_id)
        with contextlib.suppress(OSError):
            for name in os.listdir(run_dir):
                os.unlink(os.path.join(run_dir, name))
            os.rmdir(run_dir)
    return False


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    store = Store(args["db"])  # opened before the wait: it is on the start path after it
    go = args.get("go-fd")
    if go is not None:
        # Also before the wait (idle time while `las` plans): what a container run needs at
        # once after it, the engine layer, hashlib (its labels) and socket (the engine's
        # API; ~4 ms for its enums alone), ~15 ms and a few hundred kB together.
        import hashlib  # noqa: F401
        import socket  # noqa: F401

        from localaistack.runtime import engines  # noqa: F401

        if not _wait_for_go(int(go), store, args["run"]):
            store.close()
            return 0
    ready = args.get("ready-fd")
    sup = Supervisor(store, args["run"], int(ready) if ready else None)
    sup.adopt, sup.adopt_since = args.get("adopt"), args.get("since")
    try:
        return sup.run()
    except BaseException as exc:
        # A bug in the supervisor: leave nothing running and record why; the traceback
        # goes to the supervisor's own log file.
        if sup.pid is not None:
            sup._kill_all(sup.pid)
            if not sup.container:
                with contextlib.suppress(Exception):
                    sup._sweep()
        reason = f"lost: the supervisor failed: {type(exc).__name__}: {sup.hide(str(exc))}"
        try:
            sup.record("failed", reason)
            with sup.store.transaction() as c:
                add_event(c, "supervisor-error", reason, instance=sup.instance, run_id=sup.run_id)
        finally:
            sup.report_ready({"state": "failed", "reason": reason})
        if not isinstance(exc, Exception):
            raise
        # The traceback goes to the supervisor's own log, with the secrets masked.
        import traceback

        print(sup.hide(traceback.format_exc()), file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
