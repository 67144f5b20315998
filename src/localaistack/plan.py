"""The ExecutionPlan: the only thing that crosses from the control layer to the runtime.

A plan is immutable and JSON-serialisable. It holds everything the runtime needs to start,
watch and stop a workload, fully resolved (argv, env, ports with host address, limits), and
nothing the runtime must decide. ``decisions`` records why each choice was made and which
alternatives were rejected; the runtime never reads it.

The classes are frozen records checked on construction (types, ranges; lists become tuples,
dicts become the nested classes), so that building or reading a plan costs no pydantic
import: ``las run`` is on the start path, where every millisecond counts. The supervisor
reads the plan's JSON form as plain data; keep field names stable and bump
``schema_version`` when a change would make an older supervisor misread a newer plan.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar, dataclass_transform

from localaistack.masking import masked

PLAN_SCHEMA_VERSION = 1

Mode = Literal["native", "container"]
MODES: tuple[Mode, ...] = ("native", "container")
ParamSource = Literal["set", "default", "unset"]
EngineName = Literal["podman", "docker"]
ProbeKind = Literal["http", "tcp", "command"]


_T = TypeVar("_T", bound="_Frozen")
_HINTS: dict[type, dict[str, Any]] = {}  # per record class


def _hints(cls: type[_Frozen]) -> dict[str, Any]:
    """The types of a record's fields, its annotation strings evaluated in its module.

    ``typing.get_type_hints`` does the same for any class, at ~0.4 ms a class: ~3 ms on
    each ``las run``, which reads a plan back. Records here declare their fields directly
    (``_Frozen.__init_subclass__``), so their own annotations are all there is to read.
    """
    hints = _HINTS.get(cls)
    if hints is None:
        names = vars(sys.modules[cls.__module__])
        own: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            own.update(klass.__dict__.get("__annotations__", {}))  # noqa: RUF063
        hints = _HINTS[cls] = {
            f: eval(own[f], names) if isinstance(own[f], str) else own[f] for f in cls._fields
        }
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


class _Factory:
    """A default made per instance (``field(default_factory=...)``)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory


def field(*, default_factory: Callable[[], Any]) -> Any:
    return _Factory(default_factory)


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
class _Frozen:
    """A frozen record, checked on construction; unknown keys are refused.

    What ``@dataclass(frozen=True, kw_only=True)`` gives, without its cost: dataclasses
    generates each method with ``exec``, which made importing this module (on every
    ``las run``) some 20 ms slower on a small machine.
    """

    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}
    # field -> (low, high): a number's value, a tuple's length
    _ranges: ClassVar[dict[str, tuple[int, int]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names, defaults = [], {}
        # The class's own annotations (strings: `from __future__ import annotations`), read
        # without `inspect`, which costs the start path ~9 ms to import.
        for name, hint in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
            if name.startswith("_") or str(hint).startswith("ClassVar"):
                continue
            names.append(name)
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
                delattr(cls, name)  # the instance's value, never the class's
        cls._fields, cls._defaults = tuple(names), defaults

    def __init__(self, **values: Any) -> None:
        cls = type(self)
        unknown = set(values) - set(cls._fields)
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown field(s) {', '.join(sorted(unknown))}")
        hints = _hints(cls)
        for f in cls._fields:
            if f in values:
                value = values[f]
            elif f in cls._defaults:
                value = cls._defaults[f]
                if isinstance(value, _Factory):
                    value = value.factory()
            else:
                raise TypeError(f"{cls.__name__}: missing field {f!r}")
            value = _coerce(value, hints[f], f"{cls.__name__}.{f}")
            if f in cls._ranges and value is not None:
                low, high = cls._ranges[f]
                if not low <= (len(value) if isinstance(value, tuple) else value) <= high:
                    raise ValueError(f"{cls.__name__}.{f}: {value!r} is out of range {low}..{high}")
            object.__setattr__(self, f, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Frozen)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"

    def replace(self: _T, **changes: Any) -> _T:
        """A copy with ``changes`` (checked like a new record)."""
        return type(self)(**{**{f: getattr(self, f) for f in self._fields}, **changes})

    @classmethod
    def from_dict(cls: type[_T], data: dict[str, Any], where: str | None = None) -> _T:
        unknown = sorted(set(data) - set(cls._fields))
        if unknown:
            raise ValueError(f"{where or cls.__name__}: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists), the form the JSON has."""
        return {f: _plain(getattr(self, f)) for f in self._fields}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)


def _plain(value: Any) -> Any:
    if isinstance(value, _Frozen):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


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
    source: str  # 'builtin', 'user' or the manifest's path
    digest: str  # sha256 of the manifest file's bytes


class EnvVar(_Frozen):
    name: str
    value: str
    secret: bool = False


class Parameter(_Frozen):
    """A resolved module parameter and where its value came from."""

    name: str
    value: str | None
    source: ParamSource
    secret: bool = False


class PinnedFile(_Frozen):
    """A file a trust pin covers, with the sha256 it was checked to have at planning."""

    path: str  # absolute
    sha256: str


class NativeSpec(_Frozen):
    """How to run the workload as a host process."""

    _ranges: ClassVar[dict[str, tuple[int, int]]] = {"argv": (1, 1 << 30)}

    argv: tuple[str, ...]  # argv[0] is an absolute path
    env: tuple[EnvVar, ...] = ()
    workdir: str | None = None
    user: str | None = None  # run as this user (uid, gid below); None: as the supervisor
    uid: int | None = None
    gid: int | None = None
    sandbox: tuple[str, ...] = ()  # argv prefix that runs the workload in a sandbox (bwrap ...)
    # A trust pin's files (the executable first): the runtime hashes them again right
    # before exec and refuses to start on any difference (docs/policy.md).
    pinned: tuple[PinnedFile, ...] = ()


class Volume(_Frozen):
    source: str
    target: str
    read_only: bool = True


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


class GpuAssignment(_Frozen):
    index: int
    uuid: str
    vendor: Literal["nvidia", "amd"]
    vram: int = 0


class Resources(_Frozen):
    memory: int | None = None  # bytes; None: no limit
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


class ShownText(_Frozen):
    """A string of the plan into which the planner substituted a secret parameter, as
    shown: the same template rendered with the secret as ``***`` (masking.py)."""

    path: str  # dotted, list indexes as numbers: "native.argv.3", "health.command.1"
    text: str


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
    resources: Resources = field(default_factory=Resources)
    gpus: tuple[GpuAssignment, ...] = ()
    restart: RestartSpec = field(default_factory=RestartSpec)
    stop: StopSpec = field(default_factory=StopSpec)
    logs: LogSpec = field(default_factory=LogSpec)
    decisions: tuple[Decision, ...] = ()
    # Where secret parameters were substituted, as shown. The stored plan is the shown
    # form, this list applied (store/secrets.py); the plan id does not hash it.
    shown: tuple[ShownText, ...] = ()

    @property
    def plan_id(self) -> str:
        """A hash of the plan as shown (masking.masked: each secret masked where it sits,
        the ``shown`` list left out): two plans that differ only in a secret have the same
        id, the id tells nothing about a secret, and a stored (masked) plan keeps the id
        `las plan` showed."""
        text = json.dumps(masked(self.to_dict()), separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

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
