"""The ExecutionPlan: the only thing that crosses from the control layer to the runtime.

A plan is immutable and JSON-serialisable. It holds everything the runtime needs to start,
watch and stop a workload, fully resolved (argv, env, ports with host address, limits), and
nothing the runtime must decide. ``decisions`` records why each choice was made and which
alternatives were rejected; the runtime never reads it.

The classes are frozen pydantic models: checked on construction (types, ranges; lists
become tuples, dicts the nested models), unknown keys refused. A plan is read back with
``ExecutionPlan.model_validate_json`` (or ``model_validate`` from its JSON data) and written
with ``model_dump_json()`` (``model_dump(mode="json")`` as data): every field, ``None``
included, in declaration order. The supervisor reads that JSON as plain data; keep field
names stable and bump ``schema_version`` when a change would make an older supervisor
misread a newer plan (tests/data/plans holds plans as earlier versions wrote them).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, Strict

from localaistack.masking import masked

PLAN_SCHEMA_VERSION = 1

Mode = Literal["native", "container"]
MODES: tuple[Mode, ...] = ("native", "container")
ParamSource = Literal["set", "default", "unset"]
EngineName = Literal["podman", "docker"]
ProbeKind = Literal["http", "tcp", "command"]

_T = TypeVar("_T")
# A list in JSON, a tuple in the model (so that a plan is hashable); its items strict.
Seq = Annotated[tuple[_T, ...], Strict(False)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Record(BaseModel):
    """A frozen record, checked on construction; unknown keys are refused.

    Strict: a value of the wrong JSON type (``"1"`` for 1, ``true`` for 1) is refused, not
    converted; an int is a fine float.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Rejected(_Record):
    """An alternative that was considered and not taken, with the reason."""

    option: str
    reason: str


class Decision(_Record):
    """One choice the control layer made: what, which, why, and what was rejected."""

    topic: str
    choice: str
    reason: str
    rejected: Seq[Rejected] = ()


class ModuleRef(_Record):
    """Which manifest the plan was made from."""

    name: str
    version: str
    category: str
    source: str  # 'builtin', 'user' or the manifest's path
    digest: str  # sha256 of the manifest file's bytes


class EnvVar(_Record):
    name: str
    value: str
    secret: bool = False


class Parameter(_Record):
    """A resolved module parameter and where its value came from."""

    name: str
    value: str | None
    source: ParamSource
    secret: bool = False


class PinnedFile(_Record):
    """A file a trust pin covers, with the sha256 it was checked to have at planning."""

    path: str  # absolute
    sha256: str


class NativeSpec(_Record):
    """How to run the workload as a host process."""

    argv: Annotated[Seq[str], Field(min_length=1)]  # argv[0] is an absolute path
    env: Seq[EnvVar] = ()
    workdir: str | None = None
    user: str | None = None  # run as this user (uid, gid below); None: as the supervisor
    uid: int | None = None
    gid: int | None = None
    sandbox: Seq[str] = ()  # argv prefix that runs the workload in a sandbox (bwrap ...)
    # A trust pin's files (the executable first): the runtime hashes them again right
    # before exec and refuses to start on any difference (docs/policy.md).
    pinned: Seq[PinnedFile] = ()


class Volume(_Record):
    source: str
    target: str
    read_only: bool = True


class ContainerSpec(_Record):
    """How to run the workload in a container."""

    engine: EngineName
    image: str
    argv: Seq[str] = ()
    env: Seq[EnvVar] = ()
    workdir: str | None = None
    volumes: Seq[Volume] = ()
    user: str | None = None
    cap_add: Seq[str] = ()
    read_only_root: bool = True
    pids_limit: int = 1024
    engine_args: Seq[str] = ()  # global options for the engine CLI (--runtime runc)


class PortBinding(_Record):
    """A named port: where the workload listens and where the host reaches it."""

    name: str
    container_port: Port
    host_ip: str
    host_port: Port
    protocol: Literal["tcp", "udp"] = "tcp"


class HealthSpec(_Record):
    """One probe and its timings (seconds)."""

    kind: ProbeKind
    port: str | None = None
    host_port: int | None = None
    path: str = "/"
    command: Seq[str] = ()
    start_timeout: float = 60.0
    interval: float = 10.0
    timeout: float = 2.0
    failure_threshold: int = 3


class GpuAssignment(_Record):
    index: int
    uuid: str
    vendor: Literal["nvidia", "amd"]
    vram: int = 0


class Resources(_Record):
    memory: int | None = None  # bytes; None: no limit
    cpus: float | None = None
    gpus: int = 0
    vram: int = 0


RestartPolicyName = Literal["never", "on-failure", "always", "unless-stopped"]
RESTART_POLICIES: tuple[str, ...] = get_args(RestartPolicyName)


class RestartSpec(_Record):
    """When the supervisor starts a workload again (never, unless asked for).

    ``on-failure``: after a failure; ``always``: also after a clean exit, and when las serve
    starts; ``unless-stopped``: as always, but not at las serve's start after a `las stop`.
    An explicit `las stop` ends every policy's restarts.

    At most ``max_restarts`` within ``window`` seconds, waiting ``backoff`` * 2^n (with
    jitter) before each; ``reset_after`` seconds of stable health give a fresh budget.
    """

    policy: RestartPolicyName = "never"
    max_restarts: int = 3
    backoff: float = 1.0
    on_unhealthy: bool = False
    window: float = 600.0
    reset_after: float = 300.0


class StopSpec(_Record):
    signal: str = "SIGTERM"
    timeout: float = 10.0


class ShownText(_Record):
    """A string of the plan into which the planner substituted a secret parameter, as
    shown: the same template rendered with the secret as ``***`` (masking.py)."""

    path: str  # dotted, list indexes as numbers: "native.argv.3", "health.command.1"
    text: str


class LogSpec(_Record):
    max_size: int = 50 * 1024 * 1024
    keep: int = 5


class ExecutionPlan(_Record):
    """Everything the runtime needs to execute one module, and why it looks as it does."""

    schema_version: int = PLAN_SCHEMA_VERSION
    module: ModuleRef
    mode: Mode
    native: NativeSpec | None = None
    container: ContainerSpec | None = None
    parameters: Seq[Parameter] = ()
    ports: Seq[PortBinding] = ()
    health: HealthSpec | None = None
    resources: Resources = Field(default_factory=Resources)
    gpus: Seq[GpuAssignment] = ()
    restart: RestartSpec = Field(default_factory=RestartSpec)
    stop: StopSpec = Field(default_factory=StopSpec)
    logs: LogSpec = Field(default_factory=LogSpec)
    decisions: Seq[Decision] = ()
    # Where secret parameters were substituted, as shown. The stored plan is the shown
    # form, this list applied (store/secrets.py); the plan id does not hash it.
    shown: Seq[ShownText] = ()

    @property
    def plan_id(self) -> str:
        """A hash of the plan as shown (masking.masked: each secret masked where it sits,
        the ``shown`` list left out): two plans that differ only in a secret have the same
        id, the id tells nothing about a secret, and a stored (masked) plan keeps the id
        `las plan` showed."""
        shown = masked(self.model_dump(mode="json"))
        text = json.dumps(shown, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
