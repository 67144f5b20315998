"""An engine's ``inspect`` JSON read into a ``ContainerState``, the same for both engines
(see ``ContainerState`` for what is normalised)."""

from __future__ import annotations

from typing import Any

from localaistack.runtime.engines.spec import ContainerState, cap_name

# What docker grants without --cap-drop (moby's default set): used to compute a docker
# container's effective capabilities, which docker's inspect does not list.
DOCKER_DEFAULT_CAPS = frozenset(
    {
        "CAP_AUDIT_WRITE",
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_MKNOD",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_RAW",
        "CAP_SETFCAP",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_CHROOT",
    }
)
ZERO_TIME = "0001-01-01T00:00:00Z"  # what both engines report for "never"

_STATUS_ALIASES = {"configured": "created", "initialized": "created", "stopped": "exited"}


def container_state(d: dict[str, Any]) -> ContainerState:
    """One item of ``ENGINE container inspect``'s JSON list."""
    st = d.get("State") or {}
    hc = d.get("HostConfig") or {}
    cfg = d.get("Config") or {}
    status = str(st.get("Status") or "unknown").lower()
    status = _STATUS_ALIASES.get(status, status)
    running = bool(st.get("Running")) and status == "running"
    started, finished = _time(st.get("StartedAt")), _time(st.get("FinishedAt"))
    exit_code = st.get("ExitCode")
    if running or status == "created" or exit_code is None:
        exit_code = None  # docker reports 128 for a container that never started
    cap_drop = [cap_name(c) for c in _str_list(hc.get("CapDrop"))]
    cap_add = [cap_name(c) for c in _str_list(hc.get("CapAdd"))]
    privileged = bool(hc.get("Privileged"))
    caps: list[str] | None
    if privileged:
        caps = ["ALL"]
    elif "EffectiveCaps" in d:  # podman
        caps = sorted(cap_name(c) for c in _str_list(d.get("EffectiveCaps")))
    elif "ALL" in cap_drop:
        caps = sorted(set(cap_add) - {"ALL"})
    else:
        caps = sorted((DOCKER_DEFAULT_CAPS - set(cap_drop)) | (set(cap_add) - {"ALL"}))
    sec_opt = _str_list(hc.get("SecurityOpt"))
    nnp = any(
        o.replace(":", "=") in ("no-new-privileges", "no-new-privileges=true") for o in sec_opt
    )
    network = str(hc.get("NetworkMode") or "")
    if network == "default":
        network = "bridge"
    security: dict[str, Any] = {
        "CapDrop": cap_drop,
        "CapAdd": cap_add,
        "Capabilities": caps,
        "NoNewPrivileges": nnp,
        "SecurityOpt": sec_opt,
        "ReadonlyRootfs": bool(hc.get("ReadonlyRootfs")),
        "User": str(cfg.get("User") or ""),
        "NetworkMode": network,
        "PortBindings": _port_bindings(hc.get("PortBindings")),
        "PidsLimit": int(hc.get("PidsLimit") or 0),
        "Init": bool(hc.get("Init")),
        "Privileged": privileged,
        "Ulimits": _ulimits(hc.get("Ulimits")),
    }
    labels = cfg.get("Labels") or {}
    return ContainerState(
        id=str(d.get("Id", "")),
        name=str(d.get("Name", "")).lstrip("/"),
        image=str(cfg.get("Image") or d.get("ImageName") or d.get("Image") or ""),
        status=status,
        running=running,
        pid=int(st.get("Pid") or 0) if running else 0,
        exit_code=None if exit_code is None else int(exit_code),
        oom_killed=bool(st.get("OOMKilled")),
        started_at=started,
        finished_at=finished,
        labels={str(k): str(v) for k, v in labels.items()},
        memory_limit=int(hc.get("Memory") or 0),
        error=str(st.get("Error") or ""),
        security=security,
    )


def _str_list(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _time(value: Any) -> str:
    text = str(value or "")
    return "" if text.startswith("0001-01-01") else text


def _ulimits(value: Any) -> list[str]:
    out = []
    for item in value or []:
        name = str(item.get("Name", "")).lower().removeprefix("rlimit_")
        out.append(f"{name}={item.get('Soft')}:{item.get('Hard')}")
    return sorted(out)


def _port_bindings(value: Any) -> list[dict[str, Any]]:
    out = []
    for key, bindings in (value or {}).items():
        cport, _, proto = str(key).partition("/")
        for b in bindings or []:
            host_port = str(b.get("HostPort") or "0")
            out.append(
                {
                    "host_ip": str(b.get("HostIp") or ""),
                    "host_port": int(host_port) if host_port.isdigit() else 0,
                    "container_port": int(cport),
                    "protocol": proto or "tcp",
                }
            )
    return sorted(out, key=lambda p: (p["container_port"], p["protocol"], p["host_ip"]))
