"""The planning inputs shared by `las plan` and `las run`: options, ``--set`` values, and
the module, hardware profile and policy read once (``planner_for``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


class Planner:
    """The planning inputs, read once; calling it makes a plan (shared by plan and run).

    ``profile`` and ``policy`` are what admission checks the plan against.
    """

    def __init__(
        self,
        loaded: Any,
        profile: Any,
        policy: Any,
        request: Any,
        local: bool,
        environ: Mapping[str, str] | None = None,
    ):
        self.loaded, self.profile, self.policy, self.request = loaded, profile, policy, request
        self.local = local  # False: a plan for another machine (--hardware)
        self.environ = environ  # None: os.environ

    def __call__(self, allocate: Callable[[str, str], int] | None) -> Any:
        """A plan; ``allocate`` chooses host ports (None: ports that are free now)."""
        from localaistack.control.planner import make_plan
        from localaistack.control.ports import free_port

        return make_plan(
            self.loaded,
            self.profile,
            self.policy,
            self.request,
            allocate or (lambda host, _name: free_port(host)),
            resolve_executables=self.local,  # another machine's paths are unknown
            environ=self.environ,
        )


def planner_for(
    module: str,
    mode: str | None,
    sets: tuple[str, ...],
    hardware_file: Path | None,
    policy_file: Path | None,
    environ: Mapping[str, str] | None = None,
    gpu_held: Mapping[str, int] | None = None,
) -> Planner:
    """Resolve the module and read the hardware profile and policy for planning it."""
    from localaistack.control import hardware, probecache
    from localaistack.control.catalog import resolve_module
    from localaistack.control.planner import PlanRequest
    from localaistack.control.policy import load_policy
    from localaistack.store.paths import las_home

    home = las_home()
    loaded = resolve_module(module, home)
    policy = load_policy(policy_file, home)  # the files first: a bad one fails before probing
    if hardware_file:
        profile = hardware.load_profile(hardware_file)
    else:
        # Asking the engines costs a few hundred ms: only when a container plan is possible.
        wants_engine = "container" in loaded.manifest.runtime.modes and mode != "native"
        profile = probecache.hardware_profile(home, probe_engines=wants_engine)
    request = PlanRequest(mode=mode, sets=parse_sets(sets), gpu_held=gpu_held)
    return Planner(loaded, profile, policy, request, local=hardware_file is None, environ=environ)
