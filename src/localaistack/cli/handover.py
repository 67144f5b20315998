"""The client side of the las agent: hand a ``las run``/``start``/``restart`` over to it.

``las`` is a new Python each time, and before it can start anything it spends ~60-80 ms
starting and importing itself, and its supervisor (a second Python) as long again. The
agent (cli/agent.py) is a las that stays: one per ``$LAS_HOME``, started by the first
``las run`` that finds none, gone after some idle minutes. A command handed to it runs
there, in a process forked from the warm agent, with this process's arguments,
environment, working directory, umask, resource limits and standard streams (passed as
file descriptors), and this process waits, forwards the signals it gets and exits with
the command's status. The command does exactly what it does here; only its start is
shorter. When there is no agent, or it refuses (see ``key`` and docs/agent.md), ``las``
runs the command itself, which is the same command.

So this module imports ``os`` and ``sys`` and the C-level ``_socket`` (``socket`` costs
~4 ms of enum set-up): it runs before anything else in ``las``.
"""

from __future__ import annotations

import _socket
import os
import sys

SOCKET = "agent.sock"  # in $LAS_HOME (0700), reached through /proc/self/fd: no length limit
LOG = "agent.log"
PROTOCOL = "las-agent-1"
AGENT_MAIN = "import sys; from localaistack.cli.agent import main; sys.exit(main())"
COMMANDS = ("run", "start", "restart")  # those whose latency is the workload's start
FORWARDED = (1, 2, 3, 15)  # SIGHUP, SIGINT, SIGQUIT, SIGTERM (no `signal` import: ~7 ms)

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))

# What a process has from its start and a forked worker cannot take from its client: the
# agent serves a client only when these are its own (else the client runs the command):
# the interpreter, the las installation, Python's flags, the locale and Python's own
# variables (PYTHONPATH differs by design: the agent's names las); the groups; the
# cgroup and the namespaces the command's processes will be in; the privileges they will
# have (capabilities, no_new_privs, seccomp, LSM label); the OOM score adjustment and
# the scheduling policy they will inherit.
_STATUS_FIELDS = (b"CapInh", b"CapPrm", b"CapEff", b"CapBnd", b"CapAmb", b"NoNewPrivs", b"Seccomp")
_NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")


def key() -> str:
    env = sorted(
        f"{k}={v}"
        for k, v in os.environ.items()
        if (k.startswith(("PYTHON", "LC_")) or k == "LANG") and k != "PYTHONPATH"
    )
    status = _read("/proc/self/status").splitlines()
    namespaces = []
    for ns in _NAMESPACES:
        try:
            namespaces.append(os.readlink(f"/proc/self/ns/{ns}"))
        except OSError:
            namespaces.append(f"{ns}:?")
    return "\n".join(
        [
            os.path.realpath(sys.executable),
            PACKAGE_DIR,
            repr(tuple(sys.flags)),
            *env,
            ",".join(map(str, sorted(os.getgroups()))),
            _read("/proc/self/cgroup").decode(errors="replace"),
            *namespaces,
            *(line.decode() for line in status if line.split(b":")[0] in _STATUS_FIELDS),
            _read("/proc/self/attr/current").decode(errors="replace"),
            _read("/proc/self/oom_score_adj").decode(errors="replace"),
            str(os.sched_getscheduler(0)),
        ]
    )


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def wanted(args: list[str]) -> bool:
    """Whether this command goes to the agent: a latency command, the agent not off."""
    if not args or args[0] not in COMMANDS or "--help" in args or "-h" in args:
        return False
    return os.environ.get("LAS_AGENT", "1") != "0"


