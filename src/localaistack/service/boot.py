"""What `las serve` does before it listens: start again the instances whose restart policy
says so (Docker's ``always`` and ``unless-stopped``), after a reboot or a restart of the
service.

* ``always``: started again whatever ended its last run, an explicit `las stop` included
  (as Docker's daemon does at its start);
* ``unless-stopped``: started again unless its last run was ended by an explicit `las stop`
  (the run's ``stop_requested``, which only a `las stop`/`restart`/`rm -f` records: a
  supervisor that got SIGTERM from elsewhere, a shutdown's, does not);
* ``never`` and ``on-failure``: left as they are (on-failure's restarts are the
  supervisor's, within its run);
* an instance whose current run is active, or that never had a run, is left as it is.

Each start goes through admission (``Operations.start``) and is an event (``autostart``)
saying why: "service start after a reboot (boot id X -> Y)" or "service start (service
restarted)". The boot id under which the service last started is kept in the store
(``meta``: ``service_boot_id``); without one (the first service start of the home) the last
run's boot id tells whether the machine rebooted since.

A start that is refused (admission; a policy that forbids it now, ``restarts: deny``
included; a plan that no longer fits) is never a silent skip: the instance gets a new run,
``failed`` at once with the refusal as its reason (what `las ps -a` and `inspect` show; no
supervisor ran it, so it has no log), and an ``autostart-failed`` event. A start that failed
once started is its own run, plus that event. A start that raced another `las` (the
instance became active meanwhile) is left to that one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localaistack.errors import LasError, PolicyViolation
from localaistack.ops.api import Operations
from localaistack.runtime import backends, procs
from localaistack.runtime.manager import Runtime
from localaistack.runtime.spawn import new_run_id
from localaistack.store.db import (
    ACTIVE_STATES,
    add_event,
    create_run,
    get_instance,
    get_meta,
    get_run,
    set_meta,
    set_run_state,
)
from localaistack.store.paths import private_dir
from localaistack.store.records import Instance, Run

log = logging.getLogger("las.serve.boot")  # under `las serve`'s logger (service/server.py)

BOOT_KEY = "service_boot_id"
AUTOSTART_POLICIES = ("always", "unless-stopped")


@dataclass(frozen=True)
class Autostart:
    """What the service start did for one instance: its new run's state (``running``,
    ``starting``...; ``failed``: refused or failed, ``reason`` says why)."""

    name: str
    policy: str
    why: str
    state: str
    run_id: str | None
    reason: str | None


def restart_at_start(home: Path, ops_factory: Callable[[], Operations]) -> list[Autostart]:
    """Start again, through ``ops_factory()``'s ``start`` (detached: it returns once the
    workload runs), every instance of ``home`` whose restart policy asks for it at a service
    start; returns what was done, one entry per instance it tried to start, in name order.

    Blocks while the starts run (each until its workload runs or fails). Errors of one
    instance's start are recorded on that instance and do not stop the others; a store that
    cannot be read or written at all raises ``StoreError``.
    """
    rt = Runtime(home)
    try:
        for warning in rt.warnings:
            log.warning("%s", warning)
        rt.reconcile()  # a run of the previous boot, or of a dead supervisor, is over now
        current = procs.boot_id()
        previous = get_meta(rt.store.conn, BOOT_KEY)
        todo = [
            (inst, run, policy)
            for inst, run in rt.store.instances_with_runs()
            if (policy := _policy(inst)) in AUTOSTART_POLICIES
            and run is not None
            and run.state not in ACTIVE_STATES
            and not (policy == "unless-stopped" and run.stop_requested is not None)
        ]
        done = []
        for inst, run, policy in todo:
            why = _why(previous, str(run.boot_id), current)
            done.append(_start_one(rt, ops_factory, inst, run, policy, why))
        with rt.store.transaction() as c:
            set_meta(c, BOOT_KEY, current)
        return done
    finally:
        rt.close()


def _policy(inst: Instance) -> str:
    restart = inst.plan_data().get("restart") or {}
    return str(restart.get("policy") or "never")


def _why(previous: str | None, last_run: str, now: str) -> str:
    """Why the instance is started: the boot id of the service's last start (``previous``;
    None: it never started in this home, then that of the instance's last run) against
    this boot's."""
    before = previous or last_run
    if before != now:
        return f"service start after a reboot (boot id {before} -> {now})"
    if previous is None:
        return "service start (its first in this home)"
    return "service start (service restarted)"


