"""The typed records the store hands out: one per row of its tables (store/db.py).

Immutable and cheap (named tuples: the long-lived supervisor reads them). Columns keep
their stored form: times are Unix seconds, ``Instance.plan`` is the plan's JSON text (its
secret values masked), ``Run.handle`` the handle's JSON envelope (``decode_handle``),
``Run.probes`` the last health probes' JSON list.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple


class Instance(NamedTuple):
    """A named instance: the plan it runs and its current run."""

    name: str
    module: str
    mode: str
    plan: str
    created_at: float
    current_run: str | None
    admitted_at: float | None
    admitted_over: str | None

    def plan_data(self) -> dict[str, Any]:
        """The stored plan as JSON data (secret values masked: store/secrets.py)."""
        data: dict[str, Any] = json.loads(self.plan)
        return data


class Run(NamedTuple):
    """One run of an instance (attempt: its number among the instance's runs)."""

    run_id: str
    instance: str
    attempt: int
    backend: str
    state: str
    reason: str | None
    exit_code: int | None
    signal: str | None
    pid: int | None
    pid_start: int | None
    sup_pid: int | None
    sup_start: int | None
    owner_pid: int | None
    owner_start: int | None
    boot_id: str
    handle: str | None
    log_path: str
    stop_requested: float | None
    stop_timeout: float | None
    lines_dropped: int
    health: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    probes: str | None
    healthy_at: float | None


class InstanceRun(NamedTuple):
    """An instance with its current run (None: it has none), as ``las ps`` lists them."""

    instance: Instance
    run: Run | None


class Transition(NamedTuple):
    """A state change of a run."""

    id: int
    run_id: str
    from_state: str | None
    to_state: str
    at: float
    reason: str | None


class Event(NamedTuple):
    """An entry of the event log (``las events``); ``data``: JSON text or None."""

    id: int
    at: float
    instance: str | None
    run_id: str | None
    type: str
    message: str
    data: str | None


class Reservation(NamedTuple):
    """What one instance holds: its plan's resources."""

    instance: str
    memory: int | None  # bytes of RAM; None: nothing reserved
    cpus: float | None
    gpus: dict[str, int]  # GPU uuid -> bytes of VRAM
    state: str  # the current run's state, or "admitted" (its run is not created yet)


INSTANCE_COLUMNS = ", ".join(Instance._fields)
RUN_COLUMNS = ", ".join(Run._fields)
TRANSITION_COLUMNS = ", ".join(Transition._fields)
EVENT_COLUMNS = ", ".join(Event._fields)
