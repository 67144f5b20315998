"""Process identity on Linux, from /proc. Standard library only.

A process is identified by its pid *and* its start time (clock ticks since boot, field 22
of ``/proc/PID/stat``) *and* the boot id: a pid alone is reused, a start time alone
repeats after a reboot.
"""

from __future__ import annotations

import os
import signal
from typing import Any

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    with open(_BOOT_ID_PATH) as f:
        return f.read().strip()


class ProcStat:
    """The fields of ``/proc/PID/stat`` that las uses (a plain class: no dataclasses import
    in the long-lived supervisor)."""

    __slots__ = ("pgid", "pid", "ppid", "sid", "start", "state")

    def __init__(self, pid: int, state: str, ppid: int, pgid: int, sid: int, start: int) -> None:
        self.pid = pid
        self.state = state
        self.ppid = ppid
        self.pgid = pgid
        self.sid = sid
        self.start = start

    def __repr__(self) -> str:
        return f"<ProcStat pid={self.pid} state={self.state} pgid={self.pgid} start={self.start}>"


def stat(pid: int) -> ProcStat | None:
    """The parsed ``/proc/PID/stat``, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(b")") + 2 :].split()
    return ProcStat(
        pid=pid,
        state=rest[0].decode(),
        ppid=int(rest[1]),
        pgid=int(rest[2]),
        sid=int(rest[3]),
        start=int(rest[19]),
    )


def start_time(pid: int) -> int | None:
    st = stat(pid)
    return st.start if st else None


def is_same_process(pid: int | None, start: int | None) -> bool:
    """True when ``pid`` exists, is not a zombie, and started at ``start``."""
    if not pid or start is None:
        return False
    st = stat(pid)
    return st is not None and st.start == start and st.state != "Z"


def all_stats() -> list[ProcStat]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = stat(int(entry))
            if st is not None:
                out.append(st)
    return out


def group_members(pgid: int, started_not_before: int | None = None) -> list[ProcStat]:
    """Live processes in process group ``pgid`` (optionally started no earlier than a time).

    The start-time bound guards against a recycled group id: a process that started before
    the workload cannot belong to it.
    """
    return [
        s
        for s in all_stats()
        if s.pgid == pgid
        and s.state != "Z"
        and (started_not_before is None or s.start >= started_not_before)
    ]


def kill_group(pgid: int, sig: int, started_not_before: int | None = None) -> int:
    """Send ``sig`` to every live member of the group; returns how many were signalled."""
    members = group_members(pgid, started_not_before)
    for m in members:
        try:
            os.kill(m.pid, sig)
        except ProcessLookupError:
            pass
    return len(members)


def children_of(pid: int) -> list[ProcStat]:
    return [s for s in all_stats() if s.ppid == pid and s.state != "Z"]


def descendants(pid: int, skip: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """Every descendant of ``pid`` (zombies too), from ``/proc/PID/task/TID/children``,
    but not those in ``skip`` and their own descendants.

    The cost is that of the tree, not of every process on the machine. Processes forked or
    re-parented during the walk may be missed: callers that must reach all of them (the
    supervisor's end of a run) walk again until none is left.
    """
    out: list[int] = []
    todo = [pid]
    seen = {pid, *skip}
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                    kids = f.read().split()
            except OSError:
                continue
            for kid in map(int, kids):
                if kid not in seen:
                    seen.add(kid)
                    out.append(kid)
                    todo.append(kid)
    return out


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38


_LIBC: list[Any] = []


def prctl(option: int, arg: int) -> None:
    # ctypes is slow to import: loaded at the supervisor's first prctl (the child
    # subreaper's), which comes before any child is forked.
    import ctypes

    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    if _LIBC[0].prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process (it reaps them)."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def child_setup(parent_pid: int, creds: tuple[int, int, list[int]] | None = None) -> None:
    """Runs in a forked child, before exec: least privilege, and death with its parent.

    ``creds`` (uid, gid, supplementary groups): the user to drop to.
    """
    if creds is not None:
        uid, gid, groups = creds
        os.setgroups(groups)
        os.setgid(gid)  # as root: real, effective and saved ids alike
        os.setuid(uid)
    # After the uid change, which clears the parent-death signal.
    prctl(PR_SET_PDEATHSIG, 9)  # SIGKILL
    prctl(PR_SET_NO_NEW_PRIVS, 1)  # no setuid/file-capability escalation, ever
    os.umask(0o077)  # files the workload creates are private unless it says otherwise
    reset_signals()
    # The parent may have died before the line above took effect: die now, not later.
    if os.getppid() != parent_pid:
        os._exit(127)


def reset_signals() -> None:
    """Every signal at its default disposition and none blocked, as systemd and the
    container engines start a process: a signal ignored by whoever started las (a shell's
    background job ignores SIGINT and SIGQUIT, ``nohup`` SIGHUP) would otherwise stay
    ignored across exec, and a stop signal could never reach the workload."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):  # reserved by the C library (32, 33)
            continue
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def reap_children() -> None:
    """Reap every child of this process that has exited (a subreaper's orphans), without
    waiting for the others."""
    while True:
        try:
            got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if got == 0:
            return
