"""The operations in process: the control layer plans and admits, the runtime executes,
on this machine's state store. The CLI uses it without ``--host``; `las serve` uses one
per request.

The compositions (plan, admit, start; readmit, start; stop; the views) live here once,
so that `las ...` and the API do the same thing with the same words.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localaistack.errors import Interrupted, LasError, UsageError
from localaistack.ops.api import (
    EventInfo,
    InstanceDetail,
    InstanceSummary,
    Operations,
    PlanRequestBody,
    RemoveOutcome,
    RunRequest,
    StartOutcome,
    StopOutcome,
)
from localaistack.plan import ExecutionPlan

if TYPE_CHECKING:
    from localaistack.runtime.manager import Runtime
    from localaistack.runtime.supervision import SparePool
    from localaistack.store.records import Event, Run


_MAX_ID = 2**63 - 1  # SQLite's largest integer: event ids and counts are below it


def iso(value: float | None) -> str | None:
    """A stored time as the CLI and the API show it: ISO 8601 UTC, milliseconds."""
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def event_info(ev: Event) -> EventInfo:
    return EventInfo(
        id=ev.id,
        at=iso(ev.at) or "",
        instance=ev.instance,
        run_id=ev.run_id,
        type=ev.type,
        message=ev.message,
    )


def check_stop_timeout(timeout: float | None) -> None:
    from localaistack.runtime.supervision import STOP_TIMEOUT_MAX

    if timeout is not None and not 0 <= timeout <= STOP_TIMEOUT_MAX:  # (NaN fails too)
        raise UsageError(
            f"--timeout {timeout:g} is not a number of seconds from 0 to {STOP_TIMEOUT_MAX:g}",
            hint=f"the longest stop timeout is {STOP_TIMEOUT_MAX:g}s (1 hour); 0 kills at once",
        )


class LocalOperations(Operations):
    """``Operations`` on this machine. Not for sharing across threads: make one per
    caller (it is cheap; the store connection opens on first use).

    ``on_warning``: called with each warning as it arises (the CLI prints it before a
    long wait); without it, warnings collect in ``warnings``.
    """

    def __init__(
        self,
        home: Path | None = None,
        on_warning: Callable[[str], None] | None = None,
        spares: SparePool | None = None,
    ) -> None:
        super().__init__()
        if home is None:
            from localaistack.store.paths import las_home

            home = las_home()
        self.home = home
        self.on_warning = on_warning
        self.spares = spares  # `las serve`'s supervisor spawned ahead (runtime/supervision.py)
        self._rt: Runtime | None = None

    def __repr__(self) -> str:
        return f"LocalOperations({self.home})"

    # --- plumbing --------------------------------------------------------------------------

    @property
    def rt(self) -> Runtime:
        if self._rt is None:
            from localaistack.runtime.manager import Runtime

            self._rt = Runtime(self.home, spares=self.spares)
            self._flush()  # a new home that finds a lost one's workloads running says so
        return self._rt

    def close(self) -> None:
        if self._rt is not None:
            self._rt.close()
            self._rt = None

    def _warn(self, notes: list[str]) -> None:
        for note in notes:
            if self.on_warning is not None:
                self.on_warning(note)
            else:
                self.warnings.append(note)

    def _flush(self) -> None:
        """What the runtime could not do or found amiss (state not updated: a full disk)."""
        if self._rt is not None and self._rt.warnings:
            self._warn(list(self._rt.warnings))
            self._rt.warnings.clear()

    # --- control ---------------------------------------------------------------------------

    def hardware(self) -> dict[str, Any]:
        from localaistack.control import hardware

        return hardware.detect_hardware().model_dump(mode="json")

    def modules(self) -> list[dict[str, Any]]:
        from localaistack.control.catalog import catalog_entries

        data: list[dict[str, Any]] = []
        for e in catalog_entries(self.home):
            if e.loaded:
                m = e.loaded.manifest
                data.append(
                    {
                        "name": m.name,
                        "version": m.version,
                        "category": m.category,
                        "modes": list(m.runtime.executable_modes),
                        "install_variants": list(m.runtime.install_variants),
                        "source": e.source,
                        "path": str(e.path),
                        "description": m.description,
                    }
                )
            else:
                data.append(
                    {
                        "name": e.path.stem,
                        "source": e.source,
                        "path": str(e.path),
                        "error": e.error.message if e.error else "",
                    }
                )
        return data

    def _planner(
        self,
        module: str,
        mode: str | None,
        sets: dict[str, str],
        hardware: dict[str, Any] | None,
        policy_file: Path | None,
        **kw: Any,
    ) -> Any:
        from localaistack.ops.planning import planner_for

        profile = None
        if hardware is not None:
            from localaistack.control.hardware import profile_from_data

            source = hardware.get("source")
            profile = profile_from_data(
                hardware, source if isinstance(source, str) and source else "from the request"
            )
        return planner_for(self.home, module, mode, sets, profile, policy_file, **kw)

    def plan(self, req: PlanRequestBody, policy_file: Path | None = None) -> ExecutionPlan:
        planner = self._planner(req.module, req.mode, req.set, req.hardware, policy_file)
        return planner(None)  # type: ignore[no-any-return]

    # --- lifecycle -------------------------------------------------------------------------

    def run(self, req: RunRequest, policy_file: Path | None = None) -> StartOutcome:
        from localaistack.control.names import check_name

        if req.name is not None:
            try:
                check_name(req.name, "instance name")
            except ValueError as exc:
                raise UsageError(str(exc)) from exc
        rt = self.rt
        # The supervisor starts first and gets ready while the plan is made and admitted.
        pending = rt.prepare_start()
        try:
            instance = self._plan_and_admit(req, policy_file)
        except BaseException:
            rt.cancel_start(pending)
            raise
        try:
            result = rt.start(instance, wait_healthy=not req.detach, pending=pending)
        except KeyboardInterrupt:
            raise self._interrupted(instance) from None
        except BaseException:
            self._clear_admission(instance)
            raise
        return self._outcome(result)

    def _plan_and_admit(self, req: RunRequest, policy_file: Path | None) -> str:
        from localaistack.control.admission import Capacity, admit_new, gpu_held, live_usage

        rt = self.rt
        rt.reconcile()  # a run that died holds no reservation any more
        planner = self._planner(
            req.module,
            req.mode,
            req.set,
            None,
            policy_file,
            gpu_held=gpu_held(rt.store),
            restart=req.restart,
        )
        instance = str(req.name or planner.loaded.manifest.name)
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
        self._warn(notes)
        return instance

    def _readmit(self, name: str) -> None:
        """Admission for a new run of an existing instance, once what it used is released."""
        from localaistack.control import hardware
        from localaistack.control.admission import (
            Capacity,
            live_usage,
            readmit,
            release_targets,
            wait_gpu_release,
        )
        from localaistack.control.policy import load_policy

        rt = self.rt
        plan = rt.plan_of(name)
        capacity = Capacity.of(
            hardware.detect_hardware(probe_engines=False), load_policy(None, self.home)
        )
        if plan.gpus:  # the driver frees VRAM after the process is gone: wait for it (bounded)
            targets = release_targets(plan, capacity)
            ok, message = wait_gpu_release([g.uuid for g in plan.gpus], targets)
            if not ok:
                self._warn([message])
        notes: list[str] = []
        readmit(
            rt.store,
            name,
            plan,
            capacity=capacity,
            live=live_usage(capacity, store=rt.store),
            notes=notes,
        )
        self._warn(notes)

    def _start(self, name: str, detach: bool) -> StartOutcome:
        self._readmit(name)
        try:
            result = self.rt.start(name, wait_healthy=not detach)
        except KeyboardInterrupt:
            raise self._interrupted(name) from None
        return self._outcome(result)

    def start(self, name: str, detach: bool = False) -> StartOutcome:
        self.rt.reconcile()
        return self._start(name, detach)

    def restart(self, name: str, timeout: float | None, detach: bool = False) -> StartOutcome:
        check_stop_timeout(timeout)
        self._stop(name, timeout)
        return self._start(name, detach)

    def _outcome(self, result: Any) -> StartOutcome:
        plan = self.rt.require_instance(result.name).plan_data()
        return StartOutcome(
            name=result.name,
            run_id=result.run_id,
            state=result.state,
            pid=result.pid,
            reason=result.reason,
            log_path=result.log_path,
            what=result.what,
            ports=[f"{b['name']}: {b['host_ip']}:{b['host_port']}" for b in plan["ports"]],
        )

    def _interrupted(self, name: str) -> Interrupted:
        """What a Ctrl-C (SIGINT) while a start waits means: the error to exit with (130).
        The supervisor is in a session of its own and goes on: an instance whose run was
        created goes on starting; otherwise nothing was started."""
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        from localaistack.store.db import ACTIVE_STATES

        try:
            run = self.rt.current_run(name)
        except LasError:
            run = None
        if run is None or run.state not in ACTIVE_STATES:
            self._clear_admission(name)
            return Interrupted(f"interrupted: {name} was not started")
        return Interrupted(
            f"interrupted: {name} goes on starting in the background (run {run.run_id}, "
            f"{run.state}); las only stopped waiting for it",
            hint=f"`las stop {name}` stops it; `las ps` and `las logs {name}` show how it goes",
        )

    def _clear_admission(self, name: str) -> None:
        """Release an admission whose run never started (else it is held for a while)."""
        from localaistack.store.db import clear_admission

        with self.rt.store.transaction() as c:
            clear_admission(c, name)

    def _stop(self, name: str, timeout: float | None) -> Run | None:
        """``Runtime.stop``, with what could not be recorded warned (before any error)."""
        notes: list[str] = []
        try:
            return self.rt.stop(name, timeout, notes)
        finally:
            self._warn(notes)
            self._flush()

    def stop(self, name: str, timeout: float | None) -> StopOutcome:
        check_stop_timeout(timeout)
        rt = self.rt
        unknown = rt.unknown_ref(name)  # ?RUN_ID: a workload of this home with no record
        if unknown is not None:
            return StopOutcome(name=name, message=rt.end_unknown(unknown, timeout))
        row = self._stop(name, timeout)
        if row is None:
            return StopOutcome(name=name)
        return StopOutcome(name=name, state=row.state, reason=row.reason)

    def remove(self, name: str, purge: bool = False, force: bool = False) -> RemoveOutcome:
        from localaistack.errors import InstanceConflict

        rt = self.rt
        unknown = rt.unknown_ref(name) if name.startswith("?") else None
        if unknown is not None:  # a workload of this home with no record
            if not force:
                raise InstanceConflict(
                    f"{name} is a workload that runs with no record",
                    hint=f"`las stop {name}` or `las rm -f {name}` ends it",
                )
            return RemoveOutcome(name=name, message=rt.end_unknown(unknown))
        rt.remove(name, purge=purge, force=force)
        self._flush()
        return RemoveOutcome(name=name)

    # --- views -----------------------------------------------------------------------------

    def ps(self, all_: bool = False) -> list[InstanceSummary]:
        items = self.rt.ps(all_)
        self._flush()
        return [
            InstanceSummary(
                **{**it, "started_at": iso(it["started_at"]), "finished_at": iso(it["finished_at"])}
            )
            for it in items
        ]

    def inspect(self, name: str) -> InstanceDetail:
        from localaistack.masking import masked
        from localaistack.runtime.logs.reader import format_record, tail_records
        from localaistack.store import secrets

        rt = self.rt
        rt.reconcile(read_only=True)
        self._flush()
        inst = rt.require_instance(name)
        plan = rt.plan_of(name)
        runs = rt.run_rows(name)
        transitions = {r.run_id: rt.store.transitions_of(r.run_id) for r in runs}
        current = next((r for r in runs if r.run_id == inst.current_run), None)
        limits = rt.limits(plan, current)
        security = rt.security(plan)
        last_lines: list[str] = []
        if current is not None and current.state == "failed":
            hidden = secrets.read(self.home, name) or {"values": []}  # the workload may print them
            last_lines = [
                (
                    line  # las's own note: composed from the shown plan
                    if rec.stream == "L"
                    else secrets.mask(line, hidden["values"])  # the workload's output, quoted
                ).rstrip("\n")
                for rec in tail_records(Path(current.log_path), 20)
                for line in [format_record(rec, False).decode("utf-8", "replace")]
            ]
        return InstanceDetail.model_validate(
            {
                "name": name,
                "module": inst.module,
                "mode": inst.mode,
                "state": current.state if current else "created",
                "reason": current.reason if current else None,
                "health": current.health if current else "unknown",
                "probes": [
                    {**pr, "at": iso(pr["at"])}
                    for pr in (json.loads(current.probes) if current and current.probes else [])
                ],
                "created_at": iso(inst.created_at),
                "plan": masked(plan.model_dump(mode="json")),  # its shown form
                "runs": [
                    {
                        **_run_dict(r),
                        "transitions": [
                            {
                                "from": t.from_state,
                                "to": t.to_state,
                                "at": iso(t.at),
                                "reason": t.reason,
                            }
                            for t in transitions[r.run_id]
                        ],
                    }
                    for r in runs
                ],
                "limits": limits,
                "security": security,
                "last_log_lines": last_lines,
            }
        )

    def logs(
        self,
        name: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        run_id: str | None = None,
        timestamps: bool = False,
    ) -> Iterator[bytes]:
        """The run is looked up now (an unknown one raises here, before the first byte)."""
        from localaistack.runtime.logs.reader import (
            follow_records,
            format_records,
            iter_records,
            tail_records,
        )

        if tail is not None and tail < 0:
            raise UsageError("--tail must not be negative")
        rt = self.rt
        rt.reconcile(read_only=True)
        self._flush()
        row = rt.find_run(name, run_id)
        path = Path(row.log_path)
        if follow:
            current = str(row.run_id)
            records = follow_records(path, stop=lambda: not rt.is_active(current), tail=tail)
        elif tail is not None:
            records = iter(tail_records(path, tail))
        else:
            records = iter_records(path)
        # A partial line (no newline: the end of a stream, or cut) followed by a record of
        # another stream, las's own note included, ends with a newline first.
        return format_records(records, timestamps)

    def events(
        self, *, after: int = 0, tail: int | None = None, follow: bool = False
    ) -> Iterator[EventInfo]:
        if tail is not None and not 0 <= tail <= _MAX_ID:
            raise UsageError(f"--tail must be a number of events from 0 to {_MAX_ID}")
        if not 0 <= after <= _MAX_ID:
            raise UsageError(f"after must be an event id from 0 to {_MAX_ID}")
        rt = self.rt
        rt.reconcile(read_only=True)
        self._flush()
        rows = rt.store.events(after, tail)
        return self._events(rows, after, follow)

    def _events(self, rows: list[Event], after: int, follow: bool) -> Iterator[EventInfo]:
        last = after
        for ev in rows:
            last = ev.id
            yield event_info(ev)
        if not follow:
            return
        from localaistack.store.watch import ChangeWatcher

        rt = self.rt
        with ChangeWatcher(Path(rt.store.path)) as watcher:
            while True:
                # A commit wakes it at once; a run whose supervisor died commits nothing:
                # reconciling now and then records it (as `las ps` would).
                watcher.wait(0.5)
                rt.reconcile(read_only=True)
                for ev in rt.store.events(last):
                    last = ev.id
                    yield event_info(ev)


def _run_dict(row: Run) -> dict[str, Any]:
    return {
        "run_id": row.run_id,
        "attempt": row.attempt,
        "state": row.state,
        "exit_code": row.exit_code,
        "signal": row.signal,
        "reason": row.reason,
        "pid": row.pid,
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "log_path": row.log_path,
        "lines_dropped": row.lines_dropped,
    }
