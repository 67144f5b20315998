"""The cgroup(s) of a native run: tracking, memory and CPU limits. Standard library only.

The process group reaches every descendant that stays in it; a cgroup also reaches those
that left it (``setsid``, a daemon's double fork), and is where the kernel enforces the
run's memory and CPU limits. The supervisor creates the run's cgroup(s), the workload joins
every one of them before ``exec`` (so no child escapes in between, and every byte it
allocates is charged to the run), and the supervisor kills every member at the end and
removes the directories.

* cgroup v2 (unified at the root): one directory, ``ROOT/las/HOME-RUN_ID``; ``memory``, ``cpu``
  and ``pids`` are enabled in ``ROOT`` and ``ROOT/las`` ``cgroup.subtree_control`` as
  needed. Memory: ``memory.max``, ``memory.swap.max = 0``, ``memory.oom.group = 1``.
  CPU: ``cpu.max``.
* cgroup v1 (or hybrid): one directory per controller, ``ROOT/CONTROLLER/las/HOME-RUN_ID``:
  ``pids`` always (it tracks every descendant), ``memory`` when a memory limit is asked
  for (``memory.limit_in_bytes``, and ``memory.memsw.limit_in_bytes`` to the same value
  where swap is accounted), ``cpu`` when a CPU limit is asked for
  (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``).

``HOME`` is the label of the run's ``$LAS_HOME`` (``store.db.home_label``, as on containers):
it tells this home's cgroups from another's, so that a home that lost its records still
finds the workloads it started (``of_home``; `las ps --all`).

Nothing here sets ``RLIMIT_AS``: address space is not memory (GPU runtimes and mmapped
model files reserve far more than they use).

Where a cgroup cannot be created or a limit cannot be written (not root, no cgroupfs, the
controller is missing), the run goes on without it and the notes say why in words, for
``las inspect`` to show ("not enforced: ..."). ``tree_rss`` is the fallback the supervisor
samples to stop a workload over its memory limit when the kernel cannot enforce it;
``affinity_for`` is the CPU fallback: the workload is pinned to ``ceil(cpus)`` of the
supervisor's CPUs instead of getting a quota.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import time

# str paths: pathlib costs the supervisor memory.
DEFAULT_ROOT = "/sys/fs/cgroup"


def cgroup_root() -> str:
    """Where cgroupfs is mounted: ``$LAS_CGROUP_ROOT``, else /sys/fs/cgroup.

    Read at each call (tests set it per process).
    """
    return os.environ.get("LAS_CGROUP_ROOT") or DEFAULT_ROOT


PARENT = "las"
CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000  # the kernel refuses a quota under 1 ms
NONE_REQUESTED = "none requested"
UNLIMITED_V1 = 1 << 62  # v1 reads "no limit" as PAGE_COUNTER_MAX pages, near 2**63


class RunCgroup:
    """One run's cgroup directories (one on v2; one per controller on v1)."""

    def __init__(self, paths: dict[str, str], version: str) -> None:
        # controller ("pids", "memory", "cpu"; "unified" on v2) -> directory
        self.dirs = paths
        self.version = version

    def __repr__(self) -> str:
        return f"<RunCgroup {self.version} {' '.join(self.paths)}>"

    @property
    def paths(self) -> list[str]:
        """Every directory of the run."""
        return list(self.dirs.values())

    @property
    def procs_files(self) -> list[str]:
        """Every ``cgroup.procs`` the workload must join before exec."""
        return [os.path.join(p, "cgroup.procs") for p in self.dirs.values()]

    @property
    def path(self) -> str:
        """The directory that tracks members (v2: the one; v1: pids, else any)."""
        for key in ("unified", "pids", "memory", "cpu"):
            if key in self.dirs:
                return self.dirs[key]
        return next(iter(self.dirs.values()))

    @property
    def procs_file(self) -> str:
        """The tracking directory's ``cgroup.procs`` (kept for older callers)."""
        return os.path.join(self.path, "cgroup.procs")

    def _memory_dir(self) -> str | None:
        return self.dirs.get("unified") or self.dirs.get("memory")

    def pids(self) -> list[int]:
        """The members' process ids (zombies are not members)."""
        return _read_pids(self.procs_file)

    def kill_all(self, timeout: float = 2.0) -> int:
        """SIGKILL every member until none is left (or ``timeout``); returns how many.

        ``timeout=0`` signals the members once and returns at once (no waiting for them to
        leave the cgroup).
        """
        return len(self.kill_members(timeout))

    def members(self) -> set[int]:
        """Members of every directory (v1: one may have left one hierarchy, not another)."""
        found: set[int] = set()
        for f in self.procs_files:
            found.update(_read_pids(f))
        return found

    def kill_members(self, timeout: float = 2.0) -> set[int]:
        """``kill_all``, returning the pids it signalled."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while True:
            members = self.members()
            if not members:
                return killed
            if self.version == "v2":  # kernel 5.14+: kills every member, forks included
                with contextlib.suppress(OSError):
                    _write(os.path.join(self.path, "cgroup.kill"), "1")
                    killed.update(members)
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            if timeout <= 0 or time.monotonic() > deadline:
                return killed
            time.sleep(0.005)

    def remove(self, retries: int = 20) -> list[str]:
        """Remove every directory; returns what could not be removed, with why.

        A directory still busy after ``retries`` tries (10 ms apart) stays; so does one
        that is not ours to remove. A directory already gone is no failure.
        """
        failed: list[str] = []
        for path in self.paths:
            for n in range(retries):
                try:
                    os.rmdir(path)
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        break
                    if exc.errno == errno.EBUSY and n < retries - 1:
                        time.sleep(0.01)  # members still exiting
                        continue
                    failed.append(f"{path}: {_why(exc)}")
                break
        return failed

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer ended in this cgroup (0 when unknown)."""
        value = self._oom_kill_counter()
        return value if value is not None else 0

    def has_oom_counter(self) -> bool:
        """Whether the kernel counts OOM kills here (v2; v1 from kernel 4.13)."""
        return self._oom_kill_counter() is not None

    def _oom_kill_counter(self) -> int | None:
        d = self._memory_dir()
        if d is None:
            return None
        name = "memory.events" if self.version == "v2" else "memory.oom_control"
        return _keyed(os.path.join(d, name), "oom_kill")

    def limit_hits(self) -> int:
        """Times usage reached the limit (v1 ``memory[.memsw].failcnt``, v2 events ``max``).

        Weaker evidence than ``oom_kills``: reclaim often succeeds after a hit.
        """
        d = self._memory_dir()
        if d is None:
            return 0
        if self.version == "v2":
            return _keyed(os.path.join(d, "memory.events"), "max") or 0
        # With swap capped to the same value, memsw is the counter that hits the limit.
        names = ("memory.failcnt", "memory.memsw.failcnt")
        return max(_read_int(os.path.join(d, n)) or 0 for n in names)

    def hit_limit(self) -> bool:
        """Whether memory use ever reached the limit: a counted hit, or the peak at the limit.

        Some kernels (6.x on v1) leave ``failcnt`` at 0 even after an OOM kill.
        """
        if self.limit_hits() > 0:
            return True
        peak, limit = self.memory_peak(), self.memory_limit()
        return peak is not None and limit is not None and peak >= limit

    def memory_limit(self) -> int | None:
        """The memory limit in force, in bytes (None: none, or no memory controller)."""
        d = self._memory_dir()
        if d is None:
            return None
        name = "memory.max" if self.version == "v2" else "memory.limit_in_bytes"
        value = _read_int(os.path.join(d, name))  # v2 "max" reads as None
        return None if value is None or value >= UNLIMITED_V1 else value

    def memory_peak(self) -> int | None:
        """The highest memory use seen, in bytes (v2 ``memory.peak``, v1 max_usage)."""
        d = self._memory_dir()
        if d is None:
            return None
        name = "memory.peak" if self.version == "v2" else "memory.max_usage_in_bytes"
        return _read_int(os.path.join(d, name))

    def memory_current(self) -> int | None:
        """Memory in use now, in bytes."""
        d = self._memory_dir()
        if d is None:
            return None
        name = "memory.current" if self.version == "v2" else "memory.usage_in_bytes"
        return _read_int(os.path.join(d, name))


