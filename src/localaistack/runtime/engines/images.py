"""Whether an engine has an image: asked of its image store without the CLI (a few ms),
else of the CLI.

The store is asked first, for the start path's sake (an engine CLI call costs tens of ms):
``las run`` checks the image before anything is created. A store's answer is only ever a
"yes": False means "ask the CLI". If the image vanishes before the container is created,
the engine's own "no such image" fails the run, reported as a missing image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from localaistack.runtime.engines.dockerapi import docker_socket
from localaistack.runtime.engines.unixhttp import api_request

if TYPE_CHECKING:
    from localaistack.runtime.engines.cli import EngineCLI


def _never_no(
    ask: Callable[[Mapping[str, str], str], bool],
) -> Callable[[Mapping[str, str], str], bool]:
    """``ask``, with an error read as "not listed": a store's answer is never a "no"."""

    def listed(env: Mapping[str, str], image: str) -> bool:
        try:
            return ask(env, image)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    listed.__doc__ = ask.__doc__
    return listed


@_never_no
def docker_lists(env: Mapping[str, str], image: str) -> bool:
    """True if dockerd answers 200 to ``GET /images/IMAGE/json`` on its unix socket
    (``DOCKER_HOST`` or the default socket; not when a docker context or a TCP host is
    configured, which only the CLI resolves). ``env`` is the docker CLI's environment."""
    sock = docker_socket(env)
    if sock is None or "@" in image:
        return False
    from urllib.parse import quote

    status, _ = api_request(sock, "GET", f"/images/{quote(image, safe='/:')}/json", None, 2.0)
    return status == 200


@_never_no
def podman_lists(env: Mapping[str, str], image: str) -> bool:
    """True if containers/storage's image list names ``image`` exactly.

    The list is a JSON file in the store's graph root (written atomically by rename, so it
    can be read without podman's lock), read only for the default stores: root's
    ``/var/lib/containers/storage`` or the user's ``~/.local/share/containers/storage``,
    with no storage.conf (in /etc/containers, /usr/share/containers or the user's
    ~/.config/containers) that could move them. Short names, digests and ids are never
    matched: their resolution is podman's. ``env`` is the podman CLI's environment.
    """
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


def podman_has(cli: EngineCLI, image: str) -> bool:
    """``podman image exists``: exit 0 yes, 1 no.

    Raises:
        EngineError: any other answer.
    """
    proc = cli.call(["image", "exists", image])
    if proc.returncode in (0, 1):
        return proc.returncode == 0
    raise cli.failure(proc, f"{cli.name} image exists {image}")


def docker_has(cli: EngineCLI, image: str) -> bool:
    """``docker image inspect``: an id yes, "no such image" no.

    Raises:
        EngineError: any other answer.
    """
    proc = cli.call(["image", "inspect", "--format", "{{.Id}}", image])
    if proc.returncode == 0:
        return True
    if "no such image" in proc.stderr.lower():
        return False
    raise cli.failure(proc, f"{cli.name} image exists {image}")
