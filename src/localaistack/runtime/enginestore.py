"""What las asks of a container engine without running its CLI: for the start path.

An engine CLI costs 35-70 ms per call here (Go start, configuration, storage lock); las
run's own start is ~100 ms. So before anything is created, ``las run`` checks the image in
the engine's own store (``image_listed``), and the docker backend talks to dockerd's API
on its unix socket (``docker_api``). This module imports only ``os``, ``json`` and ``stat``
(``socket`` when a request is made): the CLI's start path imports it, engines.py does not
need to be.
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


def docker_api(
    sock_path: str, method: str, path: str, body: Any, timeout: float
) -> tuple[int, str]:
    """One request to dockerd over its unix socket: (status, response body).

    HTTP/1.0, so the daemon answers with a plain body and closes the connection:
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

    status, _ = docker_api(sock, "GET", f"/images/{quote(image, safe='/:')}/json", None, 2.0)
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