def _read_pids(procs_file: str) -> list[int]:
    try:
        with open(procs_file) as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _keyed(path: str, key: str) -> int | None:
    """The value of ``key`` in a flat-keyed file (``memory.events``, ``memory.oom_control``)."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] == key:
                    return int(parts[1])
    except (OSError, ValueError):
        return None
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _is_cgroup_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "cgroup.procs"))


def version_at(root: str | None = None) -> str | None:
    """``v2`` when ``root`` is a unified hierarchy, ``v1`` when it holds v1 controllers."""
    root = root or cgroup_root()
    if os.path.isfile(os.path.join(root, "cgroup.controllers")):
        return "v2"
    if any(_is_cgroup_dir(os.path.join(root, c)) for c in ("pids", "memory", "cpu")):
        return "v1"
    return None


def dir_name(run_id: str, home: str | None) -> str:
    """A run's directory name under ``las/``: ``HOME-RUN_ID`` (``RUN_ID`` without a home)."""
    return f"{home}-{run_id}" if home else run_id


def path_for(run_id: str, root: str | None = None, home: str | None = None) -> tuple[str, str]:
    """Where a run's tracking cgroup lives on this machine, and the cgroup version."""
    root = root or cgroup_root()
    name = dir_name(run_id, home)
    if version_at(root) == "v2":
        return os.path.join(root, PARENT, name), "v2"
    return os.path.join(root, "pids", PARENT, name), "v1"


