"""The las agent's supervisor zygote: supervisors forked from a warm Python.

Started by the las agent (cli/agent.py) as ``python -S -c ZYGOTE_MAIN --db DB --fd N``
with one end of a ``SOCK_SEQPACKET`` socket pair as fd N (``--db`` only names the store
in ``ps``). It imports what a supervisor needs
before its ``go`` (runtime/supervisor.py's ``main``), then waits. For each request, one
message with five file descriptors (runtime/spawn.py's ``_ask_zygote``):

* the run's ready pipe (write end), its go pipe (read end) and its supervisor.log;
* the requester's working directory and a reply pipe (write end);
* JSON: the store, the run id, and the environment, umask, resource limits, CPU affinity
  and nice value an exec'd supervisor would have inherited from the requesting ``las``;

it forks a child that starts a new session and forks the supervisor (so the supervisor is
not the zygote's child, as an exec'd one is not las's once ``las`` exits), writes the
supervisor's pid to the reply pipe and exits. The supervisor sets up the state it was
given, copies the pages it shares with the zygote (one collection, while ``las`` plans)
and runs ``supervisor.main`` as if it had been exec'd. A supervisor thus starts in a few
ms instead of ~40-60 ms; its command line is the zygote's (it names
``localaistack.runtime.supervisor_zygote`` and the store).

Nothing here reads the environment at import time, and the zygote opens no store: a
child must be the same as a fresh supervisor. The zygote exits when the agent closes its
end.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import signal
import socket
import sys
from typing import Any

# What a supervisor imports before its go (runtime/supervisor.py's main), done once here.
import hashlib  # noqa: F401  # isort: skip

from localaistack.runtime import engines, supervisor  # noqa: F401

ZYGOTE_MAIN = (
    "import sys; from localaistack.runtime.supervisor_zygote import main; sys.exit(main())"
)
USAGE = "usage: python -S -c ZYGOTE_MAIN --db DB --fd FD (started by the las agent)"
MAX_REQUEST = 1 << 20  # bytes: the environment is most of it


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4 or args[0] != "--db" or args[2] != "--fd" or not args[3].isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    chan = socket.socket(fileno=int(args[3]))
    while True:
        try:
            message, fds, flags, _ = socket.recv_fds(chan, MAX_REQUEST, 5)
        except OSError as exc:
            print(f"supervisor zygote: {exc}", file=sys.stderr, flush=True)
            return 1
        if not message:  # the agent closed its end
            return 0
        if len(fds) != 5 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            continue  # the reply pipe closes without a pid: that `las run` fails, and says so
        try:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    chan.close()
                    code = _middle(json.loads(message), fds)
                finally:
                    os._exit(code)
            os.waitpid(pid, 0)  # the middle process exits at once
        except OSError as exc:
            print(f"supervisor zygote: cannot fork: {exc}", file=sys.stderr, flush=True)
        finally:
            for fd in fds:
                os.close(fd)


def _middle(request: dict[str, Any], fds: list[int]) -> int:
    """In a new session, fork the supervisor, report its pid, exit."""
    reply = fds[4]
    os.setsid()
    pid = os.fork()
    if pid:
        os.write(reply, b"%d\n" % pid)
        return 0
    os.close(reply)
    try:
        return _become_supervisor(request, fds)
    except BaseException as exc:  # nothing may escape into the zygote's loop
        print(f"supervisor zygote: the supervisor failed: {exc!r}", file=sys.stderr, flush=True)
        return 1


def _become_supervisor(request: dict[str, Any], fds: list[int]) -> int:
    ready, go, log, cwd, _ = fds
    os.dup2(log, 1)
    os.dup2(log, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd in (null, log):
        os.close(fd)
    os.fchdir(cwd)
    os.close(cwd)
    for fd in (ready, go):  # received without close-on-exec: no engine CLI may inherit them
        os.set_inheritable(fd, False)
    os.umask(request["umask"])
    for name, (soft, hard) in request["rlimits"].items():
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (OSError, ValueError, AttributeError) as exc:
            print(f"supervisor zygote: {name} not set: {exc}", file=sys.stderr, flush=True)
    os.sched_setaffinity(0, request["cpus"])
    try:
        os.setpriority(os.PRIO_PROCESS, 0, request["nice"])
    except OSError as exc:  # a higher priority than the zygote's: the agent refuses those
        print(f"supervisor zygote: nice {request['nice']} not set: {exc}", file=sys.stderr)
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Copy the pages shared with the zygote now, while `las` plans, not after its go: a
    # collection writes to every object it tracks (~5 ms of copy-on-write faults here).
    gc.collect()
    argv = ["--db", str(request["db"]), "--run", str(request["run"])]
    code = supervisor.main([*argv, "--ready-fd", str(ready), "--go-fd", str(go)])
    sys.stdout.flush()
    sys.stderr.flush()
    return code