def _start_one(
    rt: Runtime,
    ops_factory: Callable[[], Operations],
    inst: Instance,
    last: Run,
    policy: str,
    why: str,
) -> Autostart:
    name = str(inst.name)
    ended = f"its last run {last.run_id} ended {last.state}" + (
        f" ({last.reason})" if last.reason else ""
    )
    rt.record_event(name, "autostart", f"{why}: restart policy {policy}, {ended}: starting it")
    log.info("%s: %s: starting it (restart policy %s)", name, why, policy)
    try:
        _check_policy(rt.home)
        with ops_factory() as ops:
            outcome = ops.start(name, detach=True)
            for warning in ops.warnings:
                log.warning("%s: %s", name, warning)
    except LasError as err:
        return _refused(rt, inst, policy, why, err.message)
    except Exception as err:  # a bug: recorded on the instance all the same, and logged
        log.exception("%s: the start at service start failed", name)
        return _refused(rt, inst, policy, why, f"internal error: {type(err).__name__}: {err}")
    if outcome.state in ("failed", "stopped"):
        rt.record_event(
            name,
            "autostart-failed",
            f"{why}: run {outcome.run_id} {outcome.state}: {outcome.reason}",
        )
        log.warning("%s: run %s %s: %s", name, outcome.run_id, outcome.state, outcome.reason)
    return Autostart(name, policy, why, outcome.state, outcome.run_id, outcome.reason)


def _check_policy(home: Path) -> None:
    """A policy that forbids restarts now (``restarts: deny``, set after the plan was made)
    forbids these starts too.

    Raises:
        PolicyViolation: it does.
        PolicyError: the policy file is invalid.
    """
    from localaistack.control.policy import load_policy

    policy = load_policy(None, home)
    if policy.restarts == "deny":
        raise PolicyViolation(
            f"policy restarts: deny ({policy.source}): instances are not started again "
            "by their restart policy"
        )


def _refused(rt: Runtime, inst: Instance, policy: str, why: str, message: str) -> Autostart:
    """Record a start that did not happen as a new run of the instance, failed at once,
    unless the instance has moved on meanwhile (a new run: that one says how it went)."""
    name = str(inst.name)
    reason = f"{why}: not started: {message}"
    run_id = new_run_id()
    with rt.store.transaction() as c:
        now = get_instance(c, name)
        if now is None or now.current_run != inst.current_run:
            moved = get_run(c, now.current_run) if now is not None and now.current_run else None
            add_event(c, "autostart-failed", f"{why}: {message}", instance=name)
            state = moved.state if moved is not None else "removed"
            return Autostart(name, policy, why, state, moved.run_id if moved else None, message)
        plan = inst.plan_data()
        log_path = private_dir(rt.home, "logs", name) / f"{run_id}.log"
        me = os.getpid()
        create_run(
            c,
            run_id=run_id,
            instance=name,
            backend=backends.name_for(plan),
            boot_id=procs.boot_id(),
            log_path=str(log_path),
            reason=why,
            owner_pid=me,
            owner_start=procs.start_time(me),
        )
        set_run_state(c, run_id, "failed", reason)
        add_event(c, "autostart-failed", reason, instance=name, run_id=run_id)
    log.warning("%s: %s", name, reason)
    return Autostart(name, policy, why, "failed", run_id, reason)
