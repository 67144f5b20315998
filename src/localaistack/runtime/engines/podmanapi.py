"""podman's API service, which las keeps for itself: its socket, starting and ending it, and
the create body of a container (libpod's SpecGenerator).

The service is podman's own (``podman system service``): the same code as ``podman run``
behind an HTTP API, where creating and starting a container skips the CLI's start. It
exits by itself after ``PODMAN_SERVICE_IDLE`` seconds without a request; containers never
depend on it (each has its conmon, as with ``podman run``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from localaistack.runtime.engines.host import file_stamp
from localaistack.runtime.engines.spec import ContainerRunSpec, EngineError, cap_name
from localaistack.runtime.engines.unixhttp import api_request

PODMAN_SERVICE_IDLE = 300  # seconds: podman's service exits after this long without a request
PODMAN_SERVICE_START = 10.0  # seconds to wait for a new service to answer
CREATE_PATH = "/v4.0.0/libpod/containers/create"
START_PATH = "/v4.0.0/libpod/containers/{}/start"

# What podman reads from the environment besides CONTAINERS_*: a service is kept per value.
_PODMAN_ENV = frozenset(
    {
        "HOME",
        "PATH",
        "TMPDIR",
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "REGISTRY_AUTH_FILE",
        "STORAGE_DRIVER",
        "STORAGE_OPTS",
    }
)
_PODMAN_CONF_DIRS = ("/usr/share/containers", "/etc/containers")


def service_socket(
    binary: str, global_args: Sequence[str], env: Mapping[str, str], directory: str
) -> str | None:
    """Where las's podman API service for ``binary`` listens (in the private scratch
    ``directory``), or None where none is used: with ``LAS_PODMAN_SERVICE=0``, or when
    podman talks to a remote service (``CONTAINER_HOST``, ``CONTAINER_CONNECTION``).

    One service per user, podman binary, global args, environment that podman reads,
    and version of its configuration files: a service reads them once, when it starts.
    """
    if (
        env.get("LAS_PODMAN_SERVICE") == "0"
        or env.get("CONTAINER_HOST")
        or env.get("CONTAINER_CONNECTION")
    ):
        return None
    import hashlib

    read = sorted((k, v) for k, v in env.items() if k in _PODMAN_ENV or k[:11] == "CONTAINERS_")
    user = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME", "/"), ".config")
    dirs = (*_PODMAN_CONF_DIRS, os.path.join(user, "containers"))
    names = ("containers.conf", "storage.conf", "containers.conf.d")
    stamps = [file_stamp(f) for f in (binary, *(os.path.join(d, n) for d in dirs for n in names))]
    key = repr((os.getuid(), os.path.realpath(binary), list(global_args), read, stamps))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    sock = os.path.join(directory, f"podman-{digest}.sock")
    return sock if len(sock.encode()) <= 100 else None  # a socket's path: 107 bytes at most


def service_argv(base_args: Sequence[str], sock_path: str) -> list[str]:
    """``podman [GLOBAL ARGS] system service --time=N unix://SOCK_PATH``."""
    return [*base_args, "system", "service", f"--time={PODMAN_SERVICE_IDLE}", f"unix://{sock_path}"]


def podman_service(
    sock_path: str, argv: list[str], env: Mapping[str, str], *, wait: bool = False
) -> str | None:
    """The socket of a podman API service that answers; else None, and the service starts.

    ``argv`` is ``service_argv``'s. When none answers, one is started (unless one is
    starting already) and None is returned at once: the caller uses the CLI this time, so
    a first start costs what it did without the service. With ``wait`` the call waits (at
    most ``PODMAN_SERVICE_START`` seconds) until it answers instead.

    ``sock_path`` must lie in a directory private to this user (the API is as powerful
    as podman itself). One starts at a time (a lock file next to the socket); its pid is
    written next to it (``stop_podman_service``) and its output goes to ``SOCK_PATH.log``.
    """
    if _answers(sock_path):
        return sock_path
    import fcntl
    import subprocess
    import time

    with open(sock_path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(sock_path):  # another las started it meanwhile
            return sock_path
        pid = _service_pid(sock_path)
        if pid is None:
            if os.path.lexists(sock_path):
                os.unlink(sock_path)  # a service that ended left it
            with open(sock_path + ".log", "ab") as log:
                try:
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        env=dict(env),
                        cwd=os.path.dirname(sock_path),
                        close_fds=True,
                        start_new_session=True,
                    )
                except OSError:
                    return None
            proc.returncode = 0  # it outlives this call: not Popen's to wait for
            pid = proc.pid
            with open(sock_path + ".pid", "w") as f:
                f.write(f"{pid}\n")
        deadline = time.monotonic() + (PODMAN_SERVICE_START if wait else 0)
        delay = 0.002
        while time.monotonic() < deadline and _service_pid(sock_path) == pid:
            if _answers(sock_path):
                return sock_path
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return None


