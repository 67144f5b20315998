"""Reading an engine's failures: its first error line, "no such container", "the daemon is
down", and what a failed ``run`` was about (image, port, GPU)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from localaistack.runtime.engines.spec import ContainerRunSpec, EngineError, PublishedPort

NOT_FOUND = ("no such container", "no such object", "no container with name or id")
DAEMON_DOWN = (
    "cannot connect to the docker daemon",
    "is the docker daemon running",
    "permission denied while trying to connect",
    "error during connect",
    "cannot connect to podman",
    "unable to connect to podman",
)


def first_error_line(text: str) -> str:
    """The engine's first meaningful error line, without its ``Error:`` prefixes."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("Run '", "See '", "Usage:")):
            continue
        if line.startswith("time=") and "level=warning" in line:
            continue
        for prefix in ("docker: ", "Error: ", "Error response from daemon: "):
            if line.startswith(prefix):
                line = line[len(prefix) :]
        return line
    return ""


def not_found(stderr: str) -> bool:
    """Whether the engine's error says that there is no such container."""
    low = stderr.lower()
    return any(s in low for s in NOT_FOUND)


def being_removed(stderr: str) -> bool:
    """Whether the engine's error says that another caller is removing the container
    already (docker: "removal of container ... is already in progress")."""
    low = stderr.lower()
    return "removal of container" in low and "already in progress" in low


def only_not_found(stderr: str) -> bool:
    """Whether every error line (warnings aside) says "no such container"."""
    return not_found(stderr) and all(
        any(s in ln.lower() for s in NOT_FOUND)
        for ln in stderr.splitlines()
        if ln.strip() and "level=warning" not in ln
    )


def daemon_down(text: str) -> bool:
    """Whether the engine's error says that it cannot reach its daemon or service."""
    low = text.lower()
    return any(s in low for s in DAEMON_DOWN)


def name_in_use(engine: str, name: str) -> EngineError:
    return EngineError(
        f"a container named {name} already exists in {engine}",
        hint=f"remove it (`{engine} rm -f {name}`) or choose another name",
    )


def run_failure(
    engine: str, spec: ContainerRunSpec, text: str, status: str, usable_hint: str, gpu_hint: str
) -> EngineError:
    """The EngineError for a failed ``run`` (CLI or API) whose error text is ``text``."""
    low = text.lower()
    line = first_error_line(text)
    if daemon_down(text):
        return EngineError(f"{engine} is not usable: {line}", hint=usable_hint)
    if (
        "image not known" in low
        or "no such image" in low
        or "unable to find image" in low
        or "pull access denied" in low
    ):
        return EngineError(
            f"image {spec.image} is not present in {engine}",
            hint=(
                f"get it with `{engine} pull {spec.image}` or build/import it; "
                "las never pulls implicitly"
            ),
        )
    if "address already in use" in low or "port is already allocated" in low:
        port = port_in_error(spec.ports, text)
        return EngineError(
            f"port {port} is already in use",
            hint="stop whatever listens there, or choose another host port",
        )
    if spec.gpus and ("cdi" in low or "device driver" in low or "nvidia" in low):
        return EngineError(f"{engine} cannot provide the GPU(s): {line}", hint=gpu_hint)
    return EngineError(
        f"{engine} run failed ({status}): {line or 'no error message'}",
        hint=f"the full error: {text.strip()[-500:]}" if text.strip() != line else None,
    )


def port_in_error(ports: Sequence[PublishedPort], text: str) -> str:
    """Which published port an 'address in use' error is about ('HOST:PORT')."""
    for port in ports:
        addr = f"[{port.host_ip}]" if ":" in port.host_ip else port.host_ip
        if f"{port.host_ip}:{port.host_port}" in text or f"{addr}:{port.host_port}" in text:
            return f"{addr}:{port.host_port}"
    if len(ports) == 1:
        port = ports[0]
        return f"{port.host_ip}:{port.host_port}"
    match = re.search(r"(\d+\.\d+\.\d+\.\d+|\[[0-9a-fA-F:]+\]):(\d+)", text)
    if match:
        return f"{match.group(1)}:{match.group(2)}"
    return ", ".join(f"{p.host_ip}:{p.host_port}" for p in ports) or "?"
