"""The backends, by name (the ``runs.backend`` column): native, podman, docker.

Each module is imported on first use: a las command that needs one backend's capabilities
does not pay for the others. A new backend is one module here and one entry below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from localaistack.errors import NotSupported
from localaistack.runtime.backend import Backend, RunContext

if TYPE_CHECKING:
    from localaistack.plan import ExecutionPlan

# name -> (module under runtime/backends/, class)
REGISTRY: dict[str, tuple[str, str]] = {
    "native": ("native", "NativeBackend"),
    "podman": ("podman", "PodmanBackend"),
    "docker": ("docker", "DockerBackend"),
}


def get(name: str) -> type[Backend]:
    """The backend class registered as ``name``; NotSupported for an unknown one."""
    try:
        module, cls = REGISTRY[name]
    except KeyError:
        raise NotSupported(f"unknown backend {name!r}") from None
    found: type[Backend] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return found


def name_for(plan: dict[str, Any]) -> str:
    """The backend that executes ``plan`` (its mode; for a container, its engine)."""
    return "native" if plan["mode"] == "native" else str(plan["container"]["engine"])


def name_of(plan: ExecutionPlan) -> str:
    """``name_for`` of a typed plan."""
    return "native" if plan.container is None else plan.container.engine


def create(name: str, ctx: RunContext) -> Backend:
    return get(name)(ctx)
