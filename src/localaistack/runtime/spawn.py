"""Spawning a run's supervisor: the first thing ``las run`` does (cli/entry.py).

So this module imports only ``os``, ``sys`` and las's ``os``-only helpers: every
millisecond before the spawn delays the supervisor, whose own start (a second Python)
is then on the start path. The rest of the supervisor's client side is in supervision.py.
"""

from __future__ import annotations

import os
import sys

from localaistack.errors import StartFailed
from localaistack.runtime.procs import start_time
from localaistack.store.home import make_private_dir

TYPE_CHECKING = False  # not typing's: this module is on the start path before anything
if TYPE_CHECKING:
    import socket
    from typing import Any

# The supervisor's entry (``python -S -c SUPERVISOR_MAIN --db ... --run ...``); its command
# line names the module, which is how `ps` (and the tests) tell a supervisor.
SUPERVISOR_MAIN = "import sys; from localaistack.runtime.supervisor import main; sys.exit(main())"

# Where the localaistack package is (site-packages, or src/ in a checkout).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


class Pending:
    """A supervisor started for a run that is not recorded yet (``spawn_supervisor``).

    A plain class: ``typing.NamedTuple`` costs this path ~10 ms of imports. When the las
    agent's zygote forks the supervisor, its pid comes back while ``las run`` plans:
    ``pid`` and ``start`` wait for it on first use (``reply`` is that pipe).
    """

    __slots__ = (
        "_ours", "_pid", "_reply", "_start", "db", "go_fd", "ready_fd", "run_id", "sup_log",
    )  # fmt: skip

    def __init__(
        self, run_id: str, pid: int | None, start: int | None, go_fd: int, ready_fd: int,
        sup_log: str, db: str, reply: int | None = None,
    ) -> None:  # fmt: skip
        self.run_id = run_id
        self._pid = pid
        self._start = start  # the process's start time, with pid its identity
        self._reply = reply
        self._ours = reply is None  # spawned by this process (a child to reap)
        self.go_fd = go_fd  # write "go" here once the run is recorded
        self.ready_fd = ready_fd  # the supervisor reports here
        self.sup_log = sup_log  # its own diagnostics
        self.db = db  # the store it will read its run from

    @property
    def pid(self) -> int:
        if self._reply is not None:
            self._settle()
        assert self._pid is not None
        return self._pid

    @property
    def start(self) -> int | None:
        if self._reply is not None:
            self._settle()
        return self._start

    def _settle(self) -> None:
        """Read the zygote's answer: the supervisor's pid.

        Raises:
            StartFailed: the zygote did not answer (the go pipe is closed: if a supervisor
                was forked after all, it exits without running anything).
        """
        assert self._reply is not None
        try:
            pid = _read_pid(self._reply)
        finally:
            os.close(self._reply)
            self._reply = None
        if pid is None:
            raise StartFailed(
                "the las agent's supervisor zygote did not start the supervisor",
                hint="see $LAS_HOME/agent.log; LAS_AGENT=0 runs las without its agent",
            )
        self._pid = pid
        self._start = start_time(pid)

    def child(self) -> int | None:
        """The supervisor's pid when it is this process's child (to reap), else None."""
        return self._pid if self._ours else None

    def close_reply(self) -> None:
        """No pid wanted any more (the run is not going ahead)."""
        if self._reply is not None:
            os.close(self._reply)
            self._reply = None

    def __repr__(self) -> str:
        return f"<Pending run={self.run_id} pid={self._pid}>"


def new_run_id() -> str:
    """12 random hex digits (the uuid module costs a few ms to import on the start path)."""
    return os.urandom(6).hex()


