"""A cgroup per native run, where this process may create one. Standard library only.

The process group reaches every descendant that stays in it; a cgroup also reaches those
that left it (``setsid``, a daemon's double fork). The supervisor creates the run's
cgroup, the workload joins it before ``exec`` (so no child escapes in between), and the
supervisor kills every member at the end and removes it.

* cgroup v2 (unified): ``/sys/fs/cgroup/las/RUN_ID``.
* cgroup v1 (or hybrid): the ``pids`` hierarchy, ``/sys/fs/cgroup/pids/las/RUN_ID``.

When neither can be created (no permission, no cgroupfs), the run goes on with its process
group alone, and ``reason`` says why.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

CGROUP_ROOT = "/sys/fs/cgroup"  # str paths: pathlib costs the supervisor memory


class RunCgroup:
    """One run's cgroup directory."""

    def __init__(self, path: str, version: str) -> None:
        self.path = path
        self.version = version

    def __repr__(self) -> str:
        return f"<RunCgroup {self.version} {self.path}>"

    @property
    def procs_file(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    def pids(self) -> list[int]:
        try:
            with open(self.procs_file) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def kill_all(self, timeout: float = 2.0) -> int:
        """SIGKILL every member until none is left (or ``timeout``); returns how many."""
        killed = 0
        deadline = time.monotonic() + timeout
        while True:
            members = self.pids()
            if not members or time.monotonic() > deadline:
                return killed
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            time.sleep(0.005)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


def _unified(root: str) -> bool:
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def path_for(run_id: str, root: str = CGROUP_ROOT) -> tuple[str, str]:
    """Where a run's cgroup lives on this machine, and the cgroup version."""
    if _unified(root):
        return os.path.join(root, "las", run_id), "v2"
    return os.path.join(root, "pids", "las", run_id), "v1"


def create(run_id: str, root: str = CGROUP_ROOT) -> tuple[RunCgroup | None, str]:
    """Create the run's cgroup; returns it (or None) and a sentence saying what was done."""
    path, version = path_for(run_id, root)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.dirname(path))
        os.mkdir(path)
    except FileExistsError:
        pass
    except OSError as exc:
        return None, f"no cgroup: cannot create {path}: {exc.strerror}"
    return RunCgroup(path, version), f"cgroup {version} {path}"


def existing(run_id: str, root: str = CGROUP_ROOT) -> RunCgroup | None:
    """The run's cgroup if it still exists (for cleanup after a supervisor died)."""
    path, version = path_for(run_id, root)
    return RunCgroup(path, version) if os.path.isdir(path) else None


def join(procs_file: str) -> None:
    """Move the calling process into a cgroup (called in the child before exec)."""
    fd = os.open(procs_file, os.O_WRONLY)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