def _mkdir_run(base: str, name: str) -> str:
    """Create ``base/las/NAME`` (either may exist already); raises OSError."""
    parent = os.path.join(base, PARENT)
    with contextlib.suppress(FileExistsError):
        os.mkdir(parent)
    path = os.path.join(parent, name)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    return path


def _quota(cpus: float) -> int:
    return max(MIN_QUOTA_US, round(cpus * CFS_PERIOD_US))


def create(
    run_id: str,
    *,
    memory: int | None = None,
    cpus: float | None = None,
    root: str | None = None,
    home: str | None = None,
) -> tuple[RunCgroup | None, dict[str, str]]:
    """Create the run's cgroup(s) (``las/HOME-RUN_ID``) and apply the limits.

    Returns the cgroup (None when no directory could be created at all) and a note per
    aspect: ``processes`` (tracking), ``memory`` and ``cpus``; each says what holds,
    "none requested", or "not enforced: <why>".
    """
    root = root or cgroup_root()
    version = version_at(root)
    if version is None:
        why = f"not enforced: no cgroup filesystem at {root}"
        return None, {
            "processes": f"not tracked: no cgroup filesystem at {root}",
            "memory": why if memory is not None else NONE_REQUESTED,
            "cpus": why if cpus is not None else NONE_REQUESTED,
        }
    name = dir_name(run_id, home)
    if version == "v2":
        return _create_v2(name, memory, cpus, root)
    return _create_v1(name, memory, cpus, root)


def _create_v1(
    run_id: str, memory: int | None, cpus: float | None, root: str
) -> tuple[RunCgroup | None, dict[str, str]]:
    dirs: dict[str, str] = {}
    failed: dict[str, str] = {}
    wanted = ["pids"]
    if memory is not None:
        wanted.append("memory")
    if cpus is not None:
        wanted.append("cpu")
    for controller in wanted:
        base = os.path.join(root, controller)
        target = os.path.join(base, PARENT, run_id)
        if not _is_cgroup_dir(base):
            failed[controller] = f"no cgroup v1 {controller} hierarchy at {base}"
            continue
        try:
            dirs[controller] = _mkdir_run(base, run_id)
        except OSError as exc:
            failed[controller] = f"cannot create {target}: {_why(exc)}"

    notes: dict[str, str] = {}
    if "pids" in dirs:
        notes["processes"] = f"cgroup v1 pids {dirs['pids']}"
    elif dirs:
        tracker = next(iter(dirs.items()))
        notes["processes"] = f"cgroup v1 {tracker[0]} {tracker[1]} ({failed['pids']})"
    else:
        notes["processes"] = f"not tracked: {failed['pids']}"

    if memory is None:
        notes["memory"] = NONE_REQUESTED
    elif "memory" not in dirs:
        notes["memory"] = f"not enforced: {failed['memory']}"
    else:
        notes["memory"] = _limit_memory_v1(dirs, memory)

    if cpus is None:
        notes["cpus"] = NONE_REQUESTED
    elif "cpu" not in dirs:
        notes["cpus"] = f"not enforced: {failed['cpu']}"
    else:
        quota = _quota(cpus)
        d = dirs["cpu"]
        try:
            _write(os.path.join(d, "cpu.cfs_period_us"), str(CFS_PERIOD_US))
            _write(os.path.join(d, "cpu.cfs_quota_us"), str(quota))
            notes["cpus"] = f"cgroup v1 cpu.cfs_quota_us {quota} / period {CFS_PERIOD_US}"
        except OSError as exc:
            notes["cpus"] = f"not enforced: cannot write {d}/cpu.cfs_quota_us: {_why(exc)}"
            _rmdir_quietly(dirs.pop("cpu"))

    if not dirs:
        return None, notes
    return RunCgroup(dirs, "v1"), notes