def spawn_supervisor(
    db: str | os.PathLike[str], home: str | os.PathLike[str], run_id: str,
    extra_args: tuple[str, ...] = (),
) -> Pending:  # fmt: skip
    """Start the supervisor of a run that is not recorded yet; it waits for ``go``.

    ``las run`` calls this before it plans (before it even imports its command line
    library, see cli/entry.py), so that the supervisor's own start (a Python process: tens
    of ms) overlaps the rest of ``las``. ``Supervisors.start`` with the returned ``Pending``
    lets it go. If ``las`` closes the go pipe instead (``Supervisors.cancel``, or ``las``
    exits), the supervisor exits without running anything.

    Raises:
        StartFailed: the supervisor process cannot be started.
    """
    run_dir = make_private_dir(os.fspath(home), "runs", run_id)
    sup_log = os.path.join(run_dir, "supervisor.log")
    rfd, wfd = os.pipe()  # ready: supervisor -> las
    go_r, go_w = os.pipe()  # go: las -> supervisor
    log_fd = os.open(sup_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    env = python_env()
    try:
        if zygote is not None and not extra_args:
            reply = _ask_zygote(os.fspath(db), run_id, env, (wfd, go_r, log_fd))
            if reply is not None:  # the pid comes back while las plans
                return Pending(run_id, None, None, go_w, rfd, sup_log, os.fspath(db), reply)
        pid = _exec_supervisor(os.fspath(db), run_id, env, (wfd, go_r, log_fd), extra_args)
    except OSError as exc:
        os.close(rfd)
        os.close(go_w)
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        raise StartFailed(
            f"could not start the supervisor: {exc.strerror}",
            hint="check that las is installed correctly",
        ) from exc
    finally:
        for fd in (wfd, go_r, log_fd):
            os.close(fd)
    return Pending(run_id, pid, start_time(pid), go_w, rfd, sup_log, os.fspath(db))


def _exec_supervisor(
    db: str, run_id: str, env: dict[str, str], fds: tuple[int, int, int],
    extra_args: tuple[str, ...],
) -> int:  # fmt: skip
    """A new Python: ``python -S -c SUPERVISOR_MAIN ...``, in a session of its own."""
    wfd, go_r, log_fd = fds
    for fd in (wfd, go_r):
        os.set_inheritable(fd, True)
    argv = [
        sys.executable,
        "-S",  # no site: the supervisor needs only the standard library and las
        "-c",  # not -m: runpy costs ~3 ms more to import, on every start path
        SUPERVISOR_MAIN,
        "--db",
        db,
        "--run",
        run_id,
        "--ready-fd",
        str(wfd),
        "--go-fd",
        str(go_r),
        *extra_args,
    ]
    return spawn_python(argv, env, log_fd)


def python_env() -> dict[str, str]:
    """This process's environment, with las on PYTHONPATH: for a new Python of las's."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    return env


def spawn_python(argv: list[str], env: dict[str, str], log_fd: int | None) -> int:
    """Start ``argv`` (this Python) in a session of its own, its input /dev/null, its
    output and errors to ``log_fd`` (None: this process's). Raises OSError."""
    actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    if log_fd is not None:
        actions += [(os.POSIX_SPAWN_DUP2, log_fd, 1), (os.POSIX_SPAWN_DUP2, log_fd, 2)]
    return os.posix_spawn(sys.executable, argv, env, file_actions=actions, setsid=True)


# The las agent's supervisor zygote (runtime/supervisor_zygote.py), when this process is
# one of the agent's workers (cli/agent.py sets it): a SOCK_SEQPACKET socket.
zygote: socket.socket | None = None


def _ask_zygote(db: str, run_id: str, env: dict[str, str], fds: tuple[int, int, int]) -> int | None:
    """Ask the agent's zygote to fork the supervisor (no Python to start: ~1-2 ms): the
    pipe its pid will come back on, or None when the zygote is gone and nothing was asked
    (the caller then starts a new Python, as without an agent).

    The zygote's child takes this process's environment, working directory, umask,
    resource limits, CPU affinity and nice value, as an exec'd supervisor would inherit
    them (the zygote shares the rest: cgroup, namespaces, privileges; cli/handover.py).
    """
    import json
    import resource
    import socket

    assert zygote is not None
    # every limit this Python knows, as cli/handover.py sends them to the agent
    names = [n for n in dir(resource) if n.startswith("RLIMIT_")]
    limits = {n: resource.getrlimit(getattr(resource, n)) for n in names}
    umask = os.umask(0o077)
    os.umask(umask)
    request = {
        "db": db, "run": run_id, "env": env, "umask": umask, "rlimits": limits,
        "cpus": sorted(os.sched_getaffinity(0)), "nice": os.getpriority(os.PRIO_PROCESS, 0),
    }  # fmt: skip
    try:
        cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        cwd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    reply_r, reply_w = os.pipe()
    try:
        socket.send_fds(zygote, [json.dumps(request).encode()], [*fds, cwd, reply_w])
    except OSError:
        os.close(reply_r)
        return None
    finally:
        os.close(reply_w)
        os.close(cwd)
    return reply_r


def _read_pid(fd: int) -> int | None:
    """The pid the zygote writes (``N\\n``), or None: it closed the pipe without, or
    did not answer within ZYGOTE_DEADLINE."""
    import select

    answer = b""
    while not answer.endswith(b"\n") and select.select([fd], [], [], ZYGOTE_DEADLINE)[0]:
        chunk = os.read(fd, 64)
        if not chunk:
            break
        answer += chunk
    return int(answer) if answer.strip().isdigit() else None


ZYGOTE_DEADLINE = 5.0  # seconds for the zygote to answer (it forks twice: ~1-2 ms)
