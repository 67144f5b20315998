"""The las agent: a las that stays, so that ``las run`` does not start Python each time.

One per ``$LAS_HOME``, started in the background by a ``las run``/``start``/``restart``
that found none (cli/handover.py, the client side), as ``python -c AGENT_MAIN --home
HOME``. It

* imports, once, everything those commands need, and starts a supervisor zygote
  (runtime/supervisor_zygote.py), so that a run's supervisor is a fork, not a new Python;
* listens on ``HOME/agent.sock`` (``SOCK_SEQPACKET``, mode 0600 in a 0700 home), and
  serves only its own user (``SO_PEERCRED``), only ``run``/``start``/``restart``, only
  clients that share what a forked process cannot change (cli/handover.py's ``key``:
  Python, las, locale, groups, cgroup, namespaces, privileges...; else it refuses, and
  the client runs the command itself), and only while las's files are those it imported:
  after an upgrade it refuses with ``stale``, stops listening and exits once its
  commands have ended;
* for each command, forks a worker that takes the client's standard streams, working
  directory, umask, resource limits, CPU affinity, nice value, environment and
  arguments, runs the command as
  ``las`` would (cli/entry.py's ``run``) and exits with its status, which the agent sends
  back; signals the client forwards go to the worker; a client that disappears (killed)
  takes its worker with it (SIGKILL), as if the command had been that process;
* exits after ``$LAS_AGENT_IDLE`` seconds (default 300) without a command, when its socket
  is removed or replaced, or on SIGTERM. It holds no store connection and no thread: a
  worker is a clean copy. Its own diagnostics go to ``HOME/agent.log``.

``LAS_AGENT=0`` in a client's environment keeps that ``las`` from using or starting it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import io
import os
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any

from localaistack.cli import entry, handover, launch
from localaistack.runtime import spawn
from localaistack.runtime.supervisor_zygote import ZYGOTE_MAIN

USAGE = "usage: python -c AGENT_MAIN --home HOME (started by las itself: cli/handover.py)"
IDLE = 300.0  # seconds without a command before the agent exits ($LAS_AGENT_IDLE)
TICK = 5.0  # seconds between checks of its socket and of how long it has been idle
REQUEST_TIMEOUT = 2.0  # seconds a connected client has to send its command
MAX_REQUEST = 1 << 20  # bytes: arguments and environment
LOCK = "agent.lock"


def _warm(home: str) -> None:
    """Import what the handed-over commands use, once, before any fork."""
    import hashlib  # noqa: F401
    import json  # noqa: F401
    import sqlite3  # noqa: F401
    import tempfile  # noqa: F401

    from localaistack.cli import launch, lifecycle, main  # noqa: F401
    from localaistack.control import admission, names, planner, ports, probecache  # noqa: F401
    from localaistack.runtime import engines, manager, supervision  # noqa: F401


class _Stop(Exception):
    """SIGTERM arrived."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Stop


class Worker:
    __slots__ = ("conn", "pid", "pidfd")

    def __init__(self, pid: int, pidfd: int, conn: socket.socket) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.conn: socket.socket | None = conn


