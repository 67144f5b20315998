"""The Docker backend: a container backend (container.py); dockerd's defaults apply."""

from __future__ import annotations

from localaistack.runtime.backends.container import ContainerBackend


class DockerBackend(ContainerBackend):
    name = "docker"
