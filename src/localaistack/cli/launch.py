"""``las run`` itself: plan, admit, start, report; and what
``las start``/``restart`` share with it (the report, a Ctrl-C while waiting).

Errors are ``LasError``s, rendered by the click group (cli/app.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from localaistack.cli.output import warn
from localaistack.cli.planning import planner_for
from localaistack.errors import Interrupted, LasError, StartFailed, UsageError


def run_instance(
    module: str,
    mode: str | None,
    sets: tuple[str, ...],
    policy_file: Path | None,
    name: str | None,
    detach: bool,
) -> None:
    """Plan MODULE, admit it, start it and print how the start went.

    Raises:
        LasError: a usage error, a refusal, or a start that failed (with the reason).
    """
    from localaistack.control.names import check_name
    from localaistack.runtime.manager import Runtime
    from localaistack.store.paths import las_home

    if name is not None:
        try:
            check_name(name, "instance name")
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    rt = Runtime(las_home())
    warn(rt.warnings)  # a new home that finds a lost one's workloads running says so
    try:
        # The supervisor starts first and gets ready while the plan is made and admitted.
        pending = rt.prepare_start()
        try:
            instance = _plan_and_admit(rt, module, mode, sets, policy_file, name)
        except BaseException:
            rt.cancel_start(pending)
            raise
        try:
            result = rt.start(instance, wait_healthy=not detach, pending=pending)
        except KeyboardInterrupt:
            raise interrupted(rt, instance) from None
        except BaseException:
            clear_admission(rt, instance)
            raise
        report_start(rt, result)
    finally:
        rt.close()


def interrupted(rt: Any, name: str) -> Interrupted:
    """What a Ctrl-C (SIGINT) while `las run`/`start`/`restart` waits means: the error to
    exit with (130). The supervisor is in a session of its own and goes on: an instance
    whose run was created goes on starting; otherwise nothing was started."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
    from localaistack.store.db import ACTIVE_STATES

    try:
        run = rt.current_run(name)
    except LasError:
        run = None
    if run is None or run.state not in ACTIVE_STATES:
        clear_admission(rt, name)
        return Interrupted(f"interrupted: {name} was not started")
    return Interrupted(
        f"interrupted: {name} goes on starting in the background (run {run.run_id}, "
        f"{run.state}); las only stopped waiting for it",
        hint=f"`las stop {name}` stops it; `las ps` and `las logs {name}` show how it goes",
    )


def report_start(rt: Any, result: Any) -> None:
    """The line `las run`/`start`/`restart` print, or the failure as a StartFailed."""
    if result.state in ("failed", "stopped"):
        raise StartFailed(
            f"{result.name}: run {result.run_id} {result.state}: {result.reason}",
            hint=f"`las logs {result.name}` shows its output ({result.log_path})",
        )
    plan = rt.require_instance(result.name).plan_data()
    ports = ", ".join(f"{b['name']}: {b['host_ip']}:{b['host_port']}" for b in plan["ports"])
    line = f"{result.name}  run {result.run_id}  {result.state}  {result.what}"
    print(line + (f"  {ports}" if ports else ""), flush=True)


def clear_admission(rt: Any, name: str) -> None:
    """Release an admission whose run never started (else it is held for a while)."""
    from localaistack.store.db import clear_admission as clear

    with rt.store.transaction() as c:
        clear(c, name)


def _plan_and_admit(
    rt: Any,
    module: str,
    mode: str | None,
    sets: tuple[str, ...],
    policy_file: Path | None,
    name: str | None,
) -> str:
    from localaistack.control.admission import Capacity, admit_new, gpu_held, live_usage

    rt.reconcile()  # a run that died holds no reservation any more
    held = gpu_held(rt.store)
    planner = planner_for(module, mode, sets, None, policy_file, gpu_held=held)
    instance = name or planner.loaded.manifest.name
    # Checks that need the engine (image present...) come before anything is created.
    rt.preflight(planner(None))
    notes: list[str] = []
    capacity = Capacity.of(planner.profile, planner.policy)
    admit_new(
        rt.store,
        instance,
        planner,
        capacity=capacity,
        live=live_usage(capacity, store=rt.store),
        notes=notes,
    )
    warn(notes)
    return str(instance)
