"""Process identity on Linux, from /proc. Standard library only.

A process is identified by its pid *and* its start time (clock ticks since boot, field 22
of ``/proc/PID/stat``) *and* the boot id: a pid alone is reused, a start time alone
repeats after a reboot.
"""

from __future__ import annotations

import os

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
        import signal  # imported here: spawn.py uses this module before the spawn

        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"
