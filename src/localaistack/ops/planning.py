"""The planning inputs shared by plan, run and the service: the module, the hardware
profile and the policy, read once (``planner_for``); calling the ``Planner`` makes a plan."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


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
        self.local = local  # False: a plan for another machine (a saved profile)
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
    home: Path,
    module: str,
    mode: str | None,
    sets: Mapping[str, str],
    profile: Any = None,
    policy_file: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    gpu_held: Mapping[str, int] | None = None,
    restart: str | None = None,
) -> Planner:
    """Resolve the module and read the policy and this machine's hardware profile (or plan
    for ``profile``, a saved one: another machine's) for planning it."""
    from localaistack.control import probecache
    from localaistack.control.catalog import resolve_module
    from localaistack.control.planner import PlanRequest
    from localaistack.control.policy import load_policy

    loaded = resolve_module(module, home)
    policy = load_policy(policy_file, home)  # the files first: a bad one fails before probing
    local = profile is None
    if profile is None:
        # Asking the engines costs a few hundred ms: only when a container plan is possible.
        wants_engine = "container" in loaded.manifest.runtime.modes and mode != "native"
        profile = probecache.hardware_profile(home, probe_engines=wants_engine)
    request = PlanRequest(mode=mode, sets=dict(sets), gpu_held=gpu_held, restart=restart)
    return Planner(loaded, profile, policy, request, local=local, environ=environ)