class Agent:
    def __init__(self, home: str, listener: socket.socket, dir_fd: int, lock_fd: int) -> None:
        self.home = home
        self.listener: socket.socket | None = listener
        self.dir_fd = dir_fd
        self.lock_fd = lock_fd
        self.ino = os.stat(handover.SOCKET, dir_fd=dir_fd).st_ino
        self.key = handover.key()
        self.files = _signature()
        self.idle = float(os.environ.get("LAS_AGENT_IDLE", IDLE))
        self.last = time.monotonic()
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, None)
        self.workers: dict[int, Worker] = {}
        self.zygote: socket.socket | None = None
        self.zygote_pid: int | None = None
        self.zygote_pidfd: int | None = None

    # --- the loop -------------------------------------------------------------------

    def serve(self) -> int:
        try:
            self._start_zygote()
            self._loop()
        except _Stop:  # SIGTERM: no new commands; those running go on without the agent
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends it at once
            if self.listener is not None:
                self._stop_listening("SIGTERM")
        self._stop_zygote()
        return 0

    def _loop(self) -> None:
        while self.listener is not None or self.workers:
            for key, _ in self.sel.select(min(TICK, self.idle)):
                if key.data is None:
                    self._accept()
                else:
                    kind, worker = key.data
                    if kind == "exit":
                        self._ended(worker)
                    elif kind == "client":
                        self._from_client(worker)
                    else:
                        self._zygote_ended()
            if self.listener is not None:
                why = self._why_stop()
                if why:
                    self._stop_listening(why)

    def _why_stop(self) -> str | None:
        if not self.workers and time.monotonic() - self.last > self.idle:
            return f"idle for {self.idle:g} s"
        try:
            if os.stat(handover.SOCKET, dir_fd=self.dir_fd).st_ino != self.ino:
                return "its socket was replaced"
        except OSError:
            return "its socket was removed"
        return None

    def _stop_listening(self, why: str) -> None:
        """No more commands: the socket goes (if still ours) and so does the lock."""
        _log(f"stops: {why}")
        assert self.listener is not None
        self.sel.unregister(self.listener)
        with contextlib.suppress(OSError):
            if os.stat(handover.SOCKET, dir_fd=self.dir_fd).st_ino == self.ino:
                os.unlink(handover.SOCKET, dir_fd=self.dir_fd)
        self.listener.close()
        self.listener = None
        os.close(self.lock_fd)  # a new agent may start now

    # --- a command ------------------------------------------------------------------

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.last = time.monotonic()
        fds: list[int] = []
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            if struct.unpack("3i", cred)[1] != os.geteuid():
                return _refuse(conn, "another user")
            message, fds, flags, _ = socket.recv_fds(conn, MAX_REQUEST, 4)
            if len(fds) != 4 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                return _refuse(conn, "a malformed request")
            request = _parse(message)
            if request is None:
                return _refuse(conn, "a malformed request")
            if not request["args"] or request["args"][0] not in handover.COMMANDS:
                return _refuse(conn, f"only {', '.join(handover.COMMANDS)} are handed over")
            if request["key"] != self.key:
                return _refuse(conn, "another Python, las, locale, cgroup, namespace or privileges")
            if request["nice"] < os.getpriority(os.PRIO_PROCESS, 0):
                return _refuse(conn, "a higher priority (nice) than the agent's")
            if _signature() != self.files:
                _refuse(conn, "stale")
                return self._stop_listening("las's files changed (an upgrade)")
            too_high = _limits_above_own(request["limits"])
            if too_high:
                return _refuse(conn, f"{too_high} is above the agent's own hard limit")
            if self.zygote is None:
                self._start_zygote()
            conn.settimeout(None)
            pid = _fork()
            if pid == 0:
                try:
                    self._drop_inherited()
                    self._become_worker(conn, fds, request)
                finally:
                    os._exit(1)  # (it exits itself, with the command's status)
            with contextlib.suppress(OSError):  # a client gone already: its EOF says so
                conn.send(b"started")
        except OSError as exc:
            _log(f"a command failed to start: {exc}")
            return _close(conn)
        finally:
            for fd in fds:
                os.close(fd)
        worker = Worker(pid, os.pidfd_open(pid), conn)
        self.workers[pid] = worker
        self.sel.register(worker.pidfd, selectors.EVENT_READ, ("exit", worker))
        self.sel.register(conn, selectors.EVENT_READ, ("client", worker))

    def _from_client(self, worker: Worker) -> None:
        """A forwarded signal, or the client's end: a client that went away before its
        command ended was killed, and the command goes with it."""
        if worker.conn is None:  # its command ended in this same round
            return
        try:
            message = worker.conn.recv(64)
        except OSError:
            message = b""
        word, _, value = message.partition(b" ")
        if word == b"signal" and value.isdigit() and int(value) in handover.FORWARDED:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(worker.pidfd, int(value))
            return
        if not message:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(worker.pidfd, signal.SIGKILL)
            self.sel.unregister(worker.conn)
            _close(worker.conn)
            worker.conn = None

    def _ended(self, worker: Worker) -> None:
        _, status = os.waitpid(worker.pid, 0)
        if worker.conn is not None:
            if os.WIFSIGNALED(status):
                answer = b"signal %d" % os.WTERMSIG(status)
            else:
                answer = b"exit %d" % os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                worker.conn.send(answer)
            self.sel.unregister(worker.conn)
            _close(worker.conn)
            worker.conn = None  # (its client's EOF may be in this same round)
        self.sel.unregister(worker.pidfd)
        os.close(worker.pidfd)
        del self.workers[worker.pid]
        self.last = time.monotonic()

    def _drop_inherited(self) -> None:
        """In a forked worker, at once: nothing of the agent's may stay open, not
        its socket (clients would queue on it), its lock (a new agent could not start),
        the other clients' connections (each must see its own command's end)."""
        for other in self.workers.values():
            os.close(other.pidfd)
            if other.conn is not None:
                other.conn.close()
        self.workers = {}
        if self.listener is not None:
            self.listener.close()
            os.close(self.lock_fd)
            self.listener = None
        self.sel.close()
        os.close(self.dir_fd)
        if self.zygote_pidfd is not None:
            os.close(self.zygote_pidfd)
            self.zygote_pidfd = None

    def _become_worker(self, conn: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
        """In the forked worker: become the client's ``las`` process, run, exit."""
        code = 1
        try:
            self._take_over(fds, request)
        except Exception as exc:  # nothing ran: the client runs the command itself
            with contextlib.suppress(OSError):
                conn.send(b"refused the worker could not take the command over: %r" % exc)
            os._exit(1)
        try:
            spawn.zygote = self.zygote
            launch.exit_hooks.append(lambda status: _report(conn, status))
            code = _run(request["args"])
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            _report(conn, code)
            os._exit(code)

    def _take_over(self, fds: list[int], request: dict[str, Any]) -> None:
        """The client's process state, in this worker (before anything runs)."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        os.fchdir(fds[3])
        for fd in fds:
            os.close(fd)
        os.umask(request["umask"])
        os.sched_setaffinity(0, request["cpus"])
        os.setpriority(os.PRIO_PROCESS, 0, request["nice"])
        for name, (soft, hard) in request["limits"].items():
            import resource

            with contextlib.suppress(AttributeError):
                resource.setrlimit(getattr(resource, name), (soft, hard))
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["las", *request["args"]]
        sys.stdout = io.TextIOWrapper(
            io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
            encoding=sys.stdout.encoding,
            errors=sys.stdout.errors,
            line_buffering=os.isatty(1),
        )

    # --- the zygote -----------------------------------------------------------------

    def _start_zygote(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        db = os.path.join(self.home, "state.db")
        argv = [sys.executable, "-S", "-c", ZYGOTE_MAIN, "--db", db, "--fd", str(theirs.fileno())]
        try:  # its output: the agent's log
            self.zygote_pid = spawn.spawn_python(argv, spawn.python_env(), None)
        except OSError as exc:
            _log(f"no supervisor zygote: {exc} (supervisors start as new Pythons)")
            ours.close()
            return
        finally:
            theirs.close()
        self.zygote = ours
        self.zygote_pidfd = os.pidfd_open(self.zygote_pid)
        self.sel.register(self.zygote_pidfd, selectors.EVENT_READ, ("zygote", None))

    def _zygote_ended(self) -> None:
        """The zygote died (killed by someone): the next command starts another."""
        assert self.zygote is not None and self.zygote_pidfd is not None
        _, status = os.waitpid(self.zygote_pid or 0, 0)
        _log(f"the supervisor zygote ended ({os.waitstatus_to_exitcode(status)})")
        self.sel.unregister(self.zygote_pidfd)
        os.close(self.zygote_pidfd)
        self.zygote.close()
        self.zygote = self.zygote_pid = self.zygote_pidfd = None

    def _stop_zygote(self) -> None:
        if self.zygote is not None:
            self.zygote.close()  # it exits when its end reads EOF
            assert self.zygote_pid is not None
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.zygote_pid, 0)


def _fork() -> int:
    """os.fork, with SIGTERM blocked across it: the child must never run the agent's
    SIGTERM handler (it would act as the agent); it gets the default one."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return pid


def _run(args: list[str]) -> int:
    """``las ARGS`` in this worker: its exit status, as the interpreter would make it."""
    try:
        entry.run(args)
        return 0
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # as Python does: the traceback, then death by SIGINT
        sys.excepthook(*sys.exc_info())
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    finally:
        atexit._run_exitfuncs()


def _parse(message: bytes) -> dict[str, Any] | None:
    fields = message.decode("utf-8", "surrogateescape").split("\0")
    try:
        if fields[0] != handover.PROTOCOL:
            return None
        nargs = int(fields[6])
        limits = {}
        for item in filter(None, fields[3].split(";")):
            name, _, values = item.partition("=")
            soft, hard = values.split(",")
            limits[name] = (int(soft), int(hard))
        return {
            "key": fields[1],
            "umask": int(fields[2]),
            "limits": limits,
            "cpus": {int(c) for c in fields[4].split(",")},
            "nice": int(fields[5]),
            "args": fields[7 : 7 + nargs],
            "env": dict(f.split("=", 1) for f in fields[7 + nargs :]),
        }
    except (IndexError, ValueError):
        return None


def _limits_above_own(limits: dict[str, tuple[int, int]]) -> str | None:
    """The first limit a worker could not take (a hard limit above the agent's)."""
    import resource

    for name, (_, hard) in limits.items():
        which = getattr(resource, name, None)
        if which is None:
            continue
        own = resource.getrlimit(which)[1]
        if own != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > own):
            return name
    return None


