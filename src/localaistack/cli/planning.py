"""The planning options shared by `las plan` and `las run`, and their ``--set`` values
(ops/planning.py reads the inputs they name)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from localaistack.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])

MODES = ("native", "container")


def parse_sets(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        if "=" not in item:
            raise UsageError(f"--set {item!r} is not NAME=VALUE", hint="e.g. --set model=/m.gguf")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UsageError(f"--set {item!r} has an empty name")
        out[key] = value
    return out


def plan_options(f: F) -> F:
    f = click.option(
        "--policy",
        "policy_file",
        type=click.Path(path_type=Path),
        help="Policy file (default: $LAS_HOME/policy.yaml, else built-in).",
    )(f)
    f = click.option(
        "--hardware",
        "hardware_file",
        type=click.Path(path_type=Path),
        help="Plan for the machine described by this saved `las hw --save` file.",
    )(f)
    f = click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="NAME=VALUE",
        help="Set a module parameter (repeatable).",
    )(f)
    f = click.option(
        "--mode",
        type=click.Choice(MODES),
        help="Ask for an execution mode; an error if hardware or policy rule it out.",
    )(f)
    return f
