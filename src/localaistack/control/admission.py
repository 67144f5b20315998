"""Admission: make the plan concrete and claim what it needs, atomically.

Runs under the store's write lock (``BEGIN IMMEDIATE``), so two concurrent ``las run``
cannot take the same instance name, be promised the same host port, or both take the last
GPU or the last RAM.

Resources are checked twice, when the caller gives the ``Capacity`` (the machine's capacity
and the policy's terms, from the hardware profile and the policy):

* against the **ledger** (``store.db.reservations``): capacity minus the policy's reserve
  minus what the instances that run (or were just admitted) hold by their plans;
* against **live** usage (``LiveUsage``: ``MemAvailable``, NVML's free memory): free now
  minus the policy's reserve, which catches memory held by processes las does not manage
  and memory a stopped workload's driver has not released yet.

A request that does not fit is refused (``ResourcesRefused``, an ``AdmissionRefused``),
naming what was asked, what is free and who holds the rest, unless the policy says
``overcommit: allow``: then it is admitted and the overcommit is recorded as an event and
returned as a note. CPUs are reported, never refused (CPU time is shared, not held).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from localaistack.control.ports import free_port
from localaistack.errors import AdmissionRefused, InstanceConflict
from localaistack.plan import ExecutionPlan
from localaistack.store.db import (
    ACTIVE_STATES,
    Store,
    Transaction,
    add_event,
    current_run_state,
    insert_instance,
    instance_exists,
    mark_admitted,
    promised_ports,
    reservations,
)
from localaistack.store.records import Reservation
from localaistack.units import format_size

if TYPE_CHECKING:
    from localaistack.control.hardware import HardwareProfile
    from localaistack.control.policy import Policy

PlanFactory = Callable[[Callable[[str, str], int]], ExecutionPlan]

# Processes outside las that hold less RAM than this are not worth naming.
RAM_OTHERS_MIN = 512 << 20
RAM_OTHERS_MAX = 5


class PortsTaken(AdmissionRefused):
    """A port the plan names is promised to another instance or in use on the host."""


class ResourcesRefused(AdmissionRefused):
    """The memory a plan asks for is not free; ``details`` holds the numbers as data."""

    def __init__(self, message: str, hint: str | None, details: dict[str, Any]) -> None:
        super().__init__(message, hint)
        self.details = details


class GpuCapacity:
    """One GPU's capacity (not a NamedTuple: its ``index`` would shadow ``tuple.index``)."""

    __slots__ = ("index", "memory_total", "uuid", "vendor")

    def __init__(self, index: int, uuid: str, vendor: str, memory_total: int) -> None:
        self.index, self.uuid, self.vendor = index, uuid, vendor
        self.memory_total = memory_total  # bytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GpuCapacity) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(self.uuid)

    def __repr__(self) -> str:
        return f"GpuCapacity({self.as_dict()})"

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


class Capacity(NamedTuple):
    """What admission checks a plan against: the machine's capacity and the policy's terms.

    Plain data taken from the hardware profile and the policy.
    """

    memory_total: int  # bytes of RAM
    cpu_threads: int
    gpus: tuple[GpuCapacity, ...]
    reserve_memory: int  # bytes the policy keeps free
    reserve_vram: int  # bytes the policy keeps free on each GPU
    overcommit: str  # the policy's "deny" or "allow"

    @classmethod
    def of(cls, hardware: HardwareProfile, policy: Policy) -> Capacity:
        return cls(
            memory_total=hardware.memory.total,
            cpu_threads=hardware.cpu.threads,
            gpus=tuple(
                GpuCapacity(
                    index=g.index, uuid=g.uuid, vendor=g.vendor, memory_total=g.memory_total
                )
                for g in hardware.gpus
            ),
            reserve_memory=policy.reserve.memory,
            reserve_vram=policy.reserve.vram,
            overcommit=policy.overcommit,
        )


