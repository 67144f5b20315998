"""The ExecutionPlan: the only thing that crosses from the control layer to the runtime.

A plan is immutable and JSON-serialisable. It holds everything the runtime needs to start,
watch and stop a workload, fully resolved (argv, env, ports with host address, limits), and
nothing the runtime must decide. ``decisions`` records why each choice was made and which
alternatives were rejected; the runtime never reads it.

The runtime's supervisor process reads the plan's JSON form as plain data (it must start
fast and never imports pydantic); keep field names stable and bump ``schema_version`` when
a change would make an older supervisor misread a newer plan.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PLAN_SCHEMA_VERSION = 1

Mode = Literal["native", "container"]
MODES: tuple[Mode, ...] = ("native", "container")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Rejected(_Frozen):
    """An alternative that was considered and not taken, with the reason."""

    option: str
    reason: str


class Decision(_Frozen):
    """One choice the control layer made: what, which, why, and what was rejected."""

    topic: str
    choice: str
    reason: str
    rejected: tuple[Rejected, ...] = ()


class ModuleRef(_Frozen):
    """Which manifest the plan was made from."""

    name: str
    version: str
    category: str
    source: str = Field(description="'builtin', 'user' or the manifest's path")
    digest: str = Field(description="sha256 of the manifest file's bytes")


class EnvVar(_Frozen):
    name: str
    value: str
    secret: bool = False


class Parameter(_Frozen):
    """A resolved module parameter and where its value came from."""

    name: str
    value: str | None
    source: Literal["set", "default", "unset"]
    secret: bool = False


class NativeSpec(_Frozen):
    """How to run the workload as a host process."""

    argv: tuple[str, ...] = Field(min_length=1, description="argv[0] is an absolute path")
    env: tuple[EnvVar, ...] = ()
    workdir: str | None = None
    user: str | None = Field(
        default=None, description="run as this user (uid, gid below); None: as the supervisor"
    )
    uid: int | None = None
    gid: int | None = None
    sandbox: tuple[str, ...] = Field(
        default=(), description="argv prefix that runs the workload in a sandbox (bwrap ...)"
    )


class Volume(_Frozen):
    source: str
    target: str
    read_only: bool = True


class ContainerSpec(_Frozen):
    """How to run the workload in a container."""

    engine: Literal["podman", "docker"]
    image: str
    argv: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    workdir: str | None = None
    volumes: tuple[Volume, ...] = ()
    user: str | None = None
    cap_add: tuple[str, ...] = ()
    read_only_root: bool = True
    pids_limit: int = 1024
    engine_args: tuple[str, ...] = Field(
        default=(), description="global options for the engine CLI, e.g. --runtime runc"
    )


class PortBinding(_Frozen):
    """A named port: where the workload listens and where the host reaches it."""

    name: str
    container_port: int = Field(ge=1, le=65535)
    host_ip: str
    host_port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"


class HealthSpec(_Frozen):
    """One probe and its timings (seconds)."""

    kind: Literal["http", "tcp", "command"]
    port: str | None = None
    host_port: int | None = None
    path: str = "/"
    command: tuple[str, ...] = ()
    start_timeout: float = 60.0
    interval: float = 10.0
    timeout: float = 2.0
    failure_threshold: int = 3


class GpuAssignment(_Frozen):
    index: int
    uuid: str
    vendor: Literal["nvidia", "amd"]
    vram: int = 0


class Resources(_Frozen):
    memory: int | None = Field(default=None, description="bytes; None: no limit")
    cpus: float | None = None
    gpus: int = 0
    vram: int = 0


class RestartSpec(_Frozen):
    """When the supervisor starts a failed workload again (never, unless asked for).

    At most ``max_restarts`` within ``window`` seconds, waiting ``backoff`` * 2^n (with
    jitter) before each; ``reset_after`` seconds of stable health give a fresh budget.
    """

    policy: Literal["never", "on-failure"] = "never"
    max_restarts: int = 3
    backoff: float = 1.0
    on_unhealthy: bool = False
    window: float = 600.0
    reset_after: float = 300.0


class StopSpec(_Frozen):
    signal: str = "SIGTERM"
    timeout: float = 10.0


class LogSpec(_Frozen):
    max_size: int = 50 * 1024 * 1024
    keep: int = 5


class ExecutionPlan(_Frozen):
    """Everything the runtime needs to execute one module, and why it looks as it does."""

    schema_version: int = PLAN_SCHEMA_VERSION
    module: ModuleRef
    mode: Mode
    native: NativeSpec | None = None
    container: ContainerSpec | None = None
    parameters: tuple[Parameter, ...] = ()
    ports: tuple[PortBinding, ...] = ()
    health: HealthSpec | None = None
    resources: Resources = Resources()
    gpus: tuple[GpuAssignment, ...] = ()
    restart: RestartSpec = RestartSpec()
    stop: StopSpec = StopSpec()
    logs: LogSpec = LogSpec()
    decisions: tuple[Decision, ...] = ()

    @property
    def plan_id(self) -> str:
        """A content hash: two identical plans have the same id."""
        digest = hashlib.sha256(self.model_dump_json().encode()).hexdigest()
        return digest[:16]

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> ExecutionPlan:
        return cls.model_validate_json(text)