def stop_podman_service(sock_path: str) -> None:
    """End the service that ``podman_service`` started on ``sock_path`` (if it still runs).

    For a start that failed in the OCI runtime: podman 4.3's service then keeps the
    failed container's published ports bound until it exits, where a ``podman run``
    process would have released them by exiting.
    """
    import signal

    pid = _service_pid(sock_path)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


def _service_pid(sock_path: str) -> int | None:
    """The pid in ``SOCK_PATH.pid`` if that process lives and serves ``sock_path``."""
    try:
        with open(sock_path + ".pid") as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rpartition(b")")[2].split()[0] == b"Z":
                return None  # it ended; its parent has not waited for it yet
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            serves = f"unix://{sock_path}".encode() in f.read().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if serves else None


def _answers(sock_path: str) -> bool:
    try:
        status, _ = api_request(sock_path, "GET", "/_ping", None, 2.0)
    except (OSError, ValueError):
        return False
    return status == 200


def podman_create_body(spec: ContainerRunSpec, argv: Sequence[str]) -> dict[str, Any]:
    """libpod's ``POST /libpod/containers/create`` body (a SpecGenerator) for ``spec``: what
    ``run_args`` (``argv``, recorded as the container's create command) asks of the CLI,
    setting for setting, with what the CLI adds that the API does not (the tmpfs mounts of
    a read-only root, the sd-notify mode, the TTY annotation); containers.conf's defaults
    (umask, stop timeout...) apply on both paths. A test compares both containers with
    ``podman inspect``. No GPUs: those go through the CLI."""
    import signal

    resources: dict[str, Any] = {"pids": {"limit": spec.pids_limit}}
    if spec.memory is not None:
        resources["memory"] = {"limit": spec.memory, "swap": spec.memory}
    if spec.cpus is not None:
        resources["cpu"] = {"quota": round(spec.cpus * 100_000), "period": 100_000}
    mounts = []
    if spec.read_only_root:
        mounts.append(
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["rw", "exec", "nosuid", "nodev", "mode=1777"],
            }
        )
        mounts += [
            {
                "destination": d,
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"],
            }
            for d in ("/run", "/var/tmp")
        ]  # what podman's --read-only adds
    mounts += [
        {
            "destination": v.target,
            "type": "bind",
            "source": v.source,
            "options": [*(["ro"] if v.read_only else []), "rprivate", "rbind"],
        }
        for v in spec.volumes
    ]
    body: dict[str, Any] = {
        "name": spec.name,
        "image": spec.image,
        "containerCreateCommand": list(argv),
        "env": dict((*spec.env, *spec.secret_env)),
        "labels": dict(spec.labels),
        "annotations": {"io.kubernetes.cri-o.TTY": "false"},
        "init": True,
        "cap_drop": ["ALL"],
        "cap_add": [cap_name(c) for c in spec.cap_add],
        "no_new_privileges": True,
        "read_only_filesystem": spec.read_only_root,
        "mounts": mounts,
        "sdnotifyMode": "container",
        "resource_limits": resources,
        "netns": {"nsmode": "bridge" if spec.ports else "none"},
        "portmappings": [
            {
                "host_ip": p.host_ip,
                "host_port": p.host_port,
                "container_port": p.container_port,
                "protocol": p.protocol,
            }
            for p in spec.ports
        ],
        "r_limits": [],
    }
    for u in spec.ulimits:
        name, _, values = u.partition("=")
        soft, _, hard = values.partition(":")
        body["r_limits"].append({"type": name, "soft": int(soft), "hard": int(hard or soft)})
    if spec.argv:
        body["command"] = list(spec.argv)
    if spec.user:
        body["user"] = spec.user
    if spec.workdir:
        body["work_dir"] = spec.workdir
    if spec.stop_signal:
        sig = spec.stop_signal.upper()
        try:
            body["stop_signal"] = (
                int(sig)
                if sig.isdigit()
                else signal.Signals[sig if sig.startswith("SIG") else "SIG" + sig].value
            )
        except KeyError:
            raise EngineError(f"invalid stop signal {spec.stop_signal!r}") from None
    if spec.log_max_size is not None:
        body["log_configuration"] = {"size": int(spec.log_max_size)}
    return body
