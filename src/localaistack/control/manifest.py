"""Module manifests, format v1: models, loading, and validation with every error listed.

A manifest is YAML. Everything the runtime needs lives under ``runtime:``; the rest
(``hardware``, ``dependencies``, ``interfaces``, ``integrity``) describes the module.

Manifests written for the original LocalAIStack are accepted: their ``runtime.modes`` name
install variants (``binary``, ``source``, ``cpu``...), which las records as
``install_variants`` and reports as not executable; such a module validates, is listed by
``las modules``, and ``las plan`` refuses it with that reason. Keys las does not know at the
top level of such a manifest are kept and reported as warnings, never silently dropped.
A mode that is neither executable nor a known install variant is an error.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from localaistack.control.boundedload import (
    MAX_FILE_BYTES,
    InputError,
    check_text,
    decode_text,
    load_yaml,
    nul_paths,
    read_limited,
)
from localaistack.control.names import check_name
from localaistack.errors import ManifestError
from localaistack.units import parse_duration, parse_size

EXECUTABLE_MODES = ("native", "container")
# Install variants used by the original LocalAIStack manifests: accepted, not executable.
LEGACY_INSTALL_VARIANTS = frozenset(
    {"binary", "source", "cpu", "gpu", "cuda", "rocm", "metal", "pip", "script", "package"}
)
PORT_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
PARAM_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
# ${name} or ${ports.name}; $$ is a literal dollar sign.
TEMPLATE_RE = re.compile(r"\$\$|\$\{([^}]*)\}")
# ${...} names every manifest may use besides its parameters and ${ports.NAME}.
BUILTIN_TEMPLATE_VALUES = frozenset({"host", "gpus.count", "gpus.memory_fraction"})
KNOWN_TOP_LEVEL = frozenset(
    {
        "name",
        "category",
        "version",
        "description",
        "license",
        "hardware",
        "dependencies",
        "runtime",
        "interfaces",
        "integrity",
        "parameters",
        "format",
    }
)


class _Strict(BaseModel):
    # allow_inf_nan=False: ``.inf``/``.nan`` in YAML are not sizes, counts or durations.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _size(v: object) -> int:
    return parse_size(v)


# Durations: (least, most) seconds. Zero is refused where it means nothing a process can
# do (probe every 0 s, wait 0 s for a stop...); the maxima keep deadlines within reach.
HOUR = 3600.0
DURATION_BOUNDS: dict[str, tuple[float, float]] = {
    "health.start_timeout": (0.001, 24 * HOUR),
    "health.interval": (0.1, HOUR),
    "health.timeout": (0.001, HOUR),
    "restart.backoff": (0.0, HOUR),
    "restart.window": (0.001, 7 * 24 * HOUR),
    "restart.reset_after": (0.001, 7 * 24 * HOUR),
    "stop.timeout": (0.001, HOUR),
}


def _human(seconds: float) -> str:
    for unit, size in (("h", HOUR), ("s", 1.0), ("ms", 0.001)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _bounded_duration(field: str) -> Any:
    least, most = DURATION_BOUNDS[field]

    def check(v: object) -> float:
        seconds = parse_duration(v)
        if seconds < least:
            raise ValueError(f"{v!r:.40} is too short: at least {_human(least)}")
        if seconds > most:
            raise ValueError(f"{v!r:.40} is too long: at most {_human(most)}")
        return seconds

    return check


def _env_name(name: str) -> str:
    if not name:
        raise ValueError("an environment variable needs a name (this one is empty)")
    if "=" in name:
        raise ValueError(
            f"environment variable name {name!r} contains '=', which ends a name: no process "
            "can be given such a variable"
        )
    return name


# Counts and ports are pydantic strict ints below: YAML's true is not 1, "8080" not 8080.
EnvName = Annotated[str, AfterValidator(_env_name)]


class CpuReq(_Strict):
    cores_min: int = Field(default=0, ge=0, strict=True)


class MemoryReq(_Strict):
    ram_min: int = 0
    ram_min_gb: float | None = Field(default=None, ge=0, strict=True)  # LocalAIStack's

    _ram = field_validator("ram_min", mode="before")(_size)

    @property
    def required(self) -> int:
        if self.ram_min_gb is not None:
            return max(self.ram_min, int(self.ram_min_gb * (1 << 30)))
        return self.ram_min


class GpuReq(_Strict):
    vram_min: int = 0
    vram_min_gb: float | None = Field(default=None, ge=0, strict=True)
    multi_gpu: bool = False
    optional: bool = False
    count_min: int = Field(default=0, ge=0, strict=True)

    _vram = field_validator("vram_min", mode="before")(_size)

    @property
    def required_vram(self) -> int:
        if self.vram_min_gb is not None:
            return max(self.vram_min, int(self.vram_min_gb * (1 << 30)))
        return self.vram_min


class Hardware(_Strict):
    cpu: CpuReq = CpuReq()
    memory: MemoryReq = MemoryReq()
    gpu: GpuReq = GpuReq()


class Integrity(_Strict):
    checksum: str | None = None
    signature: str | None = None


class OptionalArgs(_Strict):
    """Arguments included only when a parameter is set: ``{when: api_key, args: [...]}``."""

    when: str
    args: list[str] = Field(min_length=1)


CommandItem = str | OptionalArgs


class OptionalEnv(_Strict):
    """An env var set only when a parameter is: ``{when: api_key, value: "${api_key}"}``."""

    when: str
    value: str

    @field_validator("value", mode="before")
    @classmethod
    def _string(cls, v: Any) -> Any:
        return _env_string(v)


EnvValue = str | OptionalEnv


def env_strings(env: dict[str, EnvValue], where: str) -> list[tuple[str, str]]:
    """Every template string of an env mapping, with its place."""
    return [(f"{where}.{k}", v if isinstance(v, str) else v.value) for k, v in env.items()]


def command_strings(command: list[CommandItem], where: str) -> list[tuple[str, str]]:
    """Every template string of a command, with its place."""
    out: list[tuple[str, str]] = []
    for i, item in enumerate(command):
        if isinstance(item, str):
            out.append((f"{where}[{i}]", item))
        else:
            out += [(f"{where}[{i}].args[{j}]", a) for j, a in enumerate(item.args)]
    return out


class NativeSection(_Strict):
    command: list[CommandItem] = Field(min_length=1)
    env: dict[EnvName, EnvValue] = {}
    workdir: str | None = None  # relative: to the manifest's directory (planner.py)
    # Where to find the executable besides PATH (argv[0] a bare name): an environment
    # variable naming it (tried first), then a Python package function returning its path
    # ("module:function", tried after PATH).
    executable_env: str | None = None
    executable_python: str | None = None

    @field_validator("command")
    @classmethod
    def _first_is_plain(cls, v: list[CommandItem]) -> list[CommandItem]:
        if not isinstance(v[0], str):
            raise ValueError("the first element of a command is the executable: a string")
        if not v[0].strip():
            raise ValueError("the first element of a command is the executable: not empty")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, v: Any) -> Any:
        return _stringify_env(v)


class VolumeSpec(_Strict):
    source: str
    target: str
    read_only: bool = True

    @field_validator("target")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith(("/", "${")):  # (a template may stand for an absolute path)
            raise ValueError(f"{v!r}: a path inside the container is absolute (starts with /)")
        return v


class ContainerSection(_Strict):
    image: str = Field(min_length=1)
    command: list[CommandItem] = []
    env: dict[EnvName, EnvValue] = {}
    workdir: str | None = None
    volumes: list[VolumeSpec] = []
    user: str | None = None
    cap_add: list[str] = []
    writable_root: bool = False

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, v: Any) -> Any:
        return _stringify_env(v)

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"{v!r}: a container's workdir is absolute (starts with /)")
        return v

    @field_validator("cap_add")
    @classmethod
    def _caps(cls, v: list[str]) -> list[str]:
        out = []
        for cap in v:
            name = cap.upper().removeprefix("CAP_")
            if not re.fullmatch(r"[A-Z_]{2,32}", name) or name == "ALL":
                raise ValueError(
                    f"cap_add: {cap!r} is not a capability name (e.g. NET_BIND_SERVICE)"
                )
            out.append(name)
        return out

    @property
    def wants_root(self) -> bool:
        return self.user is not None and self.user.split(":")[0] in ("0", "root")


def _env_string(x: Any) -> Any:
    """A YAML scalar as an env string (true -> "true", 8080 -> "8080"); anything else as it
    is, for validation to judge (a ``{when, value}`` mapping, or an error)."""
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int | float):
        return str(x)
    return x


def _stringify_env(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _env_string(x) for k, x in v.items()}
    return v


class PortSpec(_Strict):
    name: str
    port: int = Field(ge=1, le=65535, strict=True)  # strict: `port: true` is not port 1
    protocol: Literal["tcp", "udp"] = "tcp"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not PORT_NAME_RE.match(v):
            raise ValueError(f"port name {v!r} must match [a-z][a-z0-9_-]*")
        return v


class HttpProbe(_Strict):
    port: str
    path: str = "/"


class TcpProbe(_Strict):
    port: str


class HealthSection(_Strict):
    http: HttpProbe | None = None
    tcp: TcpProbe | None = None
    command: list[str] | None = None
    start_timeout: float = 60.0
    interval: float = 10.0
    timeout: float = 2.0
    failure_threshold: int = Field(default=3, ge=1, strict=True)

    _start = field_validator("start_timeout", mode="before")(
        _bounded_duration("health.start_timeout")
    )
    _interval = field_validator("interval", mode="before")(_bounded_duration("health.interval"))
    _timeout = field_validator("timeout", mode="before")(_bounded_duration("health.timeout"))

    @model_validator(mode="after")
    def _one_probe(self) -> HealthSection:
        kinds = [k for k in ("http", "tcp", "command") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "health needs exactly one of http, tcp or command"
                + (f" (found {', '.join(kinds)})" if kinds else "")
            )
        return self


class VramFromGguf(_Strict):
    """Which parameters name the GGUF model and its settings, to estimate its VRAM."""

    model: str
    ctx_size: str | None = None
    gpu_layers: str | None = None


class ResourcesSection(_Strict):
    memory: int | None = None
    cpus: float | None = Field(default=None, gt=0, strict=True)
    gpus: int = Field(default=0, ge=0, strict=True)
    vram: int = 0
    vram_from_gguf: VramFromGguf | None = None

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: object) -> int | None:
        return None if v is None else parse_size(v)

    _vram = field_validator("vram", mode="before")(_size)


class RestartSection(_Strict):
    policy: Literal["never", "on-failure", "always", "unless-stopped"] = "never"
    max_restarts: int = Field(default=3, ge=0, strict=True)
    backoff: float = 1.0
    on_unhealthy: bool = False
    window: float = 600.0
    reset_after: float = 300.0

    _backoff = field_validator("backoff", mode="before")(_bounded_duration("restart.backoff"))
    _window = field_validator("window", mode="before")(_bounded_duration("restart.window"))
    _reset = field_validator("reset_after", mode="before")(_bounded_duration("restart.reset_after"))


SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL")


class StopSection(_Strict):
    signal: str = "SIGTERM"
    timeout: float = 10.0

    _timeout = field_validator("timeout", mode="before")(_bounded_duration("stop.timeout"))

    @field_validator("signal")
    @classmethod
    def _signal(cls, v: str) -> str:
        name = v.upper() if v.upper().startswith("SIG") else "SIG" + v.upper()
        if name not in SIGNALS:
            raise ValueError(f"unknown stop signal {v!r}; use one of {', '.join(SIGNALS)}")
        return name


class LogsSection(_Strict):
    max_size: int = 50 * 1024 * 1024
    keep: int = Field(default=5, ge=1, strict=True)

    _max = field_validator("max_size", mode="before")(_size)

    @field_validator("max_size")
    @classmethod
    def _min_size(cls, v: int) -> int:
        if v < 4096:
            raise ValueError("logs.max_size must be at least 4KiB")
        return v


class RuntimeSection(_Strict):
    modes: list[str] = Field(min_length=1)
    preferred: str | None = None
    native: NativeSection | None = None
    container: ContainerSection | None = None
    ports: list[PortSpec] = []
    health: HealthSection | None = None
    resources: ResourcesSection = ResourcesSection()
    restart: RestartSection = RestartSection()
    stop: StopSection = StopSection()
    logs: LogsSection = LogsSection()

    @field_validator("modes")
    @classmethod
    def _modes(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in EXECUTABLE_MODES and m not in LEGACY_INSTALL_VARIANTS:
                raise ValueError(
                    f"unknown mode {m!r}: las executes 'native' and 'container' "
                    f"(install variants of original LocalAIStack manifests such as "
                    f"{', '.join(sorted(LEGACY_INSTALL_VARIANTS)[:4])}... are accepted "
                    "but not executed)"
                )
        if len(set(v)) != len(v):
            raise ValueError("modes lists a mode twice")
        return v

    @model_validator(mode="after")
    def _sections(self) -> RuntimeSection:
        if self.preferred is not None and self.preferred not in self.modes:
            raise ValueError(
                f"preferred: preferred mode {self.preferred!r} is not in modes {self.modes}"
            )
        if "native" in self.modes and self.native is None:
            raise ValueError(
                "modes: mode 'native' is declared but runtime.native.command is missing"
            )
        if "container" in self.modes and self.container is None:
            raise ValueError(
                "modes: mode 'container' is declared but runtime.container.image is missing"
            )
        names = [p.name for p in self.ports]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            second = next(i for i, n in enumerate(names) if n in names[:i])
            raise ValueError(f"ports[{second}].name: duplicate port name(s): {', '.join(dupes)}")
        if self.health is not None:
            ref = (
                self.health.http.port
                if self.health.http
                else (self.health.tcp.port if self.health.tcp else None)
            )
            if ref is not None and ref not in names:
                probe = "http" if self.health.http else "tcp"
                raise ValueError(
                    f"health.{probe}.port: health probe refers to port {ref!r}, "
                    "which runtime.ports does not declare"
                    + (f" (declared: {', '.join(names)})" if names else "")
                )
        return self

    @property
    def executable_modes(self) -> tuple[str, ...]:
        return tuple(m for m in self.modes if m in EXECUTABLE_MODES)

    @property
    def install_variants(self) -> tuple[str, ...]:
        return tuple(m for m in self.modes if m in LEGACY_INSTALL_VARIANTS)


class ParameterSpec(_Strict):
    required: bool = False
    type: Literal["string", "path", "int", "float", "bool"] = "string"
    default: str | int | float | bool | None = None
    default_with_gpu: str | int | float | bool | None = None  # the default when a GPU is assigned
    description: str = ""
    secret: bool = False
    choices: list[str] | None = None


class Manifest(BaseModel):
    """A module manifest, format v1."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    category: str = "service"
    version: str = "0.0.0"
    description: str = ""
    license: str | None = None
    hardware: Hardware = Hardware()
    dependencies: Any = None
    runtime: RuntimeSection
    interfaces: Any = None
    integrity: Integrity = Integrity()
    parameters: dict[str, ParameterSpec] = {}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "module name")

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) else v

    @field_validator("parameters")
    @classmethod
    def _param_names(cls, v: dict[str, ParameterSpec]) -> dict[str, ParameterSpec]:
        for name in v:
            if not PARAM_NAME_RE.match(name) or name in ("host", "ports"):
                raise ValueError(
                    f"parameter name {name!r} must match [a-z_][a-z0-9_]* and not be "
                    "'host' or 'ports' (those are reserved)"
                )
        return v

    @model_validator(mode="after")
    def _templates(self) -> Manifest:
        port_names = {p.name for p in self.runtime.ports}
        vfg = self.runtime.resources.vram_from_gguf
        for field_name in ("model", "ctx_size", "gpu_layers"):
            ref = getattr(vfg, field_name) if vfg else None
            if ref is not None and ref not in self.parameters:
                raise ValueError(
                    f"runtime.resources.vram_from_gguf.{field_name}: {ref!r} is not a declared "
                    "parameter"
                )
        rt = self.runtime
        for section, where in (
            (rt.native, "runtime.native.command"),
            (rt.container, "runtime.container.command"),
        ):
            for i, item in enumerate(section.command if section else []):
                if isinstance(item, OptionalArgs) and item.when not in self.parameters:
                    raise ValueError(
                        f"{where}[{i}].when: {item.when!r} is not a declared parameter"
                    )
            for key, value in (section.env if section else {}).items():
                if isinstance(value, OptionalEnv) and value.when not in self.parameters:
                    env_where = where.replace(".command", ".env")
                    raise ValueError(
                        f"{env_where}.{key}.when: {value.when!r} is not a declared parameter"
                    )
        for where, text in self.template_strings():
            for ref in template_refs(text):
                if ref in BUILTIN_TEMPLATE_VALUES:
                    continue
                if ref.startswith("ports."):
                    if ref[6:] not in port_names:
                        raise ValueError(
                            f"{where}: ${{{ref}}} refers to port {ref[6:]!r}, which "
                            "runtime.ports does not declare"
                        )
                    continue
                if ref not in self.parameters:
                    raise ValueError(
                        f"{where}: ${{{ref}}} refers to parameter {ref!r}, which "
                        "parameters does not declare"
                    )
        return self

    def template_strings(self) -> list[tuple[str, str]]:
        """Every string in the manifest that may hold ``${...}`` references, with its place."""
        out: list[tuple[str, str]] = []
        rt = self.runtime
        if rt.native:
            out += command_strings(rt.native.command, "runtime.native.command")
            out += env_strings(rt.native.env, "runtime.native.env")
            if rt.native.workdir:
                out.append(("runtime.native.workdir", rt.native.workdir))
        if rt.container:
            c = rt.container
            out += command_strings(c.command, "runtime.container.command")
            out += env_strings(c.env, "runtime.container.env")
            for i, v in enumerate(c.volumes):
                out.append((f"runtime.container.volumes[{i}].source", v.source))
                out.append((f"runtime.container.volumes[{i}].target", v.target))
        if rt.health and rt.health.command:
            out += [(f"runtime.health.command[{i}]", s) for i, s in enumerate(rt.health.command)]
        return out

    @property
    def legacy_keys(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


def template_refs(text: str) -> list[str]:
    """Names referenced as ``${name}`` in a string (``$$`` is a literal ``$``)."""
    return [m.group(1).strip() for m in TEMPLATE_RE.finditer(text) if m.group(0) != "$$"]


@dataclass(frozen=True)
class LoadedManifest:
    """A manifest with where it came from."""

    manifest: Manifest
    path: Path
    source: str  # 'builtin', 'user' or 'file'
    digest: str
    warnings: tuple[str, ...] = field(default=())


# --- loading -------------------------------------------------------------------------------


def node_lines(root: yaml.Node | None) -> dict[tuple[str | int, ...], int]:
    """Map field paths to 1-based line numbers by walking the YAML node graph (bounded by
    boundedload's node count, aliases included)."""
    lines: dict[tuple[str | int, ...], int] = {}
    stack: list[tuple[yaml.Node, tuple[str | int, ...]]] = [(root, ())] if root else []
    while stack:
        node, path = stack.pop()
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
                lines[(*path, key)] = k.start_mark.line + 1
                stack.append((v, (*path, key)))
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, (*path, i)) for i, item in enumerate(node.value)]
    return lines


