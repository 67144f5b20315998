"""What las asks of an engine and what it gets back: the container spec, its state, errors.

Also the checks of a spec's parts (names, capabilities, ulimits, ports, volumes, GPUs), in
the engine CLI's own spelling where a part has one (``--publish``, ``--mount``), and
``format_bytes`` for messages about memory limits.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

ENGINES = ("podman", "docker")

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
CAP_RE = re.compile(r"^(CAP_)?[A-Z_]+$")
ULIMIT_RE = re.compile(r"^[a-z]+=-?\d+(:-?\d+)?$")
ID_RE = re.compile(r"^[0-9a-f]{12,64}$")
_GPU_UUID_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
MIN_MEMORY = 6 * 1024 * 1024  # both engines refuse a smaller memory limit

_NO_LABELS: Mapping[str, str] = {}  # never mutated: the default of ContainerRunSpec.labels


class EngineError(Exception):
    """An engine call failed. ``message`` says what, ``hint`` what to do (may be None).

    The runtime maps it to its own errors (``StartFailed`` and friends).
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class VolumeMount(NamedTuple):
    """A bind mount of a host path (must exist) into the container."""

    source: str
    target: str
    read_only: bool = True


class PublishedPort(NamedTuple):
    """A container port published on exactly one host address (``0.0.0.0``: every one)."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"


class ContainerRunSpec(NamedTuple):
    """Everything ``Engine.run`` needs to start one container, fully resolved.

    ``env`` values appear in the engine CLI's argv (``--env=K=V``) and in ``inspect``.
    ``secret_env`` values are passed as ``--env=K`` with the value in the engine CLI's own
    environment, so that no other user sees them in the CLI's command line; the engine
    still keeps them in the container's configuration (``inspect``). ``gpus`` are
    ``(vendor, uuid)`` pairs; only ``nvidia`` is supported (docker ``--gpus``, podman CDI
    devices).
    ``ulimits`` are engine ``--ulimit`` values such as ``nofile=1024:1024``; any ulimit
    replaces all of the engine's defaults (see ``suggested_ulimits``).
    """

    name: str
    image: str
    argv: Sequence[str] = ()
    env: Sequence[tuple[str, str]] = ()
    secret_env: Sequence[tuple[str, str]] = ()
    workdir: str | None = None
    user: str | None = None
    volumes: Sequence[VolumeMount] = ()
    ports: Sequence[PublishedPort] = ()
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int = 512
    gpus: Sequence[tuple[str, str]] = ()
    cap_add: Sequence[str] = ()
    read_only_root: bool = True
    labels: Mapping[str, str] = _NO_LABELS
    ulimits: Sequence[str] = ()
    stop_signal: str | None = None
    log_max_size: int | None = None


class ContainerState(NamedTuple):
    """One container as the engine's inspect describes it, normalised across engines.

    ``status`` is ``created``, ``running``, ``paused``, ``restarting``, ``removing``,
    ``exited`` or ``dead`` (podman's ``configured``/``initialized`` read as ``created``,
    ``stopped`` as ``exited``). ``pid`` is 0 unless running. ``started_at``/``finished_at``
    are the engine's RFC 3339 strings, ``""`` for never. ``oom_killed`` is as the engine
    reports it (always false on podman with cgroup v1: use ``Engine.oom_detected``).
    ``memory_limit`` is in bytes, 0 for none. ``error`` is the engine's State.Error.

    ``security`` holds, with the same keys and types for both engines:

    * ``CapDrop``, ``CapAdd``: lists as reported, names upper case with ``CAP_`` (docker
      reports ``--cap-drop=ALL`` as ``["ALL"]``; podman lists each dropped default
      capability and reports added ones only in the effective set);
    * ``Capabilities``: the effective (bounding) set, sorted: podman's ``EffectiveCaps``;
      for docker computed from its default set, ``CapDrop`` and ``CapAdd``; ``["ALL"]``
      when privileged;
    * ``NoNewPrivileges`` (bool, from ``SecurityOpt``), ``SecurityOpt`` (list),
      ``ReadonlyRootfs`` (bool), ``User`` (str, ``""`` for the image's default),
      ``NetworkMode`` (``none``, ``bridge``, ...; docker's ``default`` reads as ``bridge``),
      ``PortBindings`` (list of ``{"host_ip", "host_port", "container_port", "protocol"}``,
      ``host_ip`` ``""`` meaning every address), ``PidsLimit`` (int, 0 for none), ``Init``
      (bool), ``Privileged`` (bool), ``Ulimits`` (list of ``name=soft:hard``, lower case
      names without ``RLIMIT_``).
    """

    id: str
    name: str
    image: str
    status: str
    running: bool
    pid: int
    exit_code: int | None
    oom_killed: bool
    started_at: str
    finished_at: str
    labels: dict[str, str]
    memory_limit: int
    error: str
    security: dict[str, Any]


def format_bytes(n: int) -> str:
    """``16MiB``, ``1.5GiB``, ``512B``: whole numbers without decimals."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"  # pragma: no cover - the loop always returns


def cap_name(name: str) -> str:
    """A capability's name as both engines report it: upper case, with ``CAP_``."""
    upper = name.strip().upper()
    if upper == "ALL" or upper.startswith("CAP_"):
        return upper
    return "CAP_" + upper


# --- checks of a spec's parts ----------------------------------------------------------------


def check_name(what: str, name: str) -> None:
    if not NAME_RE.match(name or ""):
        raise EngineError(
            f"invalid {what} {name!r}",
            hint="use letters, digits, '_', '.', '-', starting with a letter or digit",
        )


def check_image(image: str) -> None:
    if not image or image.startswith("-"):
        raise EngineError(f"invalid image reference {image!r}")


def check_cap(cap: str) -> str:
    """``cap`` (a capability to add) as ``CAP_NAME``; ALL is refused."""
    if not CAP_RE.match(cap.upper()) or cap.upper() in ("ALL", "CAP_ALL"):
        raise EngineError(f"invalid capability {cap!r} in cap_add")
    return cap_name(cap)


def check_pids_limit(limit: int) -> None:
    if limit <= 0:
        raise EngineError(f"invalid pids_limit {limit}: must be positive")


def check_memory(memory: int) -> None:
    if memory < MIN_MEMORY:
        raise EngineError(f"memory limit {memory} bytes is below the 6MiB minimum")


def check_cpus(cpus: float) -> None:
    if not (cpus > 0 and math.isfinite(cpus)):
        raise EngineError(f"invalid cpus {cpus}: must be a positive number")


def check_ulimit(ulimit: str) -> None:
    if not ULIMIT_RE.match(ulimit):
        raise EngineError(f"invalid ulimit {ulimit!r}: expected e.g. nofile=1024:1024")


def check_label_key(key: str) -> None:
    if not key or "=" in key:
        raise EngineError(f"invalid label key {key!r}")


def check_env(key: str, value: str) -> None:
    if not key or "=" in key or "\0" in key + value:
        raise EngineError(f"invalid environment variable name {key!r}")


def publish_arg(port: PublishedPort) -> str:
    """``HOST:PORT:CPORT/PROTO`` for ``-p``, after checking the port and the address."""
    if port.protocol not in ("tcp", "udp"):
        raise EngineError(f"invalid protocol {port.protocol!r}: expected tcp or udp")
    for value in (port.host_port, port.container_port):
        if not 1 <= value <= 65535:
            raise EngineError(f"invalid port {value}: expected 1-65535")
    import ipaddress  # only for published ports: kept off the supervisor's import path

    try:
        addr = ipaddress.ip_address(port.host_ip)
    except ValueError as exc:
        raise EngineError(
            f"invalid host address {port.host_ip!r} for port {port.host_port}",
            hint="give an IP address such as 127.0.0.1 (0.0.0.0 only to publish on every one)",
        ) from exc
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    return f"{host}:{port.host_port}:{port.container_port}/{port.protocol}"


def mount_arg(vol: VolumeMount) -> str:
    """``--mount=type=bind,...`` for ``vol``, after checking both paths."""
    for what, path in (("source", vol.source), ("target", vol.target)):
        if not os.path.isabs(path):
            raise EngineError(f"volume {what} {path!r} is not an absolute path")
        if "," in path or "\n" in path:
            raise EngineError(f"volume {what} {path!r} contains a comma or newline")
    if not os.path.exists(vol.source):
        raise EngineError(
            f"volume source {vol.source} does not exist",
            hint="create it, or correct the path in the module's parameters",
        )
    spec = f"--mount=type=bind,source={vol.source},target={vol.target}"
    return spec + (",readonly" if vol.read_only else "")


def gpu_uuids(engine: str, gpus: Sequence[tuple[str, str]]) -> list[str]:
    """The uuids of ``gpus``, after checking that ``engine`` can be given each of them."""
    uuids = []
    for vendor, uuid in gpus:
        if vendor != "nvidia":
            raise EngineError(
                f"{vendor} GPUs cannot be given to {engine} containers by this version",
                hint="run the module natively, or on an NVIDIA GPU",
            )
        if not uuid or not _GPU_UUID_RE.match(uuid):
            raise EngineError(f"invalid GPU uuid {uuid!r}")
        uuids.append(uuid)
    return uuids
