"""dockerd's HTTP API on its unix socket: where it is, and the create body of a container.

``Engine.run`` on docker creates and starts the container here when las can find the
daemon's socket without the CLI (``docker_socket``), with the settings that the CLI's
``run`` would apply (``docker_create_body``); a test compares both with ``inspect``.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from typing import Any

from localaistack.runtime.engines.spec import ContainerRunSpec, cap_name

START_PATH = "/containers/{}/start"


def create_path(name: str) -> str:
    """``POST`` here to create a container named ``name``."""
    from urllib.parse import quote  # imported here: only docker's API needs it

    return f"/containers/create?name={quote(name)}"


def docker_socket(env: Mapping[str, str]) -> str | None:
    """The unix socket the docker CLI would talk to, if las can tell without the CLI.

    ``DOCKER_HOST=unix://...`` or the default socket; None when a docker context (the
    environment's or the CLI config's current one) or a non-unix host is configured (only
    the CLI resolves those) or when the socket does not exist (the CLI then reports why).
    """
    if env.get("DOCKER_CONTEXT"):
        return None
    config = os.path.join(
        env.get("DOCKER_CONFIG") or os.path.join(env.get("HOME", "/"), ".docker"), "config.json"
    )
    try:
        with open(config, encoding="utf-8") as f:
            if json.load(f).get("currentContext", "default") != "default":
                return None
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError):
        return None
    host = env.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        return None
    path = host[len("unix://") :]
    try:
        return path if stat.S_ISSOCK(os.stat(path).st_mode) else None
    except OSError:
        return None


def docker_create_body(spec: ContainerRunSpec) -> dict[str, Any]:
    """dockerd's ``POST /containers/create`` body for ``spec``: what ``run_args`` asks of
    the CLI, flag for flag (call ``run_args`` first: it checks the spec)."""
    host: dict[str, Any] = {
        "Init": True,
        "CapDrop": ["ALL"],
        "CapAdd": [cap_name(c) for c in spec.cap_add] or None,
        "SecurityOpt": ["no-new-privileges"],
        "PidsLimit": spec.pids_limit,
        "Mounts": [
            {"Type": "bind", "Source": v.source, "Target": v.target, "ReadOnly": v.read_only}
            for v in spec.volumes
        ],
        "NetworkMode": "default" if spec.ports else "none",
        "RestartPolicy": {"Name": "no"},  # las restarts, never the engine
    }
    if spec.read_only_root:
        host["ReadonlyRootfs"] = True
        host["Tmpfs"] = {"/tmp": "rw,exec,nosuid,nodev,mode=1777"}
    if spec.ports:
        bindings: dict[str, list[dict[str, str]]] = {}
        for p in spec.ports:
            bindings.setdefault(f"{p.container_port}/{p.protocol}", []).append(
                {"HostIp": p.host_ip, "HostPort": str(p.host_port)}
            )
        host["PortBindings"] = bindings
    if spec.memory is not None:
        host["Memory"] = host["MemorySwap"] = spec.memory
    if spec.cpus is not None:
        host["NanoCpus"] = round(spec.cpus * 1e9)
    ulimits = []
    for u in spec.ulimits:
        name, _, values = u.partition("=")
        soft, _, hard = values.partition(":")
        ulimits.append({"Name": name, "Soft": int(soft), "Hard": int(hard or soft)})
    if ulimits:
        host["Ulimits"] = ulimits
    if spec.log_max_size is not None:
        host["LogConfig"] = {"Type": "", "Config": {"max-size": str(int(spec.log_max_size))}}
    if spec.gpus:
        host["DeviceRequests"] = [
            {
                "Driver": "",
                "Count": 0,
                "DeviceIDs": [u for _, u in spec.gpus],
                "Capabilities": [["gpu"]],
                "Options": {},
            }
        ]
    body: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in (*spec.env, *spec.secret_env)],
        "Labels": dict(spec.labels),
        "HostConfig": host,
    }
    if spec.argv:
        body["Cmd"] = list(spec.argv)
    if spec.user:
        body["User"] = spec.user
    if spec.workdir:
        body["WorkingDir"] = spec.workdir
    if spec.stop_signal:
        body["StopSignal"] = spec.stop_signal
    if spec.ports:
        body["ExposedPorts"] = {f"{p.container_port}/{p.protocol}": {} for p in spec.ports}
    return body