def _limit_memory_v1(dirs: dict[str, str], memory: int) -> str:
    d = dirs["memory"]
    limit = os.path.join(d, "memory.limit_in_bytes")
    memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
    value = str(memory)
    try:
        try:
            _write(limit, value)
        except OSError as exc:
            # memsw must stay >= limit: a reused cgroup being raised takes memsw first.
            if exc.errno != errno.EINVAL or not os.path.exists(memsw):
                raise
            _write(memsw, value)
            _write(limit, value)
    except OSError as exc:
        _rmdir_quietly(dirs.pop("memory"))
        return f"not enforced: cannot write {limit}: {_why(exc)}"
    note = f"cgroup v1 memory.limit_in_bytes = {memory}"
    if not os.path.exists(memsw):
        return note + " (swap not capped: swap accounting is off)"
    try:
        _write(memsw, value)
    except OSError as exc:
        return note + f" (swap not capped: memory.memsw.limit_in_bytes: {_why(exc)})"
    return note + " (swap capped too)"


def _enable(base: str, controllers: list[str]) -> list[str]:
    """Enable ``controllers`` for the children of ``base``; returns those now enabled."""
    for c in controllers:
        with contextlib.suppress(OSError):
            _write(os.path.join(base, "cgroup.subtree_control"), f"+{c}")
    try:
        with open(os.path.join(base, "cgroup.subtree_control")) as f:
            enabled = f.read().split()
    except OSError:
        return []
    return [c for c in controllers if c in enabled]


def _create_v2(
    run_id: str, memory: int | None, cpus: float | None, root: str
) -> tuple[RunCgroup | None, dict[str, str]]:
    target = os.path.join(root, PARENT, run_id)
    wanted = ["pids"]
    if memory is not None:
        wanted.append("memory")
    if cpus is not None:
        wanted.append("cpu")
    try:
        with open(os.path.join(root, "cgroup.controllers")) as f:
            available = f.read().split()
    except OSError:
        available = []
    # The root may take processes and still delegate; ROOT/las holds none.
    on_root = _enable(root, [c for c in wanted if c in available])
    try:
        path = _mkdir_run(root, run_id)
    except OSError as exc:
        why = f"not enforced: cannot create {target}: {_why(exc)}"
        return None, {
            "processes": f"not tracked: cannot create {target}: {_why(exc)}",
            "memory": why if memory is not None else NONE_REQUESTED,
            "cpus": why if cpus is not None else NONE_REQUESTED,
        }
    enabled = _enable(os.path.join(root, PARENT), on_root)

    def missing(c: str) -> str:
        if c not in available:
            return f"not enforced: the {c} controller is not available in {root}"
        return f"not enforced: cannot enable the {c} controller for {target}"

    notes = {"processes": f"cgroup v2 {path}"}
    if memory is None:
        notes["memory"] = NONE_REQUESTED
    elif "memory" not in enabled:
        notes["memory"] = missing("memory")
    else:
        try:
            _write(os.path.join(path, "memory.max"), str(memory))
        except OSError as exc:
            notes["memory"] = f"not enforced: cannot write {path}/memory.max: {_why(exc)}"
        else:
            note = f"cgroup v2 memory.max = {memory}"
            try:
                _write(os.path.join(path, "memory.swap.max"), "0")
                note += " (swap capped too)"
            except OSError as exc:
                note += f" (swap not capped: memory.swap.max: {_why(exc)})"
            # One OOM kill ends the whole workload, not just its largest process.
            with contextlib.suppress(OSError):
                _write(os.path.join(path, "memory.oom.group"), "1")
            notes["memory"] = note
    if cpus is None:
        notes["cpus"] = NONE_REQUESTED
    elif "cpu" not in enabled:
        notes["cpus"] = missing("cpu")
    else:
        quota = _quota(cpus)
        try:
            _write(os.path.join(path, "cpu.max"), f"{quota} {CFS_PERIOD_US}")
            notes["cpus"] = f"cgroup v2 cpu.max {quota} {CFS_PERIOD_US}"
        except OSError as exc:
            notes["cpus"] = f"not enforced: cannot write {path}/cpu.max: {_why(exc)}"
    return RunCgroup({"unified": path}, "v2"), notes


def _rmdir_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _find_name(run_id: str, home: str | None, parents: list[str]) -> str | None:
    """The directory name of ``run_id`` under ``parents`` (any home's when ``home`` is
    None: run ids are random, 48 bits)."""
    if home is not None:
        return dir_name(run_id, home)
    for parent in parents:
        with contextlib.suppress(OSError):
            for entry in os.listdir(parent):
                if entry == run_id or entry.endswith("-" + run_id):
                    return entry
    return None


