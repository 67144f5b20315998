"""The Podman backend: a container backend (container.py) with the ulimits Podman needs."""

from __future__ import annotations

from typing import Any

from localaistack.runtime.backends.container import ContainerBackend


class PodmanBackend(ContainerBackend):
    name = "podman"

    def extra_run_options(self) -> dict[str, Any]:
        from localaistack.runtime import engines

        # Podman applies no default ulimits of its own (docker's daemon does).
        return {"ulimits": engines.suggested_ulimits()}
