"""The per-run supervisor: the shim between las and one run's backend.

Started by ``las`` as ``python -S -c "...from localaistack.runtime.supervisor import
main..." --db DB --run RUN_ID --ready-fd FD`` (runtime/spawn.py) in a session of its own,
it outlives the ``las`` command. How the run is executed is its backend's (the runs.backend
column: runtime/backends/, the interface in runtime/backend.py); everything else is here:

* start the run through the backend, record it ``running`` with the backend's handle, and
  report ``running`` (or ``failed``, with the reason) on the ready pipe, ``healthy`` later
  when the plan has a health probe and the caller waits for it;
* capture the output the backend attaches (the workload's pipes, or the engine's log of
  it) into the run's log file, never blocking the workload on a full disk (lost lines are
  counted);
* run the health probe (non-blocking, in the same event loop; set up by the backend: a
  container's command probe runs in it) and record transitions;
* on SIGTERM (what ``las stop`` sends it), ask the backend to stop the run with the plan's
  signal, wait the stop timeout (the engine's own kill, where the engine stops it), then
  have the backend SIGKILL it, and record which of the two ended it;
* reap its children (it is their subreaper: the backend's main child's exit is the run's
  end), let the backend sweep what is left and clean up, compose the exit's reason (one
  function: ``backend.describe_exit``) and record it durably (a write the store refuses, a
  full disk, is kept and retried until it is committed: ``record``);
* where the backend shows the run's processes (``capabilities.sees_processes``), check
  their listening sockets once a second (sock_diag: TCP and UDP, IPv4 and IPv6) against
  the policy, sample their memory where no kernel limit holds, and store the handle again
  when the backend's state changes (``watch``), for the next ``las`` command should this
  process die;
* stop the run when its home is lost (its state database removed or replaced, looked at
  every second: ``_check_home``), since no las command could see it any more;
* when the plan asks for restarts, start the next run (a new run id) after a
  bounded, growing backoff.

``--adopt RUN_ID --since TIME`` re-attaches to a run whose supervisor died, through the
backend's ``recover`` and the handle stored for it (a container outlives its supervisor).

It sleeps in ``select`` while nothing happens, but for the probe's cadence, the once-a-second
watch above, and a memory sampler where no cgroup can enforce a limit. Standard library
only, and it imports as little as it can: it starts often and lives long.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import selectors
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from localaistack.errors import RecoveryFailed, StartFailed, StoreError
from localaistack.runtime import backends, cgroups, procs
from localaistack.runtime.backend import (
    Attachment,
    Backend,
    ExitStatus,
    Handle,
    RunContext,
    Started,
    describe_exit,
    format_size,
)
from localaistack.runtime.logs.writer import LogWriter
from localaistack.store import secrets
from localaistack.store.db import (
    FINAL_STATES,
    Store,
    Transaction,
    add_event,
    create_run,
    run_state,
    set_run_handle,
    set_run_health,
    set_run_pid,
    set_run_reason,
    set_run_state,
)

if TYPE_CHECKING:
    from localaistack.runtime import probes

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


class RunState:
    """The run this supervisor executes now (a restart is a new run, with a new one)."""

    def __init__(self, run_id: str, log_path: str) -> None:
        self.run_id = run_id
        self.log_path = log_path
        self.pid: int | None = None
        self.pid_start: int | None = None
        self.started = 0.0  # monotonic
        self.healthy_since: float | None = None  # monotonic

    def __repr__(self) -> str:
        return f"<RunState run={self.run_id} pid={self.pid}>"


class Supervisor:
    """Supervises one instance's runs: the first, and restarts when the plan asks for them."""

    def __init__(self, store: Store, run_id: str, ready_fd: int | None) -> None:
        self.db_path = str(store.path)
        self.ready_fd = ready_fd
        self.store = store
        run = self.store.run(run_id)
        if run is None:
            raise SystemExit(f"supervisor: no run {run_id} in {store.path}")
        inst = self.store.instance(run.instance)
        assert inst is not None
        self.instance = str(inst.name)
        self.boot_id = str(run.boot_id)
        # The stored plan is the plan as shown (its secrets masked where they sit): the real
        # values come from the instance's secrets file. What this process writes is composed
        # from the shown plan; only what it quotes from elsewhere is masked by value (hide).
        hidden = secrets.read(os.path.dirname(os.path.abspath(store.path)), self.instance)
        stored = inst.plan_data()
        self.secrets: list[str] = list(hidden["values"]) if hidden else []
        self.shown: dict[str, Any] = secrets.repaired(stored, hidden)
        self.plan: dict[str, Any] = secrets.reveal(stored, hidden)
        self.health_spec: dict[str, Any] | None = self.plan.get("health")
        self.restart: dict[str, Any] = self.plan["restart"]
        self.current = RunState(run_id, str(run.log_path))
        self.me = os.getpid()
        self.me_start = procs.start_time(self.me)
        self.stop_requested = False
        self.stopping = False
        self.killed = False
        self.stop_deadline: float | None = None
        self.kill_at = 0.0  # while stopping: when SIGKILL is due (monotonic)
        self.last_lines: dict[str, bytes] = {}
        self.failures: list[str] = []  # reasons of the failed runs, in order
        self.restart_times: list[float] = []  # monotonic times of restarts in the window
        self.health = Health(self.health_spec)
        self.probe: probes.Probe | None = None
        self.probe_fd = -1
        self.next_probe: float | None = None
        self.health_failure: str | None = None  # why we stopped it (start timeout, unhealthy)
        self.sel = selectors.DefaultSelector()
        self.reported_running = False
        self.backend_name = str(run.backend)  # runtime/backends: the registry's name
        self.backend: Backend | None = None  # the current run's, while it is started
        self.caps = backends.get(self.backend_name).capabilities
        self.adopt: str | None = None  # re-attach to the run's stored handle (--adopt)
        self.adopt_since: str | None = None
        self.probe_pids: set[int] = set()  # command probes: ours, not the workload's
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
        return f"<Supervisor instance={self.instance} {self.current!r} stopping={self.stopping}>"

    @property
    def run_id(self) -> str:
        return self.current.run_id

    @property
    def pid(self) -> int | None:
        return self.current.pid

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

        def action(c: Transaction) -> None:
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
                    add_event(
                        c,
                        "store-late",
                        f"state changes from {since} UTC on were "
                        f"recorded late: {self.store_trouble}",
                        instance=self.instance,
                        run_id=self.run_id,
                    )
        except StoreError as exc:
            if self.store_trouble is None:
                self.store_trouble = str(exc)
                self.trouble_since = time.time()
                self._say(
                    f"las: could not record {self.deferred[0][1]}: {exc}; retrying "
                    f"every {STORE_RETRY_MAX:g}s at most until it can"
                )
            else:
                self.retry_wait = min(self.retry_wait * 2, STORE_RETRY_MAX)
            self.next_store_retry = time.monotonic() + self.retry_wait
            return False
        if self.store_trouble:
            self._say(
                f"las: recorded {len(self.deferred)} state change(s) late ({self.store_trouble})"
            )
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

        One ``stat``: the event loop calls it every ``HOME_CHECK_EVERY``.
        """
        if self.home_lost is not None:
            return self.home_lost
        try:
            st = os.stat(self.db_path)
        except FileNotFoundError:
            home = os.path.dirname(self.db_path)
            self.home_lost = (
                f"its LAS_HOME {home} was removed"
                if not os.path.isdir(home)
                else f"its state database {self.db_path} was removed"
            )
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
        while True:
            failure = self.run_once()
            if failure is None:
                return 0
            delay = self.restart_delay(failure)
            if delay is None:
                return 0
            if not self.wait_to_restart(delay, failure):
                return 0

    def run_once(self) -> str | None:
        """Start the workload, supervise it until it ends, record the end.

        Returns the failure's reason when the plan's restart policy asks for a restart,
        else None (the end is final).
        """
        logs = self.plan["logs"]
        self.writer = LogWriter(self.current.log_path, max_size=logs["max_size"], keep=logs["keep"])
        self.stopping = self.killed = False
        self.stop_deadline = None
        self.health_failure = None
        self.sampled_oom: str | None = None
        self.sample_memory: int | None = None
        self.next_sample: float | None = None
        self.violation: str | None = None
        self.next_watch: float | None = None
        self.probe_pids.clear()
        self.last_lines = {}
        if self._home_lost() is not None:  # lost while waiting to restart: start nothing
            self._say(f"las: {self.home_lost}; not starting the workload again")
            return None
        backend = backends.create(
            self.backend_name,
            RunContext(
                run_id=self.run_id,
                instance=self.instance,
                plan=self.plan,
                shown=self.shown,
                db_path=self.db_path,
                shim_pid=self.me,
                own_pids=self.probe_pids,
                hide=self.hide,
                note=self._note,
            ),
        )
        started = self._start(backend)
        if started is None:
            return None  # could not start: recorded; a workload that cannot start is not restarted
        self.backend = backend
        self.current.pid, self.current.pid_start = started.pid, started.pid_start
        attached: Attachment | None = None
        if self.caps.output == "pipes":  # the workload's own pipes: read from the start
            attached = backend.attach()
            self._watch(attached.outputs)
        self.current.started = time.monotonic()
        self.health.reset()
        fields: dict[str, Any] = {"health": self.health.state}
        self.record(
            "running",
            f"started {started.what}",
            pid=self.current.pid,
            pid_start=self.current.pid_start,
            started_at=time.time(),
            sup_pid=self.me,
            sup_start=self.me_start,
            handle=started.handle.to_json(),
            **fields,
        )
        if not self.reported_running:
            self.reported_running = True
            waits_for_health = self.health_spec is not None
            self.report_ready(
                {"state": "running", "pid": self.current.pid}, close=not waits_for_health
            )
        if attached is None:
            # Helpers (the engine's `logs --follow` and `wait`) once `las run` was told.
            attached = self._attach(backend)
            if attached is None:
                return None  # recorded: what was started is removed, nothing to restart
            self._record_host_pid(backend)
        self.sample_memory = backend.unenforced_memory()
        if self.sample_memory:
            self.next_sample = time.monotonic()
        if self.caps.sees_processes:
            self._watch_setup(backend.watches())
        if self.stop_requested:
            self._begin_stop()
        elif self.health_spec is not None:
            self.next_probe = time.monotonic()
        self.next_home_check = time.monotonic() + HOME_CHECK_EVERY

        streams = dict(attached.outputs)
        status = self._supervise(attached.wait_pid, streams)
        self.next_home_check = None
        self._cancel_probe()
        self.next_probe = None

        # The workload is gone: end what is left of the run (the rest of it gets until the
        # stop deadline, then the backend's sweep), then read what it wrote until the pipes
        # close (a container's `logs --follow` ends by itself once the container stopped).
        self.next_watch = None
        self._stop_grace(streams)
        leftovers = backend.sweep()
        deadline = time.monotonic() + DRAIN_AFTER_EXIT
        while streams and time.monotonic() < deadline:
            for key, _ in self.sel.select(max(0.0, deadline - time.monotonic())):
                if key.data == "output":
                    self._read(key.fd, streams)
                elif key.data == "signal":
                    self._signals()
            procs.reap_children()
        for fd, stream in list(streams.items()):
            self.writer.flush_partial(stream)
            self.sel.unregister(fd)
        backend.detach()
        procs.reap_children()
        ex = backend.exit_status(status)
        state, reason, code, sig = self._end_reason(ex)
        if leftovers:
            reason += f"; {leftovers} leftover process(es) killed"
        # Before the record, so that what stays (a cgroup's directory) is in the reason.
        for left in backend.cleanup():
            reason += f"; {left}"
        self.backend = None
        self.writer.settle()  # a record cut short by a full disk, completed if it fits now
        dropped = self.writer.dropped_lines  # the workload's lines (not our final note)
        if dropped:
            reason += f"; {dropped} log line(s) could not be written"
        policy = self.restart["policy"]
        # always/unless-stopped: also after a clean exit (Docker's semantics); never after a
        # `las stop` or a policy violation (it would do it again).
        restart = (
            not self.stop_requested
            and self.violation is None
            and (
                (state == "failed" and policy in ("on-failure", "always", "unless-stopped"))
                or (
                    state == "stopped"
                    and not self.stopping
                    and policy in ("always", "unless-stopped")
                )
                or (
                    state == "failed"
                    and self.health_failure is not None
                    and bool(self.restart.get("on_unhealthy"))
                )
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

    def _end_reason(self, ex: ExitStatus) -> tuple[str, str, int | None, str | None]:
        """Final state, reason, exit code and signal of the run: its exit as the backend
        tells it (backend.describe_exit), unless las ended it for a cause of its own."""
        by_request = (
            self.stopping
            and self.health_failure is None
            and self.sampled_oom is None
            and self.violation is None
        )
        sig_name = self.plan["stop"]["signal"]
        state, reason = describe_exit(ex, by_request, self.killed, sig_name, self._last_line())
        if self.violation is not None:
            state, reason = "failed", self.violation  # never restarted: it would do it again
        elif self.health_failure is not None:
            state, reason = "failed", self.health_failure
        elif self.sampled_oom is not None:
            state, reason = "failed", self.sampled_oom
        if self.home_lost is not None:
            reason += f" (stopped by las: {self.home_lost})"
        return state, reason, ex.code, ex.signal

    def _start(self, backend: Backend) -> Started | None:
        """Start the run, or re-attach to it (``--adopt``); None: it failed (recorded)."""
        try:
            if self.adopt is None:
                return backend.start()
            self.adopt = None
            row = self.store.run(self.run_id)
            backend.recover(Handle.load(row.handle if row else None, self.backend_name))
            return backend.current()
        except StartFailed as exc:
            self._start_failed(exc.message)
        except RecoveryFailed as exc:
            self._start_failed(f"lost: {exc.message}")
        return None

    def _attach(self, backend: Backend) -> Attachment | None:
        """What to wait on and read; None: it cannot be followed (recorded as failed)."""
        try:
            attached = backend.attach(self.adopt_since)
        except StartFailed as exc:
            self.backend = None
            self._note(f"las: {exc.message}")
            self.writer.close()
            self.record("failed", exc.message, lines_dropped=self.writer.dropped_lines)
            self.report_ready({"state": "failed", "reason": exc.message})
            return None
        self.adopt_since = None
        self._watch(attached.outputs)
        return attached

    def _record_host_pid(self, backend: Backend) -> None:
        """The run's main process as the host sees it, where the start did not tell it
        (a container's init): what `las ps` shows as its pid. Costs an engine call: asked
        after `las run` has been told the run is running."""
        found = backend.host_pid()
        if found is None:
            return
        pid, start = found
        self.current.pid, self.current.pid_start = pid, start
        self._write(lambda c: set_run_pid(c, self.run_id, pid, start), "the run's pid")

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
                self._kill()  # (then the note: a full disk must not keep the kill)
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
        """At the first check: off the start path (importing socket is not free)."""
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
        assert self.backend is not None
        if self.track:
            handle = self.backend.watch(pid)
            if handle is not None:  # for the next las command, should this process die
                text = handle.to_json()
                self._write(lambda c: set_run_handle(c, self.run_id, text), "the run's processes")
        if self.listen_allowed is not None and not self.stopping:
            self._check_listeners(self.backend.members() | {pid})

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
        assert self.backend is not None
        rss = cgroups.tree_rss(sorted(self.backend.members()))
        if rss > limit and not self.stopping:
            self.sampled_oom = (
                f"out of memory (limit {format_size(limit)}; the process tree used "
                f"{format_size(rss)}, sampled every {SAMPLE_EVERY:g}s)"
            )
            self._note(f"las: {self.sampled_oom}; killing it")
            self.stopping = True
            self.backend.kill()
            self.next_sample = None
            return
        self.next_sample = time.monotonic() + SAMPLE_EVERY

    def start_deadline(self) -> float | None:
        if self.health_spec is None or self.health.state != "starting" or self.stopping:
            return None
        return self.current.started + float(self.health_spec["start_timeout"])

    # --- health ------------------------------------------------------------------------

    def _start_probe(self) -> None:
        assert self.health_spec is not None
        self.next_probe = None
        host = next(
            (p["host_ip"] for p in self.plan["ports"] if p["name"] == self.health_spec.get("port")),
            "127.0.0.1",
        )
        from localaistack.runtime import probes  # only supervisors with a probe pay for it

        assert self.backend is not None
        spec, env, preexec = self.backend.probe_setup(self.health_spec)
        probe = probes.make_probe(spec, host, env, preexec)
        result = probe.start()
        child = getattr(probe, "proc", None)
        if child is not None:  # a command probe: its process is no part of the workload
            if len(self.probe_pids) > 16:
                self.probe_pids -= {p for p in self.probe_pids if procs.stat(p) is None}
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
                self.current.healthy_since = time.monotonic()
            elif new == "unhealthy":
                self.current.healthy_since = None
            self._record_health(old, new, result)
            if new == "healthy" and old == "starting":
                self.report_ready({"state": "healthy"})
        elif self.health.should_persist():
            self._record_health(old, new, result)
        if new == "unhealthy" and self.restart.get("on_unhealthy"):
            self._unhealthy_stop(f"unhealthy: {result.message}")
            return
        self.next_probe = time.monotonic() + self.health.next_delay(
            time.monotonic() - self.current.started
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

        def write(c: Transaction) -> None:
            became = time.time() if new == "healthy" and old != "healthy" else None
            set_run_health(c, self.run_id, new, history, healthy_at=became)
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
        """Seconds to wait before the next run, or None when the budget is spent."""
        now = time.monotonic()
        self.failures.append(failure)
        window = float(self.restart.get("window", 600.0))
        reset_after = float(self.restart.get("reset_after", 300.0))
        since = self.current.healthy_since
        if since is None and self.health_spec is None:
            since = self.current.started  # no probe: running counts as healthy
        if since is not None and now - since >= reset_after:
            self.restart_times.clear()  # it was stable long enough: a fresh budget
            self.failures = [failure]
        self.restart_times = [t for t in self.restart_times if now - t < window]
        if len(self.restart_times) >= int(self.restart["max_restarts"]):
            runs = len(self.restart_times) + 1
            reason = (
                f"restart budget exhausted after {runs} attempts (first failure: "
                f"{self.failures[0]}; last: {self.failures[-1]})"
            )
            self._write(
                lambda c: set_run_reason(c, self.run_id, reason),
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
        log_path = os.path.join(os.path.dirname(self.current.log_path), f"{run_id}.log")
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
                backend=self.backend_name,
                boot_id=self.boot_id,
                log_path=log_path,
                reason=reason,
                sup_pid=self.me,
                sup_start=self.me_start,
            ),
            "restart",
        )
        self.current = RunState(run_id, log_path)
        self.restart_times.append(time.monotonic())
        deadline = time.monotonic() + delay
        while not self.stop_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            for key, _ in self.sel.select(left):
                if key.data == "signal":
                    self._signals()
            procs.reap_children()
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
        except StoreError:
            row = None  # the store is unreadable: the plan's timeout
        if row is not None and row.stop_timeout is not None:
            asked = float(row.stop_timeout)
            left = asked
            if row.stop_requested is not None:  # it counts from the request
                left = min(asked, float(row.stop_requested) + asked - time.time())
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

    def _kill(self) -> None:
        """SIGKILL the run now (all of it: the backend knows what that is)."""
        if self.backend is not None:
            self.backend.kill()

    def _stop_grace(self, streams: dict[int, str]) -> None:
        """On a stop, the workload exited before the stop timeout: the rest of the run (it
        had the stop signal too) gets until the same deadline to exit, then the sweep."""
        if not self.stopping or self.killed or self.stop_deadline is None or not self.backend:
            return
        deadline = self.stop_deadline
        while time.monotonic() < deadline:
            procs.reap_children()
            members = self.backend.members()
            if not any((st := procs.stat(p)) is not None and st.state != "Z" for p in members):
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
        if self.stopping or self.backend is None:
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
        assert self.backend is not None
        self.backend.stop(sig_name, left)
        self.stop_deadline = self.kill_at = time.monotonic() + left
        # Where the backend SIGKILLs at kill_at itself (an engine), ours comes after it.
        self.stop_deadline = self.kill_at + self.caps.kill_after
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


class Health:
    """The health state machine of one run (no I/O: the supervisor does that).

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
    "[--go-fd FD] [--adopt RUN_ID --since TIME]"
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
        state = run_state(c, run_id)
        if state == "starting":
            set_run_state(c, run_id, "failed", "lost: las exited before the run was started")
    if state is None:  # nothing was recorded: leave no trace (this log file included)
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
        # Also before the wait (idle time while `las` plans): what a start of each backend
        # needs at once after it, so that importing it is off the start path.
        for name in backends.REGISTRY:
            backends.get(name).preload()

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
        if sup.backend is not None:
            with contextlib.suppress(Exception):
                sup.backend.kill()
                sup.backend.sweep()
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