class LiveUsage:
    """Memory free right now, as the OS and the GPU driver see it.

    ``others`` names memory held by processes las does not manage, one line each:
    ``"pid 4242 python3: 6.0GiB on GPU-<uuid>"`` or ``"pid 77 java: 3.0GiB RAM"``. The
    RAM lines need a scan of every process, so ``live_usage`` leaves it to ``more``, run
    the first time ``others`` is read (only a refusal or a test reads them).
    """

    def __init__(
        self,
        *,
        ram_available: int | None = None,
        gpu_free: dict[str, int] | None = None,
        known: list[str] | None = None,
        gpu_source: dict[str, str] | None = None,
        notes: list[str] | None = None,
        more: Callable[[], list[str]] | None = None,
    ) -> None:
        self.ram_available = ram_available  # bytes, /proc/meminfo MemAvailable
        self.gpu_free = gpu_free or {}  # GPU uuid -> bytes free
        self.known = known or []  # lines already known
        self.gpu_source = gpu_source or {}  # GPU uuid -> "NVML", "sysfs"
        self.notes = notes or []  # what could not be read, and why
        self.more = more  # the rest of ``others``, when asked

    def __repr__(self) -> str:
        return f"<LiveUsage ram_available={self.ram_available} gpu_free={self.gpu_free}>"

    @property
    def others(self) -> list[str]:
        if self.more is not None:
            self.known += self.more()
            self.more = None
        return self.known


# --------------------------------------------------------------------------- live usage


class _Proc(NamedTuple):
    ppid: int
    comm: str
    rss: int


def _scan_procs(proc_root: Path) -> dict[int, _Proc]:
    """Every process's parent, name and resident memory from ``/proc/<pid>/stat``."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        page = 4096
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return {}
    out: dict[int, _Proc] = {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            text = (proc_root / entry / "stat").read_text()
            head, _, rest = text.rpartition(")")  # the name may itself hold ')'
            fields = rest.split()
            out[int(entry)] = _Proc(
                ppid=int(fields[1]), comm=head.partition("(")[2], rss=int(fields[21]) * page
            )
        except (OSError, ValueError, IndexError):
            continue
    return out


class _Managed:
    """Whether a process belongs to las: a run's pid or supervisor, a descendant of one, or
    a process in the cgroup of a run's container."""

    def __init__(
        self,
        procs: Callable[[], dict[int, _Proc]],
        pids: Collection[int],
        containers: Collection[str],
        proc_root: Path,
    ) -> None:
        self.procs = procs  # scanned when first needed
        self.pids = set(pids)
        self.containers = [c for c in containers if len(c) >= 12]
        self.proc_root = proc_root

    def __call__(self, pid: int) -> bool:
        seen: set[int] = set()
        p = pid
        while p > 1 and p not in seen:
            if p in self.pids:
                return True
            seen.add(p)
            info = self.procs().get(p)
            if info is None:
                break
            p = info.ppid
        if not self.containers:
            return False
        try:
            cgroup = (self.proc_root / str(pid) / "cgroup").read_text()
        except OSError:
            return False
        return any(cid in cgroup for cid in self.containers)


