"""The container engines (podman, docker) as las uses them: small transports, one job each.

``Engine(name)`` is the engine (``engine.Podman``, ``engine.Docker``): what the container
backends call, and the only place where the two engines differ. Below it:

* ``spec``: what las asks and gets back (``ContainerRunSpec``, ``ContainerState``,
  ``EngineError``) and the checks of a spec's parts;
* ``cli``: running the engine's CLI (argv lists, timeouts, a private cwd, failures) and
  its ``run`` argv;
* ``unixhttp``: one HTTP request to an engine's API on a unix socket;
* ``dockerapi``: dockerd's socket and its create body;
* ``podmanapi``: the podman API service that las keeps (its socket, start, end) and
  libpod's create body;
* ``images``: whether an engine has an image, from its store without the CLI, else the CLI;
* ``state``: an engine's ``inspect`` read into a ``ContainerState``;
* ``failures``: reading an engine's errors; ``oom``: out-of-memory kills the engines do
  not always report; ``host``: the scratch directory, cgroup layout and ulimits.

Standard library only, imported lazily where an import costs (the supervisor imports this
package). Host quirks the caller decides about (see ``suggested_global_args`` and
``suggested_ulimits``): podman's default OCI runtime crun refuses hybrid cgroup layouts
(use ``--runtime runc``), and podman's default RLIMIT_NOFILE (1048576) fails where the
caller's hard limit is lower, so explicit ulimits are passed with every run.
"""

from localaistack.runtime.engines.cli import DEFAULT_TIMEOUT
from localaistack.runtime.engines.dockerapi import docker_create_body, docker_socket
from localaistack.runtime.engines.engine import (
    RUN_TIMEOUT,
    STOP_MARGIN,
    Docker,
    Engine,
    Podman,
    image_listed,
    suggested_global_args,
)
from localaistack.runtime.engines.host import cgroup_layout, scratch_dir, suggested_ulimits
from localaistack.runtime.engines.oom import OOM_SETTLE
from localaistack.runtime.engines.podmanapi import (
    PODMAN_SERVICE_IDLE,
    PODMAN_SERVICE_START,
    podman_create_body,
    podman_service,
    stop_podman_service,
)
from localaistack.runtime.engines.spec import (
    ENGINES,
    ContainerRunSpec,
    ContainerState,
    EngineError,
    PublishedPort,
    VolumeMount,
    format_bytes,
)
from localaistack.runtime.engines.state import DOCKER_DEFAULT_CAPS, ZERO_TIME
from localaistack.runtime.engines.unixhttp import api_request

__all__ = [
    "DEFAULT_TIMEOUT",
    "DOCKER_DEFAULT_CAPS",
    "ENGINES",
    "OOM_SETTLE",
    "PODMAN_SERVICE_IDLE",
    "PODMAN_SERVICE_START",
    "RUN_TIMEOUT",
    "STOP_MARGIN",
    "ZERO_TIME",
    "ContainerRunSpec",
    "ContainerState",
    "Docker",
    "Engine",
    "EngineError",
    "Podman",
    "PublishedPort",
    "VolumeMount",
    "api_request",
    "cgroup_layout",
    "docker_create_body",
    "docker_socket",
    "format_bytes",
    "image_listed",
    "podman_create_body",
    "podman_service",
    "scratch_dir",
    "stop_podman_service",
    "suggested_global_args",
    "suggested_ulimits",
]
