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
* on SIGTERM (what ``las stop`` sends it), sends the plan's stop signal to the group and the
  cgroup, waits the stop timeout, then SIGKILLs them, and records which of the two ended it;
* reaps the workload, kills what is left of its tree, and records the end durably;
* when the plan asks for restarts, starts the next attempt (a run of its own) after a
  bounded, growing backoff.

For a container it drives the engine instead (create and start through its API, or
``run -d``; then the CLI's ``logs --follow``, ``wait``, ``stop``, ``inspect``, ``rm``), with
the same states, logs, probes and restarts; it becomes child subreaper only once the
container runs (the engine's own processes are not its children, as after a ``run -d`` by
hand). ``--adopt CONTAINER --since TIME`` follows a container whose supervisor died.

It sleeps in ``select`` while nothing happens: no polling (only the probe's cadence, and a
memory sampler where no cgroup can enforce a limit). Standard library only, and it imports
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
from localaistack.runtime.logfile import LogWriter
from localaistack.store import secrets
from localaistack.store.db import Store, add_event, create_run, home_label, set_run_state

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
# When to look at the workload's listening sockets: seconds after its start, then at the
# health cadence (every 30 s without a probe).
LISTEN_CHECKS = (0.5, 2.0, 5.0)
SAMPLE_EVERY = 0.5  # seconds between RSS samples, only where no cgroup enforces a limit
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
        # The stored plan has its secrets masked: the real values come from the instance's
        # secrets file, and are masked again in every line this process writes.
        hidden = secrets.read(os.path.dirname(os.path.abspath(store.path)), self.instance)
        self.secrets: list[str] = list(hidden["values"]) if hidden else []
        self.plan: dict[str, Any] = secrets.reveal(json.loads(inst["plan"]), hidden)
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
        """``text`` with the plan's secret values shown as ``***``."""
        return secrets.mask(text, self.secrets) if self.secrets else text

    def _note(self, text: str) -> None:
        """A line of las's own in the run's log (secrets masked)."""
        self.writer.note(self.hide(text))

    def report_ready(self, message: dict[str, Any], *, close: bool = True) -> None:
        """Tell the waiting `las run` (if any) how the start went."""
        if self.ready_fd is None:
            return
        message = {k: self.hide(v) if isinstance(v, str) else v for k, v in message.items()}
        try:
            os.write(self.ready_fd, (json.dumps(message) + "\n").encode())
        except OSError:
            close = True  # las went away (killed, or --detach): nobody waits any more
        if close:
            os.close(self.ready_fd)
            self.ready_fd = None

    def record(self, state: str, reason: str | None, **fields: Any) -> None:
        """Record a state change; a store that cannot be written never stops supervision.

        Retries for a few seconds (the database may be locked, or the disk briefly full);
        then says so in the run's log and in the supervisor's own log and carries on. The
        next `las` command's reconciliation records what the store missed.
        """
        if reason is not None:
            reason = self.hide(reason)
        self._write(
            lambda c: set_run_state(c, self.run_id, state, reason, **fields),
            f"state {state!r} ({reason})",
        )

    def _write(self, action: Any, what: str) -> None:
        deadline = time.monotonic() + 5.0
        while True:
            try:
                with self.store.transaction() as c:
                    action(c)
                return
            except (sqlite3.Error, StoreError) as exc:
                if time.monotonic() > deadline:
                    msg = self.hide(f"las: could not record {what}: {exc}")
                    print(msg, file=sys.stderr, flush=True)
                    with contextlib.suppress(Exception):
                        self.writer.note(msg)
                    return
                time.sleep(0.1)

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
        self.next_listen_check: float | None = None
        self.listen_checks = 0
        self.last_lines = {}
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
            if self._allowed_listen() is not None:  # something to check
                self.next_listen_check = time.monotonic() + LISTEN_CHECKS[0]
        if self.stop_requested:
            self._begin_stop()
        elif self.health_spec is not None:
            self.next_probe = time.monotonic()

        status = self._supervise(main_pid, streams)
        self._cancel_probe()
        self.next_probe = None

        # The workload is gone: end what is left of its group and any orphan that came back
        # to us as subreaper, then read what they wrote until the pipes close. (For a
        # container, `logs --follow` ends by itself once the container has stopped.)
        if not self.container:
            self._kill_all(main_pid, wait=False)
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
        dropped = self.writer.dropped_lines  # the workload's lines (not our final note)
        if dropped:
            reason += f"; {dropped} log line(s) could not be written"
        reason = self.hide(reason)  # it may quote the workload's output
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
        if cg:
            cg.remove()  # after the record: removal can wait on the kernel for a moment
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
            self.run_id, memory=res.get("memory"), cpus=res.get("cpus")
        )
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
            self._start_failed(f"could not start{user}: the process setup failed: {exc}")
            if cg:
                cg.remove()
            return None
        except OSError as exc:
            reason = describe_start_error(exc, argv[0], native.get("workdir"))
            self._start_failed(reason)
            if cg:
                cg.remove()
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
        return (
            proc.pid,
            streams,
            {"cgroup": cg.paths if cg else None, "limits": limit_notes},
        )

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
            self._start_failed(
                f"could not start: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")
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
            last = f"{last}; inspect failed: {exc.message}" if last else exc.message
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
                    self.next_listen_check,
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
            if self.next_listen_check is not None and now >= self.next_listen_check:
                self._check_listeners(pid)

    def _allowed_listen(self) -> set[str] | None:
        """Addresses the workload may listen on besides loopback; None: anything goes."""
        hosts = {p["host_ip"] for p in self.plan["ports"]} or {"127.0.0.1"}
        if hosts & {"0.0.0.0", "::"}:
            return None  # the policy exposes this module on every address
        return hosts

    def _check_listeners(self, pid: int) -> None:
        """Stop a workload listening where the policy does not allow (a late bind too)."""
        allowed = self._allowed_listen()
        assert allowed is not None
        cg = self.attempt.cgroup
        members = cg.pids() if cg else [p.pid for p in procs.group_members(pid)]
        for addr, port in procs.listening_sockets(members):
            if addr in allowed or addr.startswith("127.") or addr == "::1":
                continue
            shown = f"[{addr}]" if ":" in addr else addr
            self.violation = (
                f"listening on {shown}:{port}; policy allows {', '.join(sorted(allowed))} only"
            )
            self._note(f"las: {self.violation}; stopping it")
            self.next_listen_check = None
            self._begin_stop(reason_text=self.violation)
            return
        self.listen_checks += 1
        if self.listen_checks < len(LISTEN_CHECKS):
            delay = LISTEN_CHECKS[self.listen_checks] - LISTEN_CHECKS[self.listen_checks - 1]
        else:  # then at the health cadence (or every 30 s without a probe)
            delay = float(self.health_spec["interval"]) if self.health_spec else 30.0
        self.next_listen_check = time.monotonic() + delay

    def _sample_memory(self, pid: int) -> None:
        """The fallback when no cgroup enforces the memory limit: RSS of the whole tree."""
        limit = self.sample_memory
        assert limit is not None
        cg = self.attempt.cgroup
        members = cg.pids() if cg else [p.pid for p in procs.group_members(pid)]
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

    def _record_health(self, old: str, new: str, result: probes.ProbeResult) -> None:
        history = json.dumps([r.as_dict() for r in self.health.history])
        message = self.hide(f"{new}: {result.message} ({result.latency * 1000:.1f} ms)")

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
            reason = self.hide(
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
        reason = self.hide(
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

    def _kill_all(self, pid: int, wait: bool = True) -> None:
        """SIGKILL the workload's group, its cgroup, and orphans that came back to us.

        ``wait=False`` (the workload has exited): signal what is left once; the cgroup's
        removal, after the end is recorded, waits for the stragglers.
        """
        if self.container and self.cid:
            from localaistack.runtime import engines

            with contextlib.suppress(engines.EngineError):
                self.engine.kill(self.cid)
            return
        # The group id is our own child's pid: while any member lives, the kernel cannot
        # reuse it, so one killpg reaches exactly the workload's group (no /proc scan).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        if self.attempt.cgroup:
            self.attempt.cgroup.kill_all(timeout=2.0 if wait else 0)  # also what left the group
            return
        for child in procs.children_of(os.getpid()):  # no cgroup: orphans came back to us
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)

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
        for line in recent[:-1]:
            if ERROR_LINE.search(line):
                return f"error: {line[:300]}"
        return f"last output: {recent[-1][:300]}"

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
            if self.sandboxed:
                # bwrap (our child) dies on the stop signal and, with --die-with-parent,
                # SIGKILLs the workload at once: send it to the workload's processes only.
                for member in procs.group_members(self.pid):
                    if member.pid != self.pid:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(member.pid, sig)
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, sig)  # our live child leads the group: no /proc scan
            for pid in self.attempt.cgroup.pids() if self.attempt.cgroup else []:
                if not (self.sandboxed and pid == self.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)  # descendants that left the process group
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
        reason = sup.hide(f"lost: the supervisor failed: {type(exc).__name__}: {exc}")
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