def existing(run_id: str, root: str | None = None, home: str | None = None) -> RunCgroup | None:
    """Whatever directories of the run still exist (for cleanup after a supervisor died)."""
    root = root or cgroup_root()
    version = version_at(root)
    if version is None:
        return None
    controllers = ("pids", "memory", "cpu")
    parents = (
        [os.path.join(root, PARENT)]
        if version == "v2"
        else [os.path.join(root, c, PARENT) for c in controllers]
    )
    name = _find_name(run_id, home, parents)
    if name is None:
        return None
    if version == "v2":
        path = os.path.join(root, PARENT, name)
        return RunCgroup({"unified": path}, "v2") if os.path.isdir(path) else None
    dirs: dict[str, str] = {}
    for controller in controllers:
        path = os.path.join(root, controller, PARENT, name)
        if os.path.isdir(path):
            dirs[controller] = path
    return RunCgroup(dirs, "v1") if dirs else None


def of_home(home: str, root: str | None = None) -> dict[str, RunCgroup]:
    """Every run cgroup of the home labelled ``home`` on this machine, by run id.

    One ``listdir`` per hierarchy: what `las ps --all` asks to find workloads that no
    record knows (a home removed or replaced while they ran).
    """
    root = root or cgroup_root()
    version = version_at(root)
    if version is None:
        return {}
    prefix = home + "-"
    found: dict[str, dict[str, str]] = {}
    bases = (
        {"unified": root}
        if version == "v2"
        else {c: os.path.join(root, c) for c in ("pids", "memory", "cpu")}
    )
    for key, base in bases.items():
        parent = os.path.join(base, PARENT)
        with contextlib.suppress(OSError):
            for entry in os.listdir(parent):
                if entry.startswith(prefix) and os.path.isdir(os.path.join(parent, entry)):
                    found.setdefault(entry[len(prefix) :], {})[key] = os.path.join(parent, entry)
    return {run_id: RunCgroup(dirs, version) for run_id, dirs in found.items()}


def join(procs_files: list[str] | str) -> None:
    """Move the calling process into the cgroup(s) (called in the child before exec).

    Only ``os.open``/``os.write``/``os.close``. Tries every file; raises the first error.
    """
    if isinstance(procs_files, str):
        procs_files = [procs_files]
    first: OSError | None = None
    for procs_file in procs_files:
        try:
            fd = os.open(procs_file, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError as exc:
            if first is None:
                first = exc
    if first is not None:
        raise first


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(pids: list[int]) -> int:
    """Resident memory of ``pids`` together, in bytes (those gone count 0).

    The fallback where no cgroup enforces the memory limit: the supervisor samples it (over
    the run's process group or cgroup members) and stops the workload over its limit.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE_SIZE
        except (OSError, ValueError, IndexError):
            continue
    return total


def cpu_list(cpus: list[int]) -> str:
    """CPUs the way the kernel lists them: ``"3"``, ``"0-3"``, ``"0,2,5-7"``."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive CPUs
    for cpu in sorted(cpus):
        if runs and runs[-1][1] == cpu - 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def affinity_for(cpus: float, allowed: set[int], why: str) -> tuple[list[int] | None, str]:
    """The CPUs to pin a workload to when no cgroup quota holds its ``cpus``, and the note.

    ``allowed`` is the supervisor's own affinity set; ``why`` is the cgroup's note (why no
    quota). The choice is ``ceil(cpus)`` CPUs, the highest-numbered of ``allowed``:
    deterministic (no load sampling on the start path), and away from CPU 0, which takes
    most housekeeping and interrupts. Several pinned workloads share the same CPUs.
    Returns ``(None, "not enforced: ...")`` when that would be every allowed CPU (pinning
    would limit nothing).
    """
    why = why.removeprefix("not enforced: ")
    n = max(1, math.ceil(cpus))
    if n >= len(allowed):
        return None, (
            f"not enforced: {cpus:g} CPU(s) asked for, and the supervisor may use only "
            f"{len(allowed)} (cpu {cpu_list(list(allowed))}), so affinity would limit "
            f"nothing; no cgroup CPU quota: {why}"
        )
    chosen = sorted(allowed)[-n:]
    return chosen, affinity_note(chosen, cpus, why)


def affinity_note(chosen: list[int], cpus: float, why: str) -> str:
    """``cpu affinity: 1 core (cpu 1) for 0.5 CPUs; no cgroup CPU quota: <why>``."""
    cores = f"{len(chosen)} core{'s' if len(chosen) != 1 else ''}"
    return (
        f"cpu affinity: {cores} (cpu {cpu_list(chosen)}) for {cpus:g} CPU(s); "
        f"no cgroup CPU quota: {why}"
    )
