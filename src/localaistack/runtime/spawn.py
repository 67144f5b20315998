"""Spawning a run's supervisor (the rest of its client side is in supervision.py).

A supervisor is spawned for a run id, then waits on its go pipe: the run is recorded with
the supervisor's pid and start time first, and only then is the supervisor let go
(``Supervisors.start``). If the go pipe closes instead (``Supervisors.cancel``, or ``las``
exits), the supervisor exits without running anything. That makes it safe to spawn before
the run exists, and to record a supervisor as a run's only if no other claimed it first.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from dataclasses import dataclass
from typing import Any

from localaistack.errors import StartFailed
from localaistack.runtime.procs import start_time
from localaistack.store.home import make_private_dir

# The supervisor's entry (``python -S -c SUPERVISOR_MAIN --db ... --run ...``); its command
# line names the module, which is how `ps` (and the tests) tell a supervisor.
SUPERVISOR_MAIN = "import sys; from localaistack.runtime.supervisor import main; sys.exit(main())"

# Where the localaistack package is (site-packages, or src/ in a checkout).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


@dataclass(frozen=True)
class Pending:
    """A supervisor spawned for a run, waiting for its go (``spawn_supervisor``)."""

    run_id: str
    pid: int  # this process's child, until it is reaped
    start: int | None  # the process's start time: with pid, its identity
    go_fd: int  # write "go" here once the run is recorded
    ready_fd: int  # the supervisor reports here
    sup_log: str  # its own diagnostics
    db: str  # the store it will read its run from


def new_run_id() -> str:
    """12 random hex digits."""
    return os.urandom(6).hex()


def spawn_supervisor(
    db: str | os.PathLike[str],
    home: str | os.PathLike[str],
    run_id: str,
    extra_args: tuple[str, ...] = (),
) -> Pending:
    """Start the supervisor of a run that is not recorded (or not claimed) yet; it waits
    for ``go``.

    Raises:
        StartFailed: the supervisor process cannot be started.
    """
    run_dir = make_private_dir(os.fspath(home), "runs", run_id)
    sup_log = os.path.join(run_dir, "supervisor.log")
    rfd, wfd = os.pipe()  # ready: supervisor -> las
    go_r, go_w = os.pipe()  # go: las -> supervisor
    log_fd = os.open(sup_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for fd in (wfd, go_r):
            os.set_inheritable(fd, True)
        argv = [
            sys.executable,
            "-S",  # no site: the supervisor needs only the standard library and las
            "-c",
            SUPERVISOR_MAIN,
            "--db",
            os.fspath(db),
            "--run",
            run_id,
            "--ready-fd",
            str(wfd),
            "--go-fd",
            str(go_r),
            *extra_args,
        ]
        pid = _spawn_python(argv, _python_env(), log_fd)
    except OSError as exc:
        os.close(rfd)
        os.close(go_w)
        shutil.rmtree(run_dir, ignore_errors=True)
        raise StartFailed(
            f"could not start the supervisor: {exc.strerror}",
            hint="check that las is installed correctly",
        ) from exc
    finally:
        for fd in (wfd, go_r, log_fd):
            os.close(fd)
    return Pending(run_id, pid, start_time(pid), go_w, rfd, sup_log, os.fspath(db))


def _python_env() -> dict[str, str]:
    """This process's environment, with las on PYTHONPATH: for a new Python of las's."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    return env


def _spawn_python(argv: list[str], env: dict[str, str], log_fd: int | None) -> int:
    """Start ``argv`` (this Python) in a session of its own, its input /dev/null, its
    output and errors to ``log_fd`` (None: this process's). Raises OSError. The child is
    registered for ``reap_children``."""
    actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    if log_fd is not None:
        actions += [(os.POSIX_SPAWN_DUP2, log_fd, 1), (os.POSIX_SPAWN_DUP2, log_fd, 2)]
    pid = os.posix_spawn(sys.executable, argv, env, file_actions=actions, setsid=True)
    with _children_lock:
        _children[pid] = start_time(pid)
    return pid


# The children ``_spawn_python`` started and not reaped here yet (pid -> start time): a
# long-lived process (`las serve`) reaps them (``reap_children``) so that an exited
# supervisor leaves no zombie.
_children: dict[int, int | None] = {}
_children_lock = threading.Lock()


def reap_children() -> int:
    """Reap each registered child that has exited (``waitpid(pid, WNOHANG)`` for those
    pids only: never ``waitpid(-1)``, which would take the exit status of a child that
    ``subprocess`` or another caller waits for); how many were reaped. A child reaped by
    someone else meanwhile (``Supervisors.cancel``) is forgotten, and so is a pid that now
    names another process (its start time differs: a child of someone else's, reused)."""
    reaped = 0
    with _children_lock:
        children = list(_children.items())
    for pid, start in children:
        done = True
        now = start_time(pid)
        if now is None or (start is not None and now != start):
            pass  # gone, or the pid was reused: not ours to wait for
        else:
            try:
                got, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass  # reaped by someone else
            else:
                done = got == pid
                reaped += done
        if done:
            with _children_lock:
                _children.pop(pid, None)
    return reaped
