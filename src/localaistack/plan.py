"""The ExecutionPlan: the only thing that crosses from the control layer to the runtime.

A plan is immutable and JSON-serialisable. It holds everything the runtime needs to start,
watch and stop a workload, fully resolved (argv, env, ports with host address, limits), and
nothing the runtime must decide. ``decisions`` records why each choice was made and which
alternatives were rejected; the runtime never reads it.

The classes are frozen standard-library dataclasses, checked on construction (types,
ranges; lists become tuples, dicts become the nested classes), so that building or reading a
plan costs no pydantic import: ``las run`` and the supervisor are on the start path, where
every millisecond counts. The supervisor reads the plan's JSON form as plain data; keep
field names stable and bump ``schema_version`` when a change would make an older
supervisor misread a newer plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

PLAN_SCHEMA_VERSION = 1

Mode = Literal["native", "container"]
MODES: tuple[Mode, ...] = ("native", "container")
ParamSource = Literal["set", "default", "unset"]
EngineName = Literal["podman", "docker"]
ProbeKind = Literal["http", "tcp", "command"]


_T = TypeVar("_T", bound="_Frozen")
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        module = sys.modules[cls.__module__]
        hints = _HINTS[cls] = typing.get_type_hints(cls, vars(module))
    return hints


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` (and converted where JSON loses it)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise TypeError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits no type")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"{where}: {value!r} is not one of {typing.get_args(hint)}")
        return value
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise TypeError(f"{where}: expected a list, got {type(value).__name__}")
        (item, _dots) = typing.get_args(hint)
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(hint, type) and issubclass(hint, _Frozen):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return hint.from_dict(value, where)
        raise TypeError(f"{where}: expected an object, got {type(value).__name__}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is bool or hint is str:
        if isinstance(value, hint):
            return value
    else:  # pragma: no cover - a field type this module does not use
        raise TypeError(f"{where}: unsupported type {hint!r}")
    raise TypeError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")


@dataclass(frozen=True, kw_only=True)
class _Frozen:
    """Frozen, checked on construction; unknown keys are refused when read from data."""

    # field -> (low, high): a number's value, a tuple's length
    _ranges: ClassVar[dict[str, tuple[int, int]]] = {}

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f, hint in _hints(type(self)).items():
            if f.startswith("_"):
                continue
            value = _coerce(getattr(self, f), hint, f"{name}.{f}")
            if f in self._ranges and value is not None:
                low, high = self._ranges[f]
                if not low <= (len(value) if isinstance(value, tuple) else value) <= high:
                    raise ValueError(f"{name}.{f}: {value!r} is out of range {low}..{high}")
            object.__setattr__(self, f, value)

    @classmethod
    def from_dict(cls: type[_T], data: dict[str, Any], where: str | None = None) -> _T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{where or cls.__name__}: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists), the form the JSON has."""
        return json.loads(self.to_json())  # type: ignore[no-any-return]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, kw_only=True)
class Rejected(_Frozen):
    """An alternative that was considered and not taken, with the reason."""

    option: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class Decision(_Frozen):
    """One choice the control layer made: what, which, why, and what was rejected."""

    topic: str
    choice: str
    reason: str
    rejected: tuple[Rejected, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ModuleRef(_Frozen):
    """Which manifest the plan was made from."""

    name: str
    version: str
    category: str
    source: str  # 'builtin', 'user' or the manifest's path
    digest: str  # sha256 of the manifest file's bytes


@dataclass(frozen=True, kw_only=True)
class EnvVar(_Frozen):
    name: str
    value: str
    secret: bool = False


@dataclass(frozen=True, kw_only=True)
class Parameter(_Frozen):
    """A resolved module parameter and where its value came from."""

    name: str
    value: str | None
    source: ParamSource
    secret: bool = False


@dataclass(frozen=True, kw_only=True)
class NativeSpec(_Frozen):
    """How to run the workload as a host process."""

    _ranges: ClassVar[dict[str, tuple[int, int]]] = {"argv": (1, 1 << 30)}

    argv: tuple[str, ...]  # argv[0] is an absolute path
    env: tuple[EnvVar, ...] = ()
    workdir: str | None = None


@dataclass(frozen=True, kw_only=True)
class Volume(_Frozen):
    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True, kw_only=True)
class ContainerSpec(_Frozen):
    """How to run the workload in a container."""

    engine: EngineName
    image: str
    argv: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    workdir: str | None = None
    volumes: tuple[Volume, ...] = ()
    user: str | None = None
    cap_add: tuple[str, ...] = ()
    read_only_root: bool = True
    pids_limit: int = 1024
    engine_args: tuple[str, ...] = ()  # global options for the engine CLI (--runtime runc)


@dataclass(frozen=True, kw_only=True)
class PortBinding(_Frozen):
    """A named port: where the workload listens and where the host reaches it."""

    _ranges: ClassVar[dict[str, tuple[int, int]]] = {
        "container_port": (1, 65535),
        "host_port": (1, 65535),
    }

    name: str
    container_port: int
    host_ip: str
    host_port: int
    protocol: Literal["tcp", "udp"] = "tcp"


@dataclass(frozen=True, kw_only=True)
class HealthSpec(_Frozen):
    """One probe and its timings (seconds)."""

    kind: ProbeKind
    port: str | None = None
    host_port: int | None = None
    path: str = "/"
    command: tuple[str, ...] = ()
    start_timeout: float = 60.0
    interval: float = 10.0
    timeout: float = 2.0
    failure_threshold: int = 3


@dataclass(frozen=True, kw_only=True)
class GpuAssignment(_Frozen):
    index: int
    uuid: str
    vendor: Literal["nvidia", "amd"]
    vram: int = 0


@dataclass(frozen=True, kw_only=True)
class Resources(_Frozen):
    memory: int | None = None  # bytes; None: no limit
    cpus: float | None = None
    gpus: int = 0
    vram: int = 0


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
class StopSpec(_Frozen):
    signal: str = "SIGTERM"
    timeout: float = 10.0


@dataclass(frozen=True, kw_only=True)
class LogSpec(_Frozen):
    max_size: int = 50 * 1024 * 1024
    keep: int = 5


@dataclass(frozen=True, kw_only=True)
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
    resources: Resources = field(default_factory=Resources)
    gpus: tuple[GpuAssignment, ...] = ()
    restart: RestartSpec = field(default_factory=RestartSpec)
    stop: StopSpec = field(default_factory=StopSpec)
    logs: LogSpec = field(default_factory=LogSpec)
    decisions: tuple[Decision, ...] = ()

    @property
    def plan_id(self) -> str:
        """A content hash: two identical plans have the same id."""
        digest = hashlib.sha256(self.to_json().encode()).hexdigest()
        return digest[:16]

    @classmethod
    def from_json(cls, text: str | bytes) -> ExecutionPlan:
        """Read a plan's JSON form back (as written by ``to_json``).

        Raises:
            ValueError: the text is not such a plan (TypeError is reported as ValueError).
        """
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("a plan is a JSON object")
            return cls.from_dict(data)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc
