"""What las asks of a container engine without running its CLI: for the start path.

An engine CLI costs 35-70 ms per call here (Go start, configuration, storage lock); las
run's own start is ~100 ms. So before anything is created, ``las run`` checks the image in
the engine's own store (``image_listed``), and the container backend talks to the engine's
API on a unix socket (``api_request``): dockerd's, or the podman API service that las keeps
for itself (``podman_service``). This module imports only ``os``, ``json`` and ``stat``
(``socket`` when a request is made, more when a service is started): the CLI's start path
imports it, engines.py does not need to be.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from typing import Any


def image_listed(engine: str, env: Mapping[str, str], image: str) -> bool:
    """Whether ``engine``'s store lists ``image`` by that exact name; never a "no".

    An optimistic shortcut: False means "ask the CLI" (``Engine.image_exists`` does).

    * docker: ``GET /images/NAME/json`` on the daemon's unix socket (``DOCKER_HOST`` or
      the default socket; not when a docker context or a TCP host is configured, which
      only the CLI resolves);
    * podman: the image list that containers/storage keeps as a JSON file in its graph
      root (written atomically by rename, so it can be read without podman's lock), only
      for the default stores: root's ``/var/lib/containers/storage`` or the user's
      ``~/.local/share/containers/storage``, with no storage.conf (in /etc/containers,
      /usr/share/containers or the user's ~/.config/containers) that could move them.
      Short names, digests and ids are never matched: their resolution is podman's.

    If the image vanishes before the container is created, the engine's own "no such
    image" fails the run, reported as a missing image. ``env`` is the environment the
    engine's CLI would get.
    """
    try:
        if engine == "docker":
            return _docker_has_image(env, image)
        return _podman_store_lists(env, image)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


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


def api_request(
    sock_path: str, method: str, path: str, body: Any, timeout: float
) -> tuple[int, str]:
    """One request to an engine's API (dockerd's, podman's) on its unix socket: (status,
    response body).

    HTTP/1.0, so the engine answers with a plain body and closes the connection:
    ``http.client`` would cost more to import than the request takes.

    Raises:
        OSError: the socket cannot be reached, or no answer within ``timeout``.
        ValueError: the answer is not HTTP.
    """
    import socket

    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: {len(data)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    chunks = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(sock_path)
        sock.sendall(head.encode() + b"\r\n" + data)
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    reply = b"".join(chunks)
    status_line, _, rest = reply.partition(b"\r\n")
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
    return int(parts[1]), rest.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")


def _docker_has_image(env: Mapping[str, str], image: str) -> bool:
    """True if dockerd answers 200 to ``GET /images/IMAGE/json`` (see image_listed)."""
    sock = docker_socket(env)
    if sock is None or "@" in image:
        return False
    from urllib.parse import quote

    status, _ = api_request(sock, "GET", f"/images/{quote(image, safe='/:')}/json", None, 2.0)
    return status == 200


def _podman_store_lists(env: Mapping[str, str], image: str) -> bool:
    """True if containers/storage's image list names ``image`` exactly (see image_listed)."""
    if "@" in image or "/" not in image or env.get("CONTAINERS_STORAGE_CONF"):
        return False
    if any(os.path.exists(f"{d}/containers/storage.conf") for d in ("/etc", "/usr/share")):
        return False  # a configuration may move the stores: only podman reads it
    if os.geteuid() == 0:
        root = "/var/lib/containers/storage"
    else:
        home = env.get("HOME", "")
        if not home or os.path.exists(os.path.join(home, ".config/containers/storage.conf")):
            return False
        data = env.get("XDG_DATA_HOME") or os.path.join(home, ".local/share")
        root = os.path.join(data, "containers/storage")
    lists = [d for d in os.listdir(root) if d.endswith("-images")]
    if len(lists) != 1:  # none, or a driver changed: only podman knows which is in use
        return False
    if ":" not in image.rsplit("/", 1)[-1]:
        image += ":latest"
    with open(os.path.join(root, lists[0], "images.json"), "rb") as f:
        return any(image in (entry.get("names") or ()) for entry in json.load(f))


# --- podman's API service ------------------------------------------------------------------

PODMAN_SERVICE_IDLE = 300  # seconds: podman's service exits after this long without a request
PODMAN_SERVICE_START = 10.0  # seconds to wait for a new service to answer


def podman_service(
    sock_path: str, argv: list[str], env: Mapping[str, str], *, wait: bool = False
) -> str | None:
    """The socket of a podman API service that answers; else None, and the service starts.

    ``argv`` is ``podman [GLOBAL ARGS] system service --time=N unix://SOCK_PATH``. The
    service is podman's own (``podman system service``): the same code as ``podman run``
    behind an HTTP API, where creating and starting a container skips the CLI's start
    (~35 ms here). It exits by itself after ``PODMAN_SERVICE_IDLE`` seconds without a
    request; containers never depend on it (each has its conmon, as with ``podman run``).

    When none answers, one is started (unless one is starting already) and None is
    returned at once: the caller uses the CLI this time, so a first start costs what it
    did without the service (its own start takes ~50-100 ms here). With ``wait`` the call
    waits (at most ``PODMAN_SERVICE_START`` seconds) until it answers instead.

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
                        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=dict(env),
                        cwd=os.path.dirname(sock_path), close_fds=True, start_new_session=True,
                    )  # fmt: skip
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
