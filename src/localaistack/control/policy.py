"""Policy: what las may do on this machine.

Two formats are read:

* las's own (the built-in default is shown below);
* LocalAIStack's tiered format: a ``policies:`` list of tiers, each with ``conditions`` on
  the hardware and ``allow``/``deny`` lists. The first tier whose conditions all hold for
  the hardware profile applies; its ``allow.runtimes`` narrows the allowed modes and its
  ``deny`` list refuses modules by name. A tiered file may also carry any of las's own keys
  at the top level (``trusted_native``, ``network``...), which apply in every tier.

::

    allowed_modes: [container, native]
    default_mode: container
    container_engine: auto            # auto | podman | docker
    trusted_native: [llama.cpp, {module: vllm, sha256: "...", files: {...}, argv_sha256: "..."}]
    network: {host: 127.0.0.1, expose: {open-webui: 0.0.0.0}, api_expose: []}
    overcommit: deny                  # deny | allow
    restarts: allow                   # allow | deny: may manifests ask for restarts?
    containers:                       # beyond the secure defaults, per module
      allow_root: []
      allow_writable_root: []
      allow_capabilities: {}          # {module: [NET_BIND_SERVICE]}
    reserve: {memory: 2GiB, vram: 512MiB}
    native_user: las-workload         # when las runs as root, native workloads run as this user
    native_allow_root: []             # modules whose native workload may run as root
    native_sandbox: none              # none | bwrap: run native workloads under bubblewrap
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
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
from localaistack.errors import PolicyError
from localaistack.units import parse_size

if TYPE_CHECKING:
    from localaistack.control.hardware import HardwareProfile

ModeName = Literal["native", "container"]
# What useradd accepts (Debian's default NAME_REGEX, without the trailing '$' of machine accounts).
USER_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _sha256_hex(v: str) -> str:
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v.lower()):
        raise ValueError("sha256 must be 64 hexadecimal characters")
    return v.lower()


class TrustEntry(_Strict):
    """A module trusted for native execution; with ``sha256``, pinned (docs/policy.md).

    ``sha256`` is argv[0]'s digest. ``files`` (absolute path -> sha256) and ``argv_sha256``
    pin what an interpreter runs: the files it executes and the words that choose the
    program (control/trust.py). An entry with ``sha256`` only is an executable-only pin.
    """

    module: str
    sha256: str | None = None
    files: dict[str, str] | None = None
    argv_sha256: str | None = None

    @field_validator("sha256", "argv_sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        return None if v is None else _sha256_hex(v)

    @field_validator("files")
    @classmethod
    def _files(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return None
        for path in v:
            if not path.startswith("/"):
                raise ValueError(f"{path!r}: a pinned file is named by its absolute path")
        return {path: _sha256_hex(digest) for path, digest in v.items()}

    @model_validator(mode="after")
    def _full_pin_has_executable(self) -> TrustEntry:
        if (self.files is not None or self.argv_sha256 is not None) and self.sha256 is None:
            raise ValueError("a pin with files or argv_sha256 needs sha256 (the executable's)")
        return self


def _check_address(v: str) -> str:
    try:
        ipaddress.ip_address(v)
    except ValueError as exc:
        raise ValueError(f"{v!r} is not an IP address") from exc
    return v


class NetworkPolicy(_Strict):
    host: str = "127.0.0.1"
    expose: dict[str, str] = {}
    # Addresses besides loopback that `las serve --listen` may bind (the HTTP API).
    api_expose: list[str] = []

    _host = field_validator("host")(_check_address)

    @field_validator("api_expose")
    @classmethod
    def _api_expose(cls, v: list[str]) -> list[str]:
        for addr in v:
            _check_address(addr)
        return v

    @field_validator("expose")
    @classmethod
    def _expose(cls, v: dict[str, str]) -> dict[str, str]:
        for addr in v.values():
            _check_address(addr)
        return v


class ContainerPolicy(_Strict):
    """What a container may ask for beyond the secure defaults, per module."""

    allow_root: list[str] = []
    allow_writable_root: list[str] = []
    allow_capabilities: dict[str, list[str]] = {}

    @field_validator("allow_capabilities")
    @classmethod
    def _caps(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        return {k: [c.upper().removeprefix("CAP_") for c in caps] for k, caps in v.items()}


class Reserve(_Strict):
    memory: int = 0
    vram: int = 0

    @field_validator("memory", "vram", mode="before")
    @classmethod
    def _size(cls, v: object) -> int:
        return parse_size(v)


class TierConditions(_Strict):
    gpu_vram_min: int | None = None
    gpu_vram_max: int | None = None
    ram_min: int | None = None
    ram_max: int | None = None
    gpu_count_min: int | None = Field(default=None, strict=True)  # `true` is not a count
    nvlink: bool | None = None

    @field_validator("gpu_vram_min", "gpu_vram_max", "ram_min", "ram_max", mode="before")
    @classmethod
    def _size(cls, v: object) -> int | None:
        return None if v is None else parse_size(v)


class TierAllow(_Strict):
    runtimes: list[str] | None = None
    max_model_size: str | None = None
    features: list[str] = []


class Tier(_Strict):
    name: str
    conditions: TierConditions = TierConditions()
    allow: TierAllow = TierAllow()
    deny: list[str] = []

    def matches(self, hw: HardwareProfile) -> tuple[bool, str]:
        """Whether every condition holds for ``hw``, and the first that does not."""
        c = self.conditions
        vram = max((g.memory_total for g in hw.gpus), default=0)
        ram = hw.memory.total
        checks = [
            (c.gpu_vram_min is None or vram >= c.gpu_vram_min, "gpu_vram_min"),
            (c.gpu_vram_max is None or vram <= c.gpu_vram_max, "gpu_vram_max"),
            (c.ram_min is None or ram >= c.ram_min, "ram_min"),
            (c.ram_max is None or ram <= c.ram_max, "ram_max"),
            (c.gpu_count_min is None or len(hw.gpus) >= c.gpu_count_min, "gpu_count_min"),
            # NVLink is not in the hardware profile: a tier that requires it never matches.
            (c.nvlink is None or c.nvlink is False, "nvlink"),
        ]
        for ok, name in checks:
            if not ok:
                return False, name
        return True, ""


class Policy(_Strict):
    """The effective policy."""

    allowed_modes: list[ModeName] = ["container", "native"]
    default_mode: ModeName = "container"
    container_engine: Literal["auto", "podman", "docker"] = "auto"
    trusted_native: list[TrustEntry] = []
    network: NetworkPolicy = NetworkPolicy()
    overcommit: Literal["deny", "allow"] = "deny"
    restarts: Literal["allow", "deny"] = "allow"
    containers: ContainerPolicy = ContainerPolicy()
    reserve: Reserve = Reserve()
    native_user: str = "las-workload"
    native_allow_root: list[str] = []
    native_sandbox: Literal["none", "bwrap"] = "none"
    policies: list[Tier] = []
    source: str = Field(default="built-in default", exclude=True)

    @field_validator("trusted_native", mode="before")
    @classmethod
    def _trust(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"module": x} if isinstance(x, str) else x for x in v]
        return v

    @field_validator("native_user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not USER_NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a user name (lower case letters, digits, _ and -)")
        if v == "root":
            raise ValueError("must not be root (list modules in native_allow_root instead)")
        return v

    def trust_for(self, module: str) -> TrustEntry | None:
        return next((t for t in self.trusted_native if t.module == module), None)

    def host_for(self, module: str) -> tuple[str, str]:
        """The address a module's ports bind to, and why."""
        if module in self.network.expose:
            return self.network.expose[module], f"policy network.expose allows {module}"
        return self.network.host, f"policy network.host ({self.source})"

    def tier_for(self, hw: HardwareProfile) -> Tier | None:
        for tier in self.policies:
            ok, _ = tier.matches(hw)
            if ok:
                return tier
        return None