def _decode(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _open_nvml(nvml: Any) -> Any:
    if nvml is None:
        import importlib

        nvml = importlib.import_module("pynvml")  # untyped; imported only when needed
    nvml.nvmlInit()
    return nvml


def _read_mem_available(proc_root: Path) -> int | None:
    try:
        text = (proc_root / "meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            try:
                return int(parts[1]) * 1024  # kB
            except (IndexError, ValueError):
                return None
    return None


def live_usage(
    capacity: Capacity,
    *,
    store: Store | None = None,
    managed_pids: Collection[int] = (),
    managed_containers: Collection[str] = (),
    nvml: Any = None,
    proc_root: Path = Path("/proc"),
    sysfs_root: Path = Path("/sys"),
) -> LiveUsage:
    """Read free RAM and GPU memory now, and who outside las holds memory.

    Never raises for a missing driver, library or file: what cannot be read is left out
    and ``notes`` says why. ``store`` (or ``managed_pids``/``managed_containers``) tells
    las's own processes apart from the others. ``nvml`` defaults to ``pynvml``, imported
    only when the profile has an NVIDIA GPU.
    """
    live = LiveUsage()
    pids, containers = set(managed_pids), set(managed_containers)
    if store is not None:
        more_pids, more_containers = store.managed_processes()
        pids |= more_pids
        containers |= more_containers
    scanned: dict[int, _Proc] | None = None

    def procs() -> dict[int, _Proc]:
        nonlocal scanned
        if scanned is None:
            scanned = _scan_procs(proc_root)
        return scanned

    managed = _Managed(procs, pids, containers, proc_root)

    live.ram_available = _read_mem_available(proc_root)
    if live.ram_available is None:
        live.notes.append(f"RAM: no MemAvailable in {proc_root / 'meminfo'}")

    nvidia = {g.uuid for g in capacity.gpus if g.vendor == "nvidia"}
    if nvidia:
        _nvml_usage(live, nvml, managed, procs())
    if any(g.vendor == "amd" for g in capacity.gpus):
        from localaistack.control.hardware import probe_amd_sysfs

        gpus, note = probe_amd_sysfs(sysfs_root)
        for g in gpus:
            live.gpu_free[g.uuid] = g.memory_free
            live.gpu_source[g.uuid] = "sysfs"
        if not note.ok:
            live.notes.append(f"AMD: {note.detail}")

    def ram_others() -> list[str]:
        """RAM held by the largest processes outside las."""
        me = os.getpid()
        big = sorted(
            (
                (info.rss, pid, info.comm)
                for pid, info in procs().items()
                if info.rss >= RAM_OTHERS_MIN and pid != me and not managed(pid)
            ),
            reverse=True,
        )
        return [
            f"pid {pid} {comm}: {format_size(rss)} RAM" for rss, pid, comm in big[:RAM_OTHERS_MAX]
        ]

    live.more = ram_others
    return live


def _nvml_usage(
    live: LiveUsage, nvml: Any, managed: Callable[[int], bool], procs: dict[int, _Proc]
) -> None:
    try:
        nv = _open_nvml(nvml)
    except Exception as exc:
        live.notes.append(f"NVML not available: {type(exc).__name__}: {exc}")
        return
    try:
        count = int(nv.nvmlDeviceGetCount())
        for i in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                uuid = _decode(nv.nvmlDeviceGetUUID(handle))
                live.gpu_free[uuid] = int(nv.nvmlDeviceGetMemoryInfo(handle).free)
                live.gpu_source[uuid] = "NVML"
            except Exception as exc:
                live.notes.append(f"NVML: GPU {i}: {type(exc).__name__}: {exc}")
                continue
            try:
                running = list(nv.nvmlDeviceGetComputeRunningProcesses(handle))
            except Exception as exc:
                live.notes.append(f"NVML: GPU {i}: no process list: {type(exc).__name__}: {exc}")
                continue
            for p in running:
                pid = int(p.pid)
                if managed(pid):
                    continue
                used = getattr(p, "usedGpuMemory", None)
                amount = format_size(int(used)) if isinstance(used, int) else "unknown memory"
                info = procs.get(pid)
                comm = info.comm if info is not None else "?"
                live.known.append(f"pid {pid} {comm}: {amount} on {uuid}")
    except Exception as exc:
        live.notes.append(f"NVML query failed: {type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()


# --------------------------------------------------------------------------- the checks


class _Outcome:
    def __init__(self) -> None:
        self.shortfalls: list[dict[str, Any]] = []
        self.hints: list[str] = []
        self.notes: list[str] = []
        self.cpus: dict[str, Any] | None = None

    def message(self, sep: str = "\n  ") -> str:
        return sep.join(s["message"] for s in self.shortfalls)

    def hint(self) -> str:
        hints = list(dict.fromkeys(self.hints))
        hints.append("or set `overcommit: allow` in the policy to start it anyway")
        return "; ".join(hints)


def _fs(n: int) -> str:
    return format_size(max(n, 0))


def _describe(
    name: str,
    what: str,
    requested: int,
    total: int,
    reserve: int,
    held: list[dict[str, Any]],
    live_free: int | None,
    live_source: str,
    others: list[str],
) -> str:
    free = total - reserve - sum(h["amount"] for h in held)
    breakdown = f"{_fs(total)} total"
    if reserve:
        breakdown += f" - {_fs(reserve)} reserve (policy)"
    for h in held:
        state = "" if h["state"] == "running" else f" ({h['state']})"
        breakdown += f" - {_fs(h['amount'])} held by {h['instance']}{state}"
    parts = [f"{name} asks for {_fs(requested)} of {what}", f"{_fs(free)} is free: {breakdown}"]
    if live_free is not None:
        live = f"live: {_fs(live_free)} free ({live_source})"
        if reserve:
            live += f", {_fs(live_free - reserve)} after the reserve"
        parts.append(live)
    if others:
        parts.append("held outside las: " + ", ".join(others))
    return "; ".join(parts)


def _holders(items: list[tuple[str, int, str]]) -> list[dict[str, Any]]:
    held: list[dict[str, Any]] = [
        {"instance": i, "amount": a, "state": s} for i, a, s in items if a > 0
    ]
    held.sort(key=lambda h: (-h["amount"], h["instance"]))
    return held


def _check_one(
    out: _Outcome,
    *,
    name: str,
    resource: str,
    what: str,
    requested: int,
    total: int,
    reserve: int,
    held: list[dict[str, Any]],
    live_free: int | None,
    live_source: str,
    others: list[str],
    extra: dict[str, Any],
) -> None:
    free = total - reserve - sum(h["amount"] for h in held)
    live_usable = None if live_free is None else live_free - reserve
    limited_by = []
    if requested > free:
        limited_by.append("ledger")
    if live_usable is not None and requested > live_usable:
        limited_by.append("live")
    if not limited_by:
        return
    message = _describe(name, what, requested, total, reserve, held, live_free, live_source, others)
    out.shortfalls.append(
        {
            "resource": resource,
            **extra,
            "requested": requested,
            "total": total,
            "reserve": reserve,
            "held": held,
            "free": free,
            "live_free": live_free,
            "live_source": live_source if live_free is not None else None,
            "live_usable": live_usable,
            "others": others,
            "limited_by": limited_by,
            "message": message,
        }
    )
    if "ledger" in limited_by and held:
        stops = ", ".join(f"`las stop {h['instance']}`" for h in held[:3])
        out.hints.append(f"stop an instance that holds it ({stops})")
    if "live" in limited_by:
        if others:
            pids = ", ".join(o.split(":", 1)[0] for o in others[:3])
            out.hints.append(f"free what is held outside las ({pids})")
        else:
            out.hints.append(
                "wait until the memory is released (a workload that just stopped may still "
                "hold it) and try again"
            )


def _check_resources(
    name: str,
    plan: ExecutionPlan,
    held: list[Reservation],
    cap: Capacity,
    live: LiveUsage | None,
) -> _Outcome:
    out = _Outcome()
    live = live or LiveUsage()

    # RAM
    memory = plan.resources.memory
    if memory:
        _check_one(
            out,
            name=name,
            resource="ram",
            what="RAM",
            requested=memory,
            total=cap.memory_total,
            reserve=cap.reserve_memory,
            held=_holders([(r.instance, r.memory or 0, r.state) for r in held]),
            live_free=live.ram_available,
            live_source="MemAvailable",
            others=[o for o in live.others if o.endswith(" RAM")],
            extra={},
        )

    # VRAM, per assigned GPU
    by_uuid = {g.uuid: g for g in cap.gpus}
    for a in plan.gpus:
        if a.vram <= 0:
            continue
        gpu = by_uuid.get(a.uuid)
        if gpu is None:
            message = (
                f"{name} is assigned GPU {a.index} ({a.uuid}), which this machine does not have"
            )
            out.shortfalls.append(
                {
                    "resource": "vram",
                    "gpu": a.uuid,
                    "index": a.index,
                    "requested": a.vram,
                    "limited_by": ["missing"],
                    "message": message,
                }
            )
            out.hints.append(f"plan it again: `las rm {name}`, then `las run` it")
            continue
        before = len(out.shortfalls)
        _check_one(
            out,
            name=name,
            resource="vram",
            what=f"VRAM on GPU {gpu.index} ({gpu.uuid})",
            requested=a.vram,
            total=gpu.memory_total,
            reserve=cap.reserve_vram,
            held=_holders([(r.instance, r.gpus.get(a.uuid, 0), r.state) for r in held]),
            live_free=live.gpu_free.get(a.uuid),
            live_source=live.gpu_source.get(a.uuid, "live"),
            others=[o for o in live.others if o.endswith(f" on {a.uuid}")],
            extra={"gpu": a.uuid, "index": gpu.index},
        )
        if len(out.shortfalls) > before:
            room = _other_gpus_with_room(a.vram, plan, held, cap, live)
            if room:
                out.hints.append(f"{room} (plan it again)")

    # CPUs: reported, never refused
    cpus = plan.resources.cpus
    if cpus:
        holders = sorted((r.instance, r.cpus) for r in held if r.cpus)
        in_all = cpus + sum(c for _, c in holders)
        threads = cap.cpu_threads
        out.cpus = {
            "requested": cpus,
            "held": [{"instance": i, "cpus": c} for i, c in holders],
            "threads": threads,
            "oversubscribed": in_all > threads,
        }
        if in_all > threads:
            who = ", ".join(f"{i} {c:g}" for i, c in holders)
            out.notes.append(
                f"CPUs oversubscribed: {name} asks for {cpus:g} CPU(s); {in_all:g} in all "
                f"({who}) on {threads} threads (admitted: CPU time is shared)"
            )
    return out


def _other_gpus_with_room(
    need: int,
    plan: ExecutionPlan,
    held: list[Reservation],
    cap: Capacity,
    live: LiveUsage,
) -> str:
    mine = {g.uuid for g in plan.gpus}
    room = []
    for g in cap.gpus:
        if g.uuid in mine:
            continue
        free = g.memory_total - cap.reserve_vram - sum(r.gpus.get(g.uuid, 0) for r in held)
        live_free = live.gpu_free.get(g.uuid)
        if live_free is not None:
            free = min(free, live_free - cap.reserve_vram)
        if free >= need:
            room.append(f"GPU {g.index} has {_fs(free)} free")
    return ", ".join(room)


def _admit_resources(
    c: Transaction,
    name: str,
    plan: ExecutionPlan,
    cap: Capacity | None,
    live: LiveUsage | None,
) -> tuple[_Outcome | None, dict[str, Any]]:
    """Check ``plan`` against the ledger and live usage; raise or return what to record."""
    if cap is None:
        return None, {}
    held = reservations(c, exclude=name)
    out = _check_resources(name, plan, held, cap, live)
    details: dict[str, Any] = {
        "instance": name,
        "overcommit": cap.overcommit,
        "shortfalls": out.shortfalls,
        "cpus": out.cpus,
        "live_notes": list(live.notes) if live else [],
    }
    if out.shortfalls and cap.overcommit != "allow":
        raise ResourcesRefused(out.message(), out.hint(), details)
    if out.shortfalls:
        out.notes.insert(0, f"overcommitted (policy overcommit: allow): {out.message(' | ')}")
    return out, details


def _record(
    c: Transaction,
    name: str,
    out: _Outcome | None,
    details: dict[str, Any],
    notes: list[str] | None,
) -> None:
    if out is None:
        return
    if out.shortfalls:
        add_event(c, "overcommit", out.notes[0], instance=name, data=details)
    if notes is not None:
        notes.extend(out.notes)


# --------------------------------------------------------------------------- admission


def admit_new(
    store: Store,
    name: str,
    make_plan: PlanFactory,
    *,
    capacity: Capacity | None = None,
    live: LiveUsage | None = None,
    notes: list[str] | None = None,
) -> ExecutionPlan:
    """Plan with ports nobody else was promised, check its memory, create the instance.

    ``make_plan`` is called with a port allocator.

    With ``capacity`` the plan's RAM and VRAM are checked against the
    ledger and ``live`` usage (see the module's doc); without them only names and ports
    are. The instance then holds its reservation until its run is created (and while that
    run is active). Overcommit notes (``overcommit: allow``) and CPU notes are appended
    to ``notes``.

    Raises:
        InstanceConflict: the name is taken.
        ResourcesRefused: the memory is not free (an ``AdmissionRefused``).
        PlanningError: from ``make_plan``.
    """
    with store.transaction() as c:
        if instance_exists(c, name):
            raise _name_taken(c, name)
        taken = promised_ports(c)
        chosen: set[int] = set()

        def allocate(host: str, _port_name: str) -> int:
            avoid = {p for h, p in taken if h in (host, "0.0.0.0", "::")} | chosen
            port = free_port(host, avoid)
            chosen.add(port)
            return port

        plan = make_plan(allocate)
        out, details = _admit_resources(c, name, plan, capacity, live)
        if not insert_instance(c, name, plan.module.name, plan.mode, plan.model_dump_json()):
            raise _name_taken(c, name)
        mark_admitted(c, name)
        _record(c, name, out, details, notes)
    return plan


def gpu_held(store: Store) -> dict[str, int]:
    """VRAM the ledger holds per GPU uuid (for the planner's choice of GPUs)."""
    held: dict[str, int] = {}
    for r in store.reservations():
        for uuid, amount in r.gpus.items():
            held[uuid] = held.get(uuid, 0) + amount
    return held


def _name_taken(c: Transaction, name: str) -> InstanceConflict:
    state = current_run_state(c, name) or "created"
    if state in ACTIVE_STATES:
        return InstanceConflict(
            f"instance {name!r} is already {state}",
            hint=f"choose another --name, or `las stop {name}`",
        )
    return InstanceConflict(
        f"instance name {name!r} is already in use (state: {state})",
        hint=f"`las start {name}` runs it again with its plan; `las rm {name}` forgets it; "
        "or choose another --name",
    )


def readmit(
    store: Store,
    name: str,
    plan: ExecutionPlan,
    *,
    capacity: Capacity | None = None,
    live: LiveUsage | None = None,
    notes: list[str] | None = None,
) -> None:
    """Check that an existing instance may start again: its ports and its memory.

    As ``admit_new`` for the memory (the instance's own reservation is not counted
    against it); on success the instance holds its reservation until its run is created.

    Raises:
        InstanceConflict: the instance's current run is active.
        AdmissionRefused: a port is promised to another instance or in use on the host.
        ResourcesRefused: the memory is not free (an ``AdmissionRefused``).
    """
    with store.transaction() as c:
        state = current_run_state(c, name)
        if state in ACTIVE_STATES:
            raise InstanceConflict(
                f"instance {name!r} is already {state}",
                hint=f"`las stop {name}` first, or `las restart {name}`",
            )
        _check_ports(name, plan, promised_ports(c, exclude=name))
        out, details = _admit_resources(c, name, plan, capacity, live)
        mark_admitted(c, name)
        _record(c, name, out, details, notes)


def _check_ports(name: str, plan: ExecutionPlan, taken: set[tuple[str, int]]) -> None:
    for b in plan.ports:
        if (b.host_ip, b.host_port) in taken:
            raise PortsTaken(
                f"port {b.host_ip}:{b.host_port} ({b.name}) is promised to another instance",
                hint=f"`las rm {name}` and `las run` it again to get a new port",
            )
        import socket  # imported here: only a plan with ports needs it

        family = socket.AF_INET6 if ":" in b.host_ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((b.host_ip, b.host_port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise PortsTaken(
                    f"port {b.host_ip}:{b.host_port} ({b.name}) is in use by another process",
                    hint=f"free the port, or `las rm {name}` and `las run` it again",
                ) from exc


# --------------------------------------------------------------------------- release


def release_targets(plan: ExecutionPlan, cap: Capacity) -> dict[str, int]:
    """What ``wait_gpu_release`` should see free before ``plan`` starts: its VRAM plus the
    reserve, on each GPU it is assigned."""
    return {g.uuid: g.vram + cap.reserve_vram for g in plan.gpus if g.vram > 0}


def wait_gpu_release(
    hardware_uuids: list[str],
    expected_free: dict[str, int],
    timeout: float = 30.0,
    poll: float = 0.2,
    *,
    nvml: Any = None,
) -> tuple[bool, str]:
    """Wait (at most ``timeout`` seconds) until NVML shows ``expected_free`` bytes free on
    each of ``hardware_uuids``: a workload that just stopped may hold GPU memory until the
    driver has released it, and the next one must not start into it.

    Returns ``(ok, message)``. Without NVML (no library, no NVIDIA GPU) it returns at once
    with ``(True, "no NVML: not checked")``; a GPU NVML does not know is skipped and named.
    """
    if not hardware_uuids:
        return True, "no GPU to check"
    try:
        nv = _open_nvml(nvml)
    except Exception:
        return True, "no NVML: not checked"
    try:
        deadline = time.monotonic() + timeout
        while True:
            free: dict[str, int] = {}
            unknown: list[str] = []
            for uuid in hardware_uuids:
                try:
                    handle = nv.nvmlDeviceGetHandleByUUID(uuid)
                    free[uuid] = int(nv.nvmlDeviceGetMemoryInfo(handle).free)
                except Exception:
                    unknown.append(uuid)
            short = [u for u, f in free.items() if f < expected_free.get(u, 0)]
            skipped = f"; not known to NVML: {', '.join(unknown)}" if unknown else ""
            if not short:
                state = ", ".join(f"{u}: {_fs(f)} free" for u, f in free.items())
                return True, f"GPU memory released ({state or 'nothing checked'}){skipped}"
            if time.monotonic() >= deadline:
                state = ", ".join(
                    f"{u}: {_fs(free[u])} free, {_fs(expected_free[u])} expected" for u in short
                )
                return False, f"GPU memory not released after {timeout:g}s: {state}{skipped}"
            time.sleep(poll)
    finally:
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()
