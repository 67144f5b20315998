"""The hardware profile of this machine: CPU, memory, GPUs, container engines, cgroups.

``detect_hardware()`` probes the machine; ``save_profile``/``load_profile`` keep a profile in a
JSON file so that a plan can be made for a machine other than this one (``las hw --save``).

Detection never raises for a missing tool, driver or file: every probe catches its own
failures and records why in the profile (``gpu_detection`` notes, ``EngineInfo.reason``,
``CgroupInfo.detail``). Every subprocess runs with a timeout. ``pynvml`` is imported only
when NVML is probed, so importing this module stays cheap.

GPUs are probed in this order: NVIDIA through NVML, then ``nvidia-smi`` when NVML fails,
then AMD through sysfs (``/sys/class/drm/card*/device/mem_info_vram_*``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from localaistack.control.boundedload import InputError, decode_text, load_json, read_limited
from localaistack.errors import HardwareProfileError

SCHEMA_VERSION = 1
DEFAULT_TIMEOUT = 5.0
MIB = 1 << 20

EngineName = Literal["podman", "docker"]
ENGINE_NAMES: tuple[EngineName, ...] = ("podman", "docker")

_NVIDIA_SMI_FIELDS = (
    "index",
    "uuid",
    "name",
    "memory.total",
    "memory.free",
    "driver_version",
    "compute_cap",
)
_AMD_VENDOR_ID = "0x1002"
_CARD_RE = re.compile(r"^card(\d+)$")
# cgroup v1 controllers the kernel may offer; /proc/cgroups, when readable, is used instead.
_KNOWN_V1_CONTROLLERS = frozenset(
    {
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "blkio",
        "perf_event",
        "net_prio",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    }
)
# The controllers that matter most for limits first; the rest follow alphabetically.
_CONTROLLER_ORDER = ("memory", "cpu", "pids", "cpuset", "io", "blkio", "cpuacct", "hugetlb")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CpuInfo(_Frozen):
    """The processor: model name, physical cores, logical threads, architecture."""

    model: str
    cores: int = Field(ge=1)
    threads: int = Field(ge=1)
    arch: str


class MemoryInfo(_Frozen):
    """System memory in bytes."""

    total: int = Field(ge=0)
    available: int = Field(ge=0)


class GpuInfo(_Frozen):
    """One GPU. ``index`` is the vendor's own device index (CUDA or ROCm numbering)."""

    vendor: Literal["nvidia", "amd"]
    index: int = Field(ge=0)
    uuid: str
    name: str
    memory_total: int = Field(ge=0)
    memory_free: int = Field(ge=0)
    driver: str | None = None
    compute_capability: str | None = None


class ProbeNote(_Frozen):
    """What one GPU probe found, or why it found nothing."""

    source: str
    ok: bool
    detail: str


class EngineInfo(_Frozen):
    """A container engine: whether its CLI is on PATH and whether it answers."""

    name: EngineName
    installed: bool
    usable: bool
    version: str | None = None
    reason: str | None = None
    # False: las did not ask (``probe_engines=False``): installed and usable say nothing.
    probed: bool = True


class CgroupInfo(_Frozen):
    """The cgroup setup and the controllers this process could use to enforce limits."""

    version: Literal["v1", "v2", "hybrid", "none"]
    controllers: tuple[str, ...] = ()
    detail: str = ""


class HardwareProfile(_Frozen):
    """Everything the planner needs to know about a machine."""

    schema_version: int = SCHEMA_VERSION
    collected_at: str
    hostname: str
    source: str = "detected"
    cpu: CpuInfo
    memory: MemoryInfo
    gpus: tuple[GpuInfo, ...] = ()
    gpu_detection: tuple[ProbeNote, ...] = ()
    engines: tuple[EngineInfo, ...] = ()
    cgroup: CgroupInfo

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {v}; this las reads {SCHEMA_VERSION}")
        return v

    @property
    def usable_engines(self) -> tuple[str, ...]:
        """Names of the container engines that answered, in profile order."""
        return tuple(e.name for e in self.engines if e.usable)

    def engine(self, name: str) -> EngineInfo | None:
        """The engine called ``name``, or None when the profile does not list it."""
        for e in self.engines:
            if e.name == name:
                return e
        return None

    @property
    def total_vram(self) -> int:
        """Total GPU memory of all GPUs, in bytes."""
        return sum(g.memory_total for g in self.gpus)