# The built-in default: containers by default, native allowed only for trusted modules.
# The shipped inference modules (llama.cpp, vLLM) that need native speed are trusted out of the box.
DEFAULT_POLICY_YAML = """\
allowed_modes: [container, native]
default_mode: container
container_engine: auto
trusted_native: [echo-http, llama.cpp, vllm]
network: {host: 127.0.0.1, expose: {}}
overcommit: deny
restarts: allow
reserve: {memory: 1GiB, vram: 512MiB}
native_user: las-workload
native_allow_root: []
native_sandbox: none
"""


def default_policy() -> Policy:
    return parse_policy(DEFAULT_POLICY_YAML, "built-in default")


MAX_PROBLEMS = 8  # named in the message; the rest are counted
_MAX_PROBLEM = 200  # characters of one


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_PROBLEM else text[: _MAX_PROBLEM - 3] + "..."


def parse_policy(text: str | bytes, source: str, *, base: dict[str, Any] | None = None) -> Policy:
    """Parse policy text (or a policy file's bytes); top-level keys it sets replace those of
    ``base``. The bounds of ``boundedload`` hold (1 MiB, UTF-8, depth, aliases).

    Raises:
        PolicyError: naming the file and each invalid field.
    """
    try:
        size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "replace"))
        if size > MAX_FILE_BYTES:
            raise InputError(f"the policy is larger than the limit of {MAX_FILE_BYTES} bytes")
        text = decode_text(text) if isinstance(text, bytes) else check_text(text)
        data, _root = load_yaml(text)
    except InputError as exc:
        raise PolicyError(exc.where(source), hint=exc.hint or "fix the policy file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(
            f"{source}: a policy is a YAML mapping, found {type(data).__name__}",
            hint="see docs/policy.md for the format",
        )
    problems = [
        f"{'.'.join(str(p) for p in loc)}: contains a NUL character (\\0)"
        for loc in nul_paths(data)
    ]
    try:
        policy = Policy.model_validate({**(base or {}), **data, "source": source})
    except ValidationError as exc:
        problems += [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
    if problems:
        more = len(problems) - MAX_PROBLEMS
        text = "; ".join(_clip(p) for p in problems[:MAX_PROBLEMS])
        raise PolicyError(
            f"{source}: invalid policy: {text}" + (f"; and {more} more" if more > 0 else ""),
            hint="see docs/policy.md for the format",
        )
    if policy.default_mode not in policy.allowed_modes:
        raise PolicyError(
            f"{source}: default_mode {policy.default_mode!r} is not in allowed_modes "
            f"{policy.allowed_modes}",
            hint="add it to allowed_modes or choose another default_mode",
        )
    return policy


def load_policy(path: Path | None, home: Path) -> Policy:
    """The effective policy: ``path`` if given, else ``$LAS_HOME/policy.yaml``, else default.

    Raises:
        PolicyError: when the file cannot be read or is invalid.
    """
    if path is None:
        candidate = home / "policy.yaml"
        if not candidate.exists():
            return default_policy()
        path = candidate
    try:
        raw = read_limited(path)
    except FileNotFoundError as exc:
        raise PolicyError(f"policy file {path}: no such file", hint="check --policy") from exc
    except IsADirectoryError as exc:
        raise PolicyError(f"policy file {path}: is a directory", hint="check --policy") from exc
    except OSError as exc:
        raise PolicyError(
            f"policy file {path}: cannot read: {exc.strerror}", hint="check its permissions"
        ) from exc
    except InputError as exc:
        raise PolicyError(exc.where(str(path)), hint=exc.hint) from None
    # A policy file states what it changes: keys it leaves out keep the built-in default.
    return parse_policy(raw, str(path), base=yaml.safe_load(DEFAULT_POLICY_YAML))