def line_for(lines: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> int | None:
    path = tuple(loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def fmt_loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _clean_pydantic_msg(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


# A cross-field check names the field it is about first, relative to the model it runs on:
# "ports[1].name: duplicate ...". That path is moved into the error's location.
_MSG_PATH_RE = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[A-Za-z0-9_-]+|\[\d+\])*): (.+)$", re.DOTALL)
_PATH_PART_RE = re.compile(r"\.?([A-Za-z0-9_-]+)|\[(\d+)\]")


def _split_msg_path(loc: tuple[str | int, ...], msg: str) -> tuple[tuple[str | int, ...], str]:
    m = _MSG_PATH_RE.match(msg)
    if m is None:
        return loc, msg
    parts: list[str | int] = [
        int(index) if index else name for name, index in _PATH_PART_RE.findall(m.group(1))
    ]
    return (*loc, *parts), m.group(2)


MAX_ARG_STRLEN = 32 * 4096  # Linux: the longest argv string or NAME=value, with its NUL


def _oversize_strings(m: Manifest) -> list[tuple[tuple[str | int, ...], int]]:
    """Arguments and variables that execve would refuse (E2BIG): each must fit in
    MAX_ARG_STRLEN. (Templates are substituted later; this is what the file itself says.)"""
    out: list[tuple[tuple[str | int, ...], int]] = []
    rt = m.runtime
    for name, section in (("native", rt.native), ("container", rt.container)):
        if section is None:
            continue
        for where, text in command_strings(section.command, f"runtime.{name}.command"):
            size = len(text.encode()) + 1
            if size > MAX_ARG_STRLEN:
                parts = _PATH_PART_RE.findall(where)
                out.append((tuple(int(i) if i else n for n, i in parts), size - 1))
        for key, value in section.env.items():
            text = value if isinstance(value, str) else value.value
            size = len(key.encode()) + len(text.encode()) + 2  # NAME=value and its NUL
            if size > MAX_ARG_STRLEN:
                out.append((("runtime", name, "env", key), size - 1))
    return out


MAX_PROBLEMS = 50  # listed per file; the rest are counted
FIELDS_HINT = "fix the fields named above; `las validate FILE` lists them all"
_MAX_MESSAGE = 300  # characters of one problem's message (a value may be long)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _input_error(where: str, exc: InputError) -> ManifestError:
    msg = exc.where(where)
    if exc.line is None:
        msg = f"{where}: (top level): {exc.problem}"
    return ManifestError(msg, hint=exc.hint or "fix the file", problems=[msg])


def parse_manifest(text: str | bytes, path: Path, source: str = "file") -> LoadedManifest:
    """Parse and validate manifest text (or the bytes of a manifest file).

    The bounds of ``boundedload`` hold: at most 1 MiB, UTF-8 without control characters,
    64 levels, 20000 values counting aliases.

    Raises:
        ManifestError: listing every problem as ``FILE:LINE: FIELD: message``.
    """
    where = str(path)
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    try:
        if len(raw) > MAX_FILE_BYTES:
            raise InputError(f"the manifest is larger than the limit of {MAX_FILE_BYTES} bytes")
        text = decode_text(raw) if isinstance(text, bytes) else check_text(text)
    except InputError as exc:
        raise _input_error(where, exc) from None
    if not text.strip():
        raise ManifestError(
            f"{where}: the file is empty",
            hint="a manifest needs at least name and runtime.modes",
            problems=[f"{where}: (top level): the file is empty; expected a mapping"],
        )
    try:
        data, root = load_yaml(text)
    except InputError as exc:
        raise _input_error(where, exc) from None
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "nothing"
        kind = {"list": "a list", "str": "a string", "int": "a number"}.get(kind, kind)
        msg = f"{where}:1: (top level): expected a mapping of manifest fields, found {kind}"
        raise ManifestError(
            msg, hint="a manifest is a YAML mapping (name:, runtime:, ...)", problems=[msg]
        )
    lines = node_lines(root)
    found: list[tuple[int, str]] = []  # (line, problem), in the order of the file

    def add(loc: tuple[str | int, ...], msg: str) -> None:
        lineno = line_for(lines, loc)
        at = f"{where}:{lineno}" if lineno else where
        found.append((lineno or 0, f"{at}: {_clip(fmt_loc(loc))}: {_clip(msg)}"))

    for loc in nul_paths(data):
        add(
            loc,
            "contains a NUL character (\\0), which no process can take in an argument, "
            "a variable or a path",
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            add(*_split_msg_path(loc, _clean_pydantic_msg(err["msg"])))
    else:
        for loc, size in _oversize_strings(manifest):
            add(
                loc,
                f"{size} bytes: longer than the {MAX_ARG_STRLEN - 1} bytes the kernel "
                "passes in one argument or variable",
            )
    problems = [text for _line, text in sorted(found, key=lambda f: f[0])]
    if problems:
        more = len(problems) - MAX_PROBLEMS
        shown = problems[:MAX_PROBLEMS] + ([f"{where}: and {more} more"] if more > 0 else [])
        raise ManifestError(
            f"{where}: {len(problems)} problem(s) in manifest",
            hint=FIELDS_HINT,
            problems=shown,
        )
    warnings = []
    for key in manifest.legacy_keys:
        lineno = lines.get((key,))
        at = f"{where}:{lineno}" if lineno else where
        warnings.append(f"{at}: {key}: not a manifest v1 field; kept, ignored by las")
    if not manifest.runtime.executable_modes:
        warnings.append(
            f"{where}: runtime.modes: only install variants "
            f"({', '.join(manifest.runtime.install_variants)}); las cannot execute this module"
        )
    digest = hashlib.sha256(raw).hexdigest()
    return LoadedManifest(manifest, path, source, digest, tuple(warnings))


def load_manifest_file(path: Path, source: str = "file") -> LoadedManifest:
    """Read and validate a manifest file (at most 1 MiB is read).

    Raises:
        ManifestError: when the file cannot be read or is invalid.
    """
    try:
        raw = read_limited(path)
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no such file", hint="check the path") from exc
    except IsADirectoryError as exc:
        raise ManifestError(f"{path}: is a directory, not a manifest file") from exc
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror}") from exc
    except InputError as exc:
        raise _input_error(str(path), exc) from None
    return parse_manifest(raw, path, source)