def safe_home(home: str) -> bool:
    """``home`` exists, is ours and no one else may write to it (nor plant a socket)."""
    try:
        st = os.stat(home)
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def hand_over(home: str, args: list[str]) -> int | str:
    """Run ``las ARGS`` in the agent of ``home``: its exit status, or why it did not run
    there (``"absent"``, ``"stale"`` or another refusal; the caller runs it itself)."""
    try:
        dir_fd = os.open(home, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return "absent"
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(f"/proc/self/fd/{dir_fd}/{SOCKET}")
            cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
        except OSError:
            return "absent"
        if int.from_bytes(cred[4:8], sys.byteorder) != os.geteuid():
            return "refused: the agent's socket belongs to another user"
        return _converse(sock, args)
    finally:
        sock.close()
        os.close(dir_fd)


def _converse(sock: _socket.socket, args: list[str]) -> int | str:
    import resource  # a C module: ~0.2 ms

    limits = ";".join(
        "{}={},{}".format(name, *resource.getrlimit(getattr(resource, name)))
        for name in dir(resource)
        if name.startswith("RLIMIT_")
    )
    umask = os.umask(0o077)
    os.umask(umask)
    try:
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return "refused: the working directory cannot be opened"
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    fields = [PROTOCOL, key(), str(umask), limits, cpus, str(nice), str(len(args)), *args]
    fields += [f"{k}={v}" for k, v in os.environ.items()]
    payload = "\0".join(fields).encode("utf-8", "surrogateescape")
    fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2, cwd))
    import _signal  # type: ignore[import-not-found]  # (`signal`: ~7 ms of enums)

    forward = {}
    for signum in FORWARDED:
        forward[signum] = _signal.getsignal(signum)
        if forward[signum] != _signal.SIG_IGN:  # ignored here (nohup): not forwarded
            _signal.signal(signum, lambda n, _f: _send(sock, b"signal %d" % n))
    try:
        return _wait(sock, payload, fds)
    finally:
        os.close(cwd)
        for signum, handler in forward.items():
            _signal.signal(signum, handler)


def _wait(sock: _socket.socket, payload: bytes, fds: bytes) -> int | str:
    import _signal

    try:
        sock.sendmsg([payload], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
    except OSError as exc:  # a closed standard stream (EBADF), an agent that just exited
        return f"refused: {exc.strerror}"
    started = False
    while True:
        try:
            answer = sock.recv(256)
        except OSError:
            answer = b""
        word, _, value = answer.decode("ascii", "replace").partition(" ")
        if word == "started":
            started = True
        elif word == "refused":
            return "stale" if value == "stale" else f"refused: {value}"
        elif word == "exit" and value.lstrip("-").isdigit():
            return int(value)
        elif word == "signal" and value.isdigit():
            try:
                _signal.signal(int(value), _signal.SIG_DFL)
            except (OSError, ValueError):  # SIGKILL, SIGSTOP: their default is the only one
                pass
            os.kill(os.getpid(), int(value))  # ends this process as the command ended
            return 128 + int(value)
        elif not started:  # the agent went away before it ran anything
            return "absent"
        else:
            print(
                "las: the las agent ended before the command did; its outcome is unknown"
                " (see `las ps`, and $LAS_HOME/agent.log)",
                file=sys.stderr,
            )
            return 1


def _send(sock: _socket.socket, message: bytes) -> None:
    try:
        sock.send(message)
    except OSError:
        pass


def start_agent(home: str) -> None:
    """Start the agent of ``home`` in the background (it exits at once if one runs).

    Not from a ``las`` with a lowered priority (``nice``): the agent keeps the priority,
    resource limits and CPUs of the ``las`` that started it, and serves only commands it
    can give theirs (it can lower a priority or a hard limit and change CPUs, not raise).
    """
    if os.getpriority(os.PRIO_PROCESS, 0) > 0:
        return
    from localaistack.runtime.spawn import python_env, spawn_python

    try:
        log = os.open(os.path.join(home, LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        return
    try:
        spawn_python([sys.executable, "-c", AGENT_MAIN, "--home", home], python_env(), log)
    except OSError:
        pass  # only an optimisation: the next `las run` runs itself again
    finally:
        os.close(log)
