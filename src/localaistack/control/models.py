"""Models: names bound to a module and its parameters (``$LAS_HOME/models.yaml``), the
gateway's catalog (issue #20; docs/status.md, "#20").

::

    smollm2:
      module: llama.cpp
      set: {model: /srv/models/SmolLM2-135M-Instruct.Q4_1.gguf, ctx_size: 4096}
      ttl: 10m            # stopped after 10 minutes with no request in flight ("never": kept)
      pin: false          # true: never evicted to make room for another model
      max_concurrency: 4  # requests in flight at once; more wait (up to max_queue), then 429
      max_queue: 64
      aliases: [smol]

The file is read within boundedload's bounds; every problem names the file, the line and
the field, as a manifest's do. Only the file's own shape is checked here: whether the
module exists and takes these parameters is the planner's to say, at the model's start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from localaistack.control.boundedload import (
    InputError,
    check_text,
    decode_text,
    load_yaml,
    nul_paths,
    read_limited,
)
from localaistack.control.manifest import fmt_loc, line_for, node_lines
from localaistack.errors import ModelsError
from localaistack.units import parse_duration

MODELS_FILE = "models.yaml"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")  # "smollm2", "gemma3:270m"
TTL_MAX = 30 * 24 * 3600.0
MAX_PROBLEMS = 50
HINT = "fix the fields named above (docs/status.md, #20, shows the format)"


def _check_name(v: str, what: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError(
            f"{what} {v[:40]!r} is not valid: 1-128 letters, digits and . _ : / -, "
            "starting with a letter or digit"
        )
    return v


class ModelSpec(BaseModel):
    """One model of models.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    module: str = Field(min_length=1, max_length=4096)
    mode: Literal["native", "container"] | None = None
    set: dict[str, str] = Field(default_factory=dict)
    ttl: float | None = 600.0  # seconds with no request in flight; None: never stopped idle
    pin: bool = False
    max_concurrency: int | None = Field(default=None, ge=1, le=4096)
    max_queue: int = Field(default=64, ge=0, le=100_000)
    aliases: tuple[str, ...] = ()

    @field_validator("set", mode="before")
    @classmethod
    def _set_strings(cls, v: Any) -> Any:
        # YAML says `ctx_size: 4096` as an int; --set gives strings: the planner takes those.
        if not isinstance(v, dict):
            return v
        out: dict[Any, Any] = {}
        for key, value in v.items():
            if isinstance(value, bool):
                out[key] = "true" if value else "false"
            elif isinstance(value, int | float | str):
                out[key] = str(value)
            else:
                out[key] = value  # pydantic names the field and the type
        return out

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> Any:
        if v is None or v == "never":
            return None
        seconds = parse_duration(v)
        if seconds <= 0:
            raise ValueError(f"{v!r:.40} is not a positive duration (or `never`)")
        if seconds > TTL_MAX:
            raise ValueError(f"{v!r:.40} is too long: at most 720h (or `never`)")
        return seconds

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for a in v:
            _check_name(a, "alias")
        return v


@dataclass(frozen=True)
class Models:
    """The models of one file, by name; ``names`` maps every name and alias to its model."""

    source: str
    specs: dict[str, ModelSpec]
    names: dict[str, str]

    def resolve(self, name: str) -> str | None:
        """The model a request's ``model`` names (itself or an alias); None: no such model."""
        return self.names.get(name)


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_models(text: str | bytes, source: str) -> Models:
    """Parse and validate models.yaml text (or the file's bytes).

    Raises:
        ModelsError: naming ``source``, each problem's line and field.
    """
    try:
        text = decode_text(text) if isinstance(text, bytes) else check_text(text)
        data, root = load_yaml(text)
    except InputError as exc:
        raise ModelsError(exc.where(source), hint=exc.hint or HINT) from None
    if data is None:
        return Models(source, {}, {})
    if not isinstance(data, dict):
        raise ModelsError(
            f"{source}: (top level): models.yaml is a mapping of model names to models, "
            f"found {type(data).__name__}",
            hint=HINT,
        )
    lines = node_lines(root)
    problems: list[str] = []

    def problem(loc: tuple[str | int, ...], msg: str) -> None:
        line = line_for(lines, loc)
        where = f"{source}:{line}" if line else source
        problems.append(_clip(f"{where}: {fmt_loc(loc)}: {msg}"))

    for loc in nul_paths(data):
        problem(loc, "contains a NUL character (\\0)")
    specs: dict[str, ModelSpec] = {}
    names: dict[str, str] = {}
    for key, value in data.items():
        name = str(key)
        try:
            _check_name(name, "the model name")
        except ValueError as exc:
            problem((name,), str(exc))
            continue
        if not isinstance(value, dict):
            problem((name,), f"a model is a mapping (module, set, ttl...), found {value!r:.40}")
            continue
        try:
            spec = ModelSpec.model_validate(value)
        except ValidationError as exc:
            for e in exc.errors():
                msg = str(e["msg"]).removeprefix("Value error, ")
                problem((name, *e["loc"]), msg)
            continue
        specs[name] = spec
        for n in (name, *spec.aliases):
            if n in names and names[n] != name:
                problem((name,), f"{n!r} already names the model {names[n]!r}")
            names.setdefault(n, name)
    if problems:
        more = len(problems) - MAX_PROBLEMS
        raise ModelsError(
            "; ".join(problems[:MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else ""),
            hint=HINT,
            problems=problems,
        )
    return Models(source, specs, names)


def load_models(home: Path, path: Path | None = None) -> Models:
    """The models of ``path`` (default ``$LAS_HOME/models.yaml``; none there: no models).

    Raises:
        ModelsError: the file cannot be read, or is invalid.
    """
    explicit = path is not None
    path = path or home / MODELS_FILE
    try:
        raw = read_limited(path)
    except FileNotFoundError:
        if explicit:
            raise ModelsError(f"{path}: no such file", hint="check the path") from None
        return Models(str(path), {}, {})
    except OSError as exc:
        raise ModelsError(
            f"{path}: cannot read: {exc.strerror}", hint="check its permissions"
        ) from None
    except InputError as exc:
        raise ModelsError(exc.where(str(path)), hint=exc.hint or HINT) from None
    return parse_models(raw, str(path))