# --------------------------------------------------------------------------- helpers


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _decode(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:  # podman prints WARN lines before the real "Error: ..." line
        if line.lower().startswith("error"):
            return line
    return lines[0] if lines else ""


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    return dict(os.environ if env is None else env)


def _which(name: str, env: Mapping[str, str]) -> str | None:
    return shutil.which(name, path=env.get("PATH", os.defpath))


def _run(argv: list[str], env: Mapping[str, str], timeout: float) -> tuple[int, str, str]:
    """Run ``argv``; kill its whole process group when it outlives ``timeout``.

    Raises:
        subprocess.TimeoutExpired: when it ran too long.
        OSError: when it cannot be started.
    """
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        text=True,
        errors="replace",
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        return proc.returncode, out, err


def _describe_exc(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


# --------------------------------------------------------------------------- CPU, memory


def detect_cpu(proc_root: Path = Path("/proc")) -> CpuInfo:
    """The CPU model from ``/proc/cpuinfo``, core and thread counts from psutil."""
    import psutil

    model = ""
    cpuinfo = _read_text(proc_root / "cpuinfo") or ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields and value.strip():
            fields[key.strip()] = value.strip()
    for key in ("model name", "Model", "cpu model", "Hardware", "cpu"):
        if key in fields:
            model = fields[key]
            break
    model = model or platform.processor() or platform.machine() or "unknown"
    threads = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    cores = psutil.cpu_count(logical=False) or threads
    return CpuInfo(model=model, cores=cores, threads=threads, arch=platform.machine() or "unknown")


def detect_memory() -> MemoryInfo:
    """Total and available system memory from psutil."""
    import psutil

    vm = psutil.virtual_memory()
    return MemoryInfo(total=int(vm.total), available=int(vm.available))


# --------------------------------------------------------------------------- GPUs


def probe_nvml(nvml: Any = None) -> tuple[tuple[GpuInfo, ...], ProbeNote]:
    """NVIDIA GPUs through NVML. ``nvml`` defaults to the ``pynvml`` module."""
    try:
        if nvml is None:
            import importlib

            nvml = importlib.import_module("pynvml")  # untyped; imported only when probed
        nvml.nvmlInit()
    except Exception as exc:
        detail = _describe_exc(exc)
        if type(exc).__name__ == "NVMLError_LibraryNotFound":
            detail = "libnvidia-ml.so.1 not found"
        elif isinstance(exc, ImportError):
            detail = f"pynvml cannot be imported: {detail}"
        return (), ProbeNote(source="nvml", ok=False, detail=f"NVML not available: {detail}")
    try:
        try:
            driver: str | None = _decode(nvml.nvmlSystemGetDriverVersion())
        except Exception:
            driver = None
        gpus = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                cc: str | None = f"{int(major)}.{int(minor)}"
            except Exception:
                cc = None
            gpus.append(
                GpuInfo(
                    vendor="nvidia",
                    index=i,
                    uuid=_decode(nvml.nvmlDeviceGetUUID(handle)),
                    name=_decode(nvml.nvmlDeviceGetName(handle)),
                    memory_total=int(mem.total),
                    memory_free=int(mem.free),
                    driver=driver,
                    compute_capability=cc,
                )
            )
    except Exception as exc:
        return (), ProbeNote(
            source="nvml", ok=False, detail=f"NVML query failed: {_describe_exc(exc)}"
        )
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return tuple(gpus), ProbeNote(source="nvml", ok=True, detail=f"{len(gpus)} GPU(s)")


def _optional(value: str) -> str | None:
    value = value.strip()
    if not value or value.startswith("[") or value.upper() in {"N/A", "NONE"}:
        return None
    return value


def _mib(value: str) -> int:
    text = _optional(value)
    return int(float(text)) * MIB if text else 0


def parse_nvidia_smi_csv(text: str) -> tuple[tuple[GpuInfo, ...], list[str]]:
    """Parse ``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` output.

    Columns follow ``_NVIDIA_SMI_FIELDS``; ``compute_cap`` may be missing (old drivers).
    Returns the GPUs and a list of the lines that could not be parsed, with why.
    """
    gpus: list[GpuInfo] = []
    problems: list[str] = []
    for row in csv.reader(text.splitlines(), skipinitialspace=True):
        if not row or not "".join(row).strip():
            continue
        cells = [c.strip() for c in row]
        if len(cells) not in (len(_NVIDIA_SMI_FIELDS), len(_NVIDIA_SMI_FIELDS) - 1):
            problems.append(f"{len(cells)} columns in {', '.join(cells)!r}")
            continue
        try:
            gpus.append(
                GpuInfo(
                    vendor="nvidia",
                    index=int(cells[0]),
                    uuid=cells[1],
                    name=cells[2],
                    memory_total=_mib(cells[3]),
                    memory_free=_mib(cells[4]),
                    driver=_optional(cells[5]),
                    compute_capability=_optional(cells[6]) if len(cells) > 6 else None,
                )
            )
        except (ValueError, ValidationError) as exc:
            problems.append(f"{', '.join(cells)!r}: {_first_line(str(exc))}")
    return tuple(gpus), problems


def probe_nvidia_smi(
    env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT
) -> tuple[tuple[GpuInfo, ...], ProbeNote]:
    """NVIDIA GPUs from the ``nvidia-smi`` found on ``env``'s PATH (MiB units)."""
    environ = _env(env)
    exe = _which("nvidia-smi", environ)
    if exe is None:
        return (), ProbeNote(source="nvidia-smi", ok=False, detail="not installed (not on PATH)")
    fields = list(_NVIDIA_SMI_FIELDS)
    try:
        for _ in range(2):
            argv = [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
            rc, out, err = _run(argv, environ, timeout)
            # Drivers before 510 do not know compute_cap: ask again without it.
            if rc != 0 and "compute_cap" in out + err and "compute_cap" in fields:
                fields.remove("compute_cap")
                continue
            break
    except subprocess.TimeoutExpired:
        return (), ProbeNote(source="nvidia-smi", ok=False, detail=f"timed out after {timeout:g}s")
    except Exception as exc:
        return (), ProbeNote(source="nvidia-smi", ok=False, detail=_describe_exc(exc))
    if rc != 0:
        reason = _first_line(err) or _first_line(out) or "no output"
        return (), ProbeNote(source="nvidia-smi", ok=False, detail=f"exit {rc}: {reason}")
    gpus, problems = parse_nvidia_smi_csv(out)
    if not gpus:
        detail = f"unparseable output: {problems[0]}" if problems else "no GPUs listed"
        return (), ProbeNote(source="nvidia-smi", ok=False, detail=detail)
    detail = f"{len(gpus)} GPU(s)"
    if problems:
        detail += f"; skipped {len(problems)} unparseable line(s): {problems[0]}"
    return gpus, ProbeNote(source="nvidia-smi", ok=True, detail=detail)


def probe_amd_sysfs(sysfs_root: Path = Path("/sys")) -> tuple[tuple[GpuInfo, ...], ProbeNote]:
    """AMD GPUs from ``<sysfs_root>/class/drm/card*/device/mem_info_vram_{total,used}``."""
    drm = sysfs_root / "class" / "drm"
    pattern = f"{drm}/card*/device/mem_info_vram_total"
    try:
        cards = sorted(
            (int(m.group(1)), entry)
            for entry in drm.iterdir()
            if (m := _CARD_RE.match(entry.name))
            and (entry / "device" / "mem_info_vram_total").is_file()
        )
    except OSError:
        cards = []
    if not cards:
        return (), ProbeNote(source="amd-sysfs", ok=False, detail=f"no {pattern}")
    driver = _optional(_read_text(sysfs_root / "module" / "amdgpu" / "version") or "")
    gpus: list[GpuInfo] = []
    problems: list[str] = []
    for number, card in cards:
        dev = card / "device"
        vendor = (_read_text(dev / "vendor") or "").strip().lower()
        if vendor != _AMD_VENDOR_ID:
            problems.append(f"card{number}: vendor {vendor or 'unknown'}, not AMD")
            continue
        try:
            total = int((dev / "mem_info_vram_total").read_text().strip())
            used_text = _read_text(dev / "mem_info_vram_used")
            used = int(used_text.strip()) if used_text and used_text.strip() else 0
        except (OSError, ValueError) as exc:
            problems.append(f"card{number}: cannot read VRAM size: {_describe_exc(exc)}")
            continue
        name = (_read_text(dev / "product_name") or "").strip()
        if not name:
            device_id = (_read_text(dev / "device") or "").strip() or "unknown"
            name = f"AMD GPU (device {device_id})"
        uuid = (_read_text(dev / "unique_id") or "").strip() or f"amd-card{number}"
        gpus.append(
            GpuInfo(
                vendor="amd",
                index=len(gpus),
                uuid=uuid,
                name=name,
                memory_total=total,
                memory_free=max(total - used, 0),
                driver=driver,
            )
        )
    if not gpus:
        return (), ProbeNote(source="amd-sysfs", ok=False, detail="; ".join(problems))
    detail = f"{len(gpus)} GPU(s)"
    if problems:
        detail += f"; skipped {'; '.join(problems)}"
    return tuple(gpus), ProbeNote(source="amd-sysfs", ok=True, detail=detail)


def detect_gpus(
    *,
    sysfs_root: Path = Path("/sys"),
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    use_nvml: bool = True,
) -> tuple[tuple[GpuInfo, ...], tuple[ProbeNote, ...]]:
    """All GPUs and a note per probe. ``nvidia-smi`` is asked only when NVML fails."""
    gpus: list[GpuInfo] = []
    notes: list[ProbeNote] = []
    nvml_ok = False
    if use_nvml:
        found, note = probe_nvml()
        gpus.extend(found)
        notes.append(note)
        nvml_ok = note.ok
    if not nvml_ok:
        found, note = probe_nvidia_smi(env, timeout)
        gpus.extend(found)
        notes.append(note)
    found, note = probe_amd_sysfs(sysfs_root)
    gpus.extend(found)
    notes.append(note)
    return tuple(gpus), tuple(notes)


# --------------------------------------------------------------------------- engines


def detect_engine(
    name: EngineName, *, env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT
) -> EngineInfo:
    """Whether the ``name`` CLI is on PATH and usable (docker: its daemon answers; podman:
    its storage can be read).

    The environment (DOCKER_HOST, CONTAINER_HOST, ...) is passed through unchanged.
    """
    environ = _env(env)
    exe = _which(name, environ)
    if exe is None:
        return EngineInfo(name=name, installed=False, usable=False, reason="not found on PATH")
    if name == "podman":
        # Not `podman info` (slow): `version` (the client) plus an image lookup (which opens
        # the storage, as running a container does) show as much, faster.
        steps = [
            [exe, "version", "--format", "json"],
            [exe, "image", "exists", "las-usability-probe:none"],
        ]
    else:
        steps = [[exe, "version", "--format", "{{json .}}"]]
    version = None
    for argv in steps:
        what = f"{name} {' '.join(argv[1:3])}" if argv[1] == "image" else f"{name} {argv[1]}"
        try:
            rc, out, err = _run(argv, environ, timeout)
        except subprocess.TimeoutExpired:
            reason = f"`{what}` timed out after {timeout:g}s"
            return EngineInfo(
                name=name, installed=True, usable=False, version=version, reason=reason
            )
        except Exception as exc:
            reason = f"`{what}` could not run: {_describe_exc(exc)}"
            return EngineInfo(
                name=name, installed=True, usable=False, version=version, reason=reason
            )
        if argv[1] == "version":
            version = _engine_version(name, out)
        ok = rc in (0, 1) if argv[1] == "image" else rc == 0  # 1: "no such image": fine
        if not ok:
            reason = _first_line(err) or _first_line(out) or f"`{what}` exited with status {rc}"
            return EngineInfo(
                name=name, installed=True, usable=False, version=version, reason=reason
            )
    return EngineInfo(name=name, installed=True, usable=True, version=version)


def _engine_version(name: EngineName, out: str) -> str | None:
    """The server version (else the client's) from ``podman info``/``docker version`` JSON."""
    try:
        data = json.loads(out)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if name == "podman":
        candidates = [data.get("Client"), data.get("version")]
    else:
        candidates = [data.get("Server"), data.get("Client")]
    for part in candidates:
        if isinstance(part, dict) and isinstance(part.get("Version"), str) and part["Version"]:
            return str(part["Version"])
    return None


def detect_engines(
    *, env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT
) -> tuple[EngineInfo, ...]:
    """Podman and Docker, in that order."""
    return tuple(detect_engine(n, env=env, timeout=timeout) for n in ENGINE_NAMES)


def unprobed_engines() -> tuple[EngineInfo, ...]:
    """The engines as a profile lists them when they were not asked (not usable)."""
    return tuple(
        EngineInfo(
            name=n,
            installed=False,
            usable=False,
            version=None,
            reason="not probed: not needed for this plan",
            probed=False,
        )
        for n in ENGINE_NAMES
    )


# --------------------------------------------------------------------------- cgroups


def _unescape_mount(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _order_controllers(names: set[str]) -> tuple[str, ...]:
    first = [c for c in _CONTROLLER_ORDER if c in names]
    return (*first, *sorted(names - set(first)))


def _in_mount(mountpoint: str, mount_root: str, cgroup_path: str) -> Path:
    """The directory of ``cgroup_path`` inside a mount of the hierarchy rooted at mount_root."""
    base = Path(mountpoint)
    root = mount_root.rstrip("/")
    if cgroup_path == root or cgroup_path.startswith(root + "/"):
        candidate = base / cgroup_path[len(root) :].lstrip("/")
        if candidate.is_dir():
            return candidate
    return base


def detect_cgroup(proc_root: Path = Path("/proc")) -> CgroupInfo:
    """The cgroup version and the controllers under which this process can make a child.

    v1: a controller counts when the directory of this process's cgroup in that controller's
    hierarchy is writable. v2: the controllers in ``cgroup.controllers`` count when this
    process's cgroup directory and its ``cgroup.subtree_control`` are writable.
    """
    mountinfo_path = proc_root / "self" / "mountinfo"
    try:
        mountinfo = mountinfo_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        detail = f"cannot read {mountinfo_path}: {exc.strerror or exc}"
        return CgroupInfo(version="none", detail=detail)

    known = set(_KNOWN_V1_CONTROLLERS)
    for line in (_read_text(proc_root / "cgroups") or "").splitlines():
        if line and not line.startswith("#"):
            known.add(line.split()[0])

    v1: list[tuple[str, str, set[str]]] = []  # (mountpoint, mount root, controllers)
    v2: list[tuple[str, str]] = []
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        fstype, root, mountpoint = tail[0], _unescape_mount(fields[3]), _unescape_mount(fields[4])
        if fstype == "cgroup":
            options = set(tail[2].split(",")) if len(tail) > 2 else set()
            v1.append((mountpoint, root, options & known))
        elif fstype == "cgroup2":
            v2.append((mountpoint, root))

    v1_paths: dict[str, str] = {}
    v2_path = "/"
    for line in (_read_text(proc_root / "self" / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        for ctrl in parts[1].split(","):
            if ctrl:
                v1_paths[ctrl] = parts[2]

    writable: set[str] = set()
    not_writable: set[str] = set()
    notes: list[str] = []
    for mountpoint, root, controllers in v1:
        for ctrl in controllers:
            directory = _in_mount(mountpoint, root, v1_paths.get(ctrl, "/"))
            (writable if os.access(directory, os.W_OK) else not_writable).add(ctrl)
    if v1:
        parents = sorted({str(Path(m).parent) for m, _, c in v1 if c})
        notes.append(f"v1 controllers mounted under {', '.join(parents) or '?'}")
    for mountpoint, root in v2[:1]:
        directory = _in_mount(mountpoint, root, v2_path)
        available = set((_read_text(directory / "cgroup.controllers") or "").split())
        can_write = os.access(directory, os.W_OK) and os.access(
            directory / "cgroup.subtree_control", os.W_OK
        )
        (writable if can_write else not_writable).update(available)
        listed = ", ".join(_order_controllers(available)) or "none"
        state = "writable" if can_write else "not writable"
        notes.append(f"cgroup2 at {mountpoint} ({directory} {state}; controllers: {listed})")
    not_writable -= writable
    if not_writable:
        notes.append(f"not writable: {', '.join(_order_controllers(not_writable))}")

    if v1 and v2:
        version: Literal["v1", "v2", "hybrid", "none"] = "hybrid"
    elif v1:
        version = "v1"
    elif v2:
        version = "v2"
    else:
        version = "none"
        notes.append(f"no cgroup or cgroup2 mount in {mountinfo_path}")
    return CgroupInfo(
        version=version, controllers=_order_controllers(writable), detail="; ".join(notes)
    )


# --------------------------------------------------------------------------- profile


def detect_hardware(
    *,
    sysfs_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    probe_engines: bool = True,
) -> HardwareProfile:
    """Probe this machine. GPU and engine probes run concurrently; none of them raises.

    With ``probe_engines=False`` the container engines are not asked (each is a
    subprocess or two) and are reported as not probed (``probed=False``, not usable).
    """
    from concurrent.futures import ThreadPoolExecutor

    environ = _env(env)
    with ThreadPoolExecutor(max_workers=1 + len(ENGINE_NAMES)) as pool:
        gpu_future = pool.submit(detect_gpus, sysfs_root=sysfs_root, env=environ, timeout=timeout)
        engine_futures = [
            pool.submit(detect_engine, n, env=environ, timeout=timeout)
            for n in (ENGINE_NAMES if probe_engines else ())
        ]
        cpu = detect_cpu(proc_root)
        memory = detect_memory()
        cgroup = detect_cgroup(proc_root)
        gpus, notes = gpu_future.result()
        engines = tuple(f.result() for f in engine_futures) or unprobed_engines()
    return HardwareProfile(
        collected_at=datetime.now(UTC).isoformat(timespec="seconds"),
        hostname=socket.gethostname() or platform.node() or "unknown",
        source="detected",
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        gpu_detection=notes,
        engines=engines,
        cgroup=cgroup,
    )


def _format_errors(exc: ValidationError, limit: int = 8) -> str:
    items = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        items.append(f"{loc}: {err['msg']}")
    text = "; ".join(items[:limit])
    if len(items) > limit:
        text += f"; and {len(items) - limit} more"
    return text


def load_profile(path: str | os.PathLike[str]) -> HardwareProfile:
    """Read a profile written by ``save_profile``; ``source`` becomes the path.

    Raises:
        HardwareProfileError: when the file is missing, unreadable, not JSON or invalid.
    """
    p = Path(path)
    hint = "write one with `las hw --save FILE`"
    try:
        raw = read_limited(p)  # at most 1 MiB
    except FileNotFoundError:
        raise HardwareProfileError(f"hardware profile {p} does not exist", hint) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise HardwareProfileError(f"cannot read hardware profile {p}: {reason}", hint) from None
    except InputError as exc:
        raise HardwareProfileError(f"hardware profile {p}: {exc.problem}", hint) from None
    try:
        data = load_json(decode_text(raw))  # within boundedload's depth and size bounds
    except InputError as exc:
        problem = exc.problem.removeprefix("not valid JSON: ")
        msg = f"hardware profile {p} is not valid JSON: {problem}"
        raise HardwareProfileError(msg, hint) from None
    return profile_from_data(data, str(p))


def profile_from_data(data: object, source: str) -> HardwareProfile:
    """A saved profile's JSON data (read from the file ``source``, or sent in a request to
    `las serve`) as a profile whose ``source`` is ``source``.

    Raises:
        HardwareProfileError: when the data is not a valid profile.
    """
    hint = "write one with `las hw --save FILE`"
    if not isinstance(data, dict):
        msg = f"hardware profile {source} must be a JSON object, not {type(data).__name__}"
        raise HardwareProfileError(msg, hint)
    data = {**data, "source": source}
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as exc:
        msg = f"hardware profile {source} is invalid: {_format_errors(exc)}"
        raise HardwareProfileError(msg, hint) from None


def profile_json(profile: HardwareProfile) -> str:
    """The profile as saved: indented JSON without ``source``, newline-terminated.

    An engine's ``probed`` is written only when false (profiles written before it existed
    stay byte-identical).
    """
    data = profile.model_dump(mode="json", exclude={"source"})
    for engine in data["engines"]:
        if engine.get("probed", True):
            engine.pop("probed", None)
    return json.dumps(data, indent=2) + "\n"


def save_profile(profile: HardwareProfile, path: str | os.PathLike[str]) -> None:
    """Write ``profile`` as JSON (indent 2) atomically: a temporary file, then os.replace.

    Raises:
        HardwareProfileError: when the file cannot be written.
    """
    p = Path(path)
    text = profile_json(profile)
    tmp: str | None = None
    try:
        try:
            mode = p.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
        tmp = None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        msg = f"cannot write hardware profile {p}: {reason}"
        raise HardwareProfileError(msg, "check that the directory exists and is writable") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
