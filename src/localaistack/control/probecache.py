"""The hardware profile remembered between plans: probed once, used while nothing it was
probed from has changed (docs/planning.md#the-hardware-probe-cache).

Probing asks NVML, the GPU tools and both container engines (`podman version`,
`podman image exists`, `docker version`: subprocesses), which is most of what planning
costs besides imports. The profile is kept in ``$LAS_HOME/cache/hardware.json`` (0600)
with the key it was probed under, and used again only when the key is unchanged:

* the probe's code (this las's hardware.py) and the machine: boot id, host name, the CPUs
  this process may use, MemTotal, the GPU device nodes, ``nvidia-smi`` on PATH, the
  effective uid;
* the container engines: each binary found on PATH (device, inode, size, mtime, ctime),
  the variables that point them elsewhere, their configuration files, and their sockets
  (the same identity, and whether Docker's answers).

What changes while the machine runs is read afresh on every use: the memory available,
the cgroup setup (both cheap), and, when the profile has GPUs, the GPUs (their free memory
decides which one a plan gets). A profile probed without the engines (``--mode native``)
serves a plan that needs them once they are probed (then kept). ``las hw`` always probes;
``LAS_PROBE_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from localaistack.control import hardware
from localaistack.control.hardware import HardwareProfile
from localaistack.errors import StoreError
from localaistack.osutil import which
from localaistack.store.paths import private_dir

FORMAT = 1
NAME = "hardware.json"
ENGINE_ENV = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "CONTAINER_HOST",
    "CONTAINER_CONNECTION",
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
    "XDG_CONFIG_HOME",
    "XDG_RUNTIME_DIR",
)
DOCKER_SOCKET = "/var/run/docker.sock"
PODMAN_SOCKET = "/run/podman/podman.sock"


def enabled() -> bool:
    return os.environ.get("LAS_PROBE_CACHE", "1") != "0"


def path_of(home: Path) -> Path:
    return home / "cache" / NAME


def _text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _stat_id(path: str | None) -> list[int] | None:
    """A file's identity: replaced, rewritten or touched, it is another file."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _gpu_nodes() -> list[str]:
    nodes = []
    for directory, prefixes in (("/dev", ("nvidia", "kfd")), ("/dev/dri", ("render", "card"))):
        try:
            nodes += [f"{directory}/{n}" for n in os.listdir(directory) if n.startswith(prefixes)]
        except OSError:
            continue
    return sorted(nodes)


def _unix_socket(url: str | None, default: str) -> str | None:
    """The socket path of an engine's host URL (None: a remote one, not a socket)."""
    if not url:
        return default
    return url.removeprefix("unix://") if url.startswith("unix://") else None


def _answers(path: str | None) -> bool:
    if path is None:
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.2)
        s.connect(path)
    except OSError:
        return False
    finally:
        s.close()
    return True


def _engine_files(env: dict[str, str | None]) -> list[Any]:
    """The engines' configuration files (where a context, a storage or a service is set)."""
    home = os.path.expanduser("~")
    config = env["XDG_CONFIG_HOME"] or os.path.join(home, ".config")
    docker_config = env["DOCKER_CONFIG"] or os.path.join(home, ".docker")
    paths = [
        os.path.join(docker_config, "config.json"),
        "/etc/containers/containers.conf",
        "/etc/containers/storage.conf",
        os.path.join(config, "containers", "containers.conf"),
        os.path.join(config, "containers", "storage.conf"),
    ]
    return [[p, _stat_id(p)] for p in paths]


def key() -> dict[str, Any]:
    """What a profile was probed from (cheap: files' identities, no subprocess)."""
    meminfo = _text("/proc/meminfo") or ""
    total = next((line for line in meminfo.splitlines() if line.startswith("MemTotal:")), "")
    env = {k: os.environ.get(k) for k in ENGINE_ENV}
    docker_socket = _unix_socket(env["DOCKER_HOST"], DOCKER_SOCKET)
    podman_socket = _unix_socket(env["CONTAINER_HOST"], PODMAN_SOCKET)
    engines = {}
    for name in hardware.ENGINE_NAMES:
        found = which(name)
        engines[name] = [found, _stat_id(found)]
    return {
        "format": FORMAT,
        "code": [hardware.SCHEMA_VERSION, _stat_id(hardware.__file__)],
        "boot": _text("/proc/sys/kernel/random/boot_id"),
        "hostname": socket.gethostname(),
        "cpus": [os.cpu_count(), sorted(os.sched_getaffinity(0))],
        "memory": total,
        "gpu_nodes": _gpu_nodes(),
        "gpu_tools": _stat_id(which("nvidia-smi")),
        "euid": os.geteuid(),
        "engines": engines,
        "engine_env": env,
        "engine_files": _engine_files(env),
        "sockets": {
            "docker": [docker_socket, _stat_id(docker_socket), _answers(docker_socket)],
            "podman": [podman_socket, _stat_id(podman_socket)],
        },
    }


def _mem_available(fallback: int) -> int:
    for line in (_text("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            with contextlib.suppress(ValueError, IndexError):
                return int(line.split()[1]) * 1024
    return fallback


def _read(path: Path, current: dict[str, Any]) -> HardwareProfile | None:
    try:
        entry = json.loads(path.read_bytes())
        if entry["key"] != current:
            return None
        return HardwareProfile.model_validate(entry["profile"])
    except (OSError, ValueError, KeyError, TypeError):  # ValidationError is a ValueError
        return None


def _write(home: Path, current: dict[str, Any], profile: HardwareProfile) -> None:
    entry = {"key": current, "profile": profile.model_dump(mode="json")}
    try:
        directory = private_dir(home, "cache")
        tmp = directory / f".{NAME}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f)
        os.replace(tmp, directory / NAME)
    except (OSError, StoreError):  # a cache that cannot be written only costs time
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)


def hardware_profile(home: Path, *, probe_engines: bool) -> HardwareProfile:
    """This machine's profile, as ``hardware.detect_hardware(probe_engines=...)`` gives it:
    probed, or the one kept in ``home``'s cache if nothing it was probed from changed."""
    if not enabled():
        return hardware.detect_hardware(probe_engines=probe_engines)
    current = key()
    kept = _read(path_of(home), current)
    if kept is None:
        profile = hardware.detect_hardware(probe_engines=probe_engines)
        _write(home, current, profile)
        return profile
    probed = all(e.probed for e in kept.engines)
    if probe_engines and not probed:
        kept = kept.model_copy(update={"engines": hardware.detect_engines()})
        _write(home, current, kept)
    changes: dict[str, Any] = {
        "memory": kept.memory.model_copy(
            update={"available": _mem_available(kept.memory.available)}
        ),
        "cgroup": hardware.detect_cgroup(),
    }
    if not probe_engines:
        changes["engines"] = hardware.unprobed_engines()
    if kept.gpus:
        changes["gpus"], changes["gpu_detection"] = hardware.detect_gpus()
    return kept.model_copy(update=changes)