def _signature() -> list[tuple[str, int, int]]:
    """las's files and the interpreter as they are now (the agent runs what it loaded at
    its start; a Python upgraded in place would load its newer standard library)."""
    out = []
    for path in (os.path.realpath(sys.executable), os.__file__):
        with contextlib.suppress(OSError):
            st = os.stat(path)
            out.append((path, st.st_mtime_ns, st.st_size))
    for folder, _, files in os.walk(handover.PACKAGE_DIR):
        for name in files:
            if name.endswith((".py", ".yaml")):
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    st = os.stat(path)
                    out.append((path, st.st_mtime_ns, st.st_size))
    return sorted(out)


def _report(conn: socket.socket, code: int) -> None:
    """The command's exit status, to its client (the agent reports it too, after).

    Its output is out by now (flushed): the worker first lets go of the client's standard
    streams, so that a reader of them (a pipe, ``$(las run ...)``) sees their end when the
    client exits, not after this worker's own teardown too (~2 ms here).
    """
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    with contextlib.suppress(OSError):
        conn.send(b"exit %d" % code)


def _refuse(conn: socket.socket, why: str) -> None:
    """Tell the client to run its command itself (it does so with the same result)."""
    _log(f"refused a command: {why}")
    with contextlib.suppress(OSError):
        conn.send(b"refused " + why.encode())
    _close(conn)


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.close()


def _log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} las agent {os.getpid()}: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--home":
        print(USAGE, file=sys.stderr)
        return 2
    home = os.path.abspath(args[1])
    try:
        lock_fd = os.open(os.path.join(home, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another agent serves this home
        if not handover.safe_home(home):
            _log(f"{home} is not private to this user: no agent")
            return 1
        _warm(home)
        dir_fd = os.open(home, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handover.SOCKET, dir_fd=dir_fd)  # a dead agent's
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        umask = os.umask(0o177)
        try:
            listener.bind(f"/proc/self/fd/{dir_fd}/{handover.SOCKET}")
        finally:
            os.umask(umask)
        listener.listen(64)
    except OSError as exc:
        _log(f"cannot start: {exc}")
        return 1
    try:
        os.close(os.pidfd_open(os.getpid()))  # Linux >= 5.3: how it follows its workers
    except (OSError, AttributeError) as exc:
        _log(f"cannot start: no pidfd_open ({exc}); las runs its commands itself")
        return 1
    os.chdir("/")  # it holds no directory busy; each worker takes its client's
    with contextlib.suppress(OSError):  # not the CPUs of the `las` that started it (a
        os.sched_setaffinity(0, range(os.cpu_count() or 1))  # pinned benchmark, say)
    agent = Agent(home, listener, dir_fd, lock_fd)
    _log(f"serves {home}")
    gc.freeze()  # what it imported stays shared with its workers: no collection touches it
    signal.signal(signal.SIGTERM, _on_sigterm)
    return agent.serve()
