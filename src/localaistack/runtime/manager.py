"""The runtime's entry point for the CLI: lifecycle of instances and their runs.

Every public method first reconciles (cheaply: one query and a few /proc reads), so the
state shown is the truth: a run whose supervisor died is recorded as such before anything
else is read.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from localaistack.errors import (
    ExecutionError,
    InstanceConflict,
    InstanceNotFound,
    NotSupported,
    RecoveryFailed,
    StoreError,
    UsageError,
)
from localaistack.runtime import backends, procs
from localaistack.runtime.backend import Handle, RunContext, Unrecorded
from localaistack.runtime.spawn import Pending, new_run_id
from localaistack.runtime.supervision import STOP_TIMEOUT_MAX, SparePool, Supervisors
from localaistack.store import secrets
from localaistack.store.db import (
    ACTIVE_STATES,
    Store,
    add_event,
    clear_admission,
    create_run,
    delete_instance,
    get_instance,
    get_run,
    handle_state,
    home_label,
    no_space,
    pending_admissions,
    set_run_state,
)
from localaistack.store.paths import ensure_home, private_dir
from localaistack.store.records import Instance, Run

if TYPE_CHECKING:
    from localaistack.plan import ExecutionPlan


ORPHAN_GRACE = 60.0  # seconds before an unclaimed labelled container is removed


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _last_log_time(path: str) -> str | None:
    """The time of the last line las captured for a run (where re-adoption resumes)."""
    from localaistack.runtime.logs.reader import tail_records

    records = [r for r in tail_records(path, 1) if r.ts]
    return records[-1].ts if records else None


def _why(exc: Exception) -> str:
    """A storage error's cause, in words."""
    return str(exc.message if isinstance(exc, StoreError) else exc)


class StartResult(NamedTuple):
    name: str
    run_id: str
    state: str
    pid: int | None
    reason: str | None
    log_path: str
    what: str  # how its backend names the run: "pid 123", "container 0123abcd4567"


class Runtime:
    """Executes plans for named instances. Holds one store connection."""

    def __init__(
        self, home: Path, store: Store | None = None, spares: SparePool | None = None
    ) -> None:
        self.home = ensure_home(home)
        self.store = store or Store(self.home / "state.db")
        self.supervisors = Supervisors(self.store, self.home)
        self.spares = spares  # a long-lived caller's supervisors spawned ahead (las serve)
        self._boot = procs.boot_id()
        # What a read-only command could not do (state not updated: disk full...), for the
        # CLI to print on stderr.
        self.warnings: list[str] = []
        if self.store.unwritable is not None:
            self._warn_not_updated(self.store.unwritable)
        if self.store.created:
            self._warn_unknown_at_creation()

    def _warn_unknown_at_creation(self) -> None:
        """A fresh state database, yet cgroups of this home's label hold live processes:
        the home was lost while they ran. Say so (of what the backends find without cost:
        containers are asked by `las ps --all`)."""
        label = home_label(self.store.path)
        live = [
            u.run_id
            for name in backends.REGISTRY
            for u in backends.get(name).unrecorded(label, set(), thorough=False)
        ]
        if live:
            self.warnings.append(
                f"a new state database was made in {self.home}, but {len(live)} workload(s) "
                "that las started for this home still run with no record "
                f"({', '.join('?' + r for r in sorted(live))}): see `las ps --all`; "
                "`las stop ?RUN_ID` ends one"
            )

    def __repr__(self) -> str:
        return f"<Runtime home={self.home}>"

    def close(self) -> None:
        self.store.close()

    # --- reconcile -----------------------------------------------------------------------

    def reconcile(self, *, read_only: bool = False) -> int:
        """Record runs whose supervisor is gone; returns how many were found.

        A native run whose supervisor died is over (its workload died with it). A container
        outlives its supervisor: a running one is re-adopted by a new supervisor, an exited
        one is recorded with its exit code, a vanished one ends ``failed: lost``.

        ``read_only`` (`las ps`, `inspect`, `logs`): when the store cannot be written (disk
        full, read-only filesystem) the command goes on with the state as recorded, and
        ``warnings`` says that it could not be updated and why.
        """
        if not read_only:
            return self._reconcile()
        try:
            found = self._reconcile()
        except StoreError as exc:
            if exc.cause not in ("full", "readonly", "io", "permission", "busy"):
                raise
            self._warn_not_updated(exc)
            return 0
        if not self.warnings and no_space(str(self.store.path)):  # one statvfs
            self.warnings.append(
                f"the disk that holds {self.home} is full: supervisors record what happens "
                "once there is room again, so the state shown may be behind"
            )
        return found

    def _warn_not_updated(self, exc: StoreError) -> None:
        why = {
            "full": "the disk is full",
            "readonly": "the filesystem is read-only",
            "permission": "permission is denied",
            "busy": "the database is busy",
            "io": "of an I/O error",
        }.get(exc.cause, "the store cannot be written")
        text = f"state could not be updated because {why}: {exc.message}; shown as last recorded"
        if text not in self.warnings:
            self.warnings.append(text)

    def _reconcile(self) -> int:
        self._undo_abandoned_admissions()
        suspects = [r for r in self.store.active_runs() if not self._alive(r)]
        if not suspects:
            return 0
        found = 0
        outlived = []  # runs whose backend lets them outlive their supervisor
        with self.store.transaction() as c:
            for r in suspects:
                row = get_run(c, r.run_id)
                if row is None or row.state not in ACTIVE_STATES or self._alive(row):
                    continue  # it ended properly, or came alive, since the first look
                found += 1
                recoverable = backends.get(row.backend).capabilities.recover
                if recoverable and row.handle and row.boot_id == self._boot:
                    outlived.append(row)
                else:
                    self.supervisors.mark_lost(c, row, self._boot)
        for row in outlived:
            self._recover(row)
        return found

    def _undo_abandoned_admissions(self) -> None:
        """A process that admitted an instance and died before creating its run (a `las run`
        or a `las serve` killed between the two transactions): a new instance it created
        is removed, an existing one's hold released, as if the request never happened."""
        dead = [
            (name, has_runs)
            for name, has_runs, pid, start in self.store.pending_admissions()
            if not procs.is_same_process(pid, start)
        ]
        if not dead:
            return
        with self.store.transaction() as c:
            still = {name: (pid, start) for name, _, pid, start in pending_admissions(c)}
            for name, has_runs in dead:
                if name not in still or procs.is_same_process(*still[name]):
                    continue  # its run was created, or another process admitted it since
                if has_runs:
                    clear_admission(c, name)
                    continue
                delete_instance(c, name)
                secrets.remove(self.home, name)
                add_event(
                    c,
                    "removed",
                    f"instance removed: the las process (pid {still[name][0]}) that created "
                    "it exited before starting it; nothing ran",
                    instance=name,
                )

    def _recover(self, run: Run) -> None:
        """A run that outlived its supervisor: a new supervisor re-attaches to it (through
        its backend's ``recover``) while it runs; else its exit, or why it cannot be told
        (``RecoveryFailed``: then the run gets a synthetic exit, failed and lost)."""
        plan = self.stored_plan(run.instance)
        ctx = RunContext(
            run_id=str(run.run_id),
            instance=str(run.instance),
            plan=plan,
            shown=plan,
            db_path=str(self.store.path),
            shim_pid=os.getpid(),
            own_pids=set(),
        )
        backend = backends.create(str(run.backend), ctx)
        try:
            status = backend.recover(Handle.load(run.handle, str(run.backend)))
        except RecoveryFailed as exc:
            self.fail_run(run.run_id, f"lost: its supervisor died and {exc.message}")
            return
        if status.running:
            since = _last_log_time(run.log_path) or _iso(float(run.started_at or time.time()))
            pending = self.supervisors.claim(run, ("--adopt", str(run.run_id), "--since", since))
            if pending is None:
                return  # another las command re-adopted it meanwhile
            self.record_event(
                run.instance,
                "re-adopted",
                f"{status.detail} still runs; a new supervisor follows it (logs since {since})",
            )
            self.supervisors.start(run, pending=pending)
            return
        backend.cleanup()
        code = status.exit.code if status.exit else None
        ok = code == 0
        reason = (
            f"exited with code {code} while its supervisor was gone (output after the "
            "supervisor died is not in the log)"
        )
        with self.store.transaction() as c:
            set_run_state(c, run.run_id, "stopped" if ok else "failed", reason, exit_code=code)

    def _alive(self, run: Run) -> bool:
        if run.backend in backends.REGISTRY:
            return self.supervisors.is_alive(run, self._boot)  # every run has a supervisor
        raise NotSupported(f"unknown backend {run.backend!r} for run {run.run_id}")

    def sweep_orphans(self, grace: float | None = None) -> list[str]:
        """Leftovers of this home's runs (containers) that no active run points to.

        Each is reported (an event once removed); one older than ``grace`` seconds is
        removed. Only the backends this home has used are asked (asking an engine costs).
        """
        if grace is None:
            grace = float(os.environ.get("LAS_ORPHAN_GRACE", ORPHAN_GRACE))
        used = self.store.backends_used()
        if not used:
            return []
        active = {r.run_id for r in self.store.active_runs()}
        label = home_label(self.store.path)
        notes = []
        for name in sorted(used & backends.REGISTRY.keys()):
            for orphan in backends.get(name).sweep_orphans(label, active, grace):
                notes.append(orphan.note)
                if orphan.removed:
                    self.record_event(orphan.instance, "orphan", orphan.note)
        return notes

    # --- lookups -------------------------------------------------------------------------

    def require_instance(self, name: str) -> Instance:
        row = self.store.instance(name)
        if row is None:
            known = [r.name for r in self.store.instances()]
            raise InstanceNotFound(
                f"no instance named {name!r}",
                hint=("instances: " + ", ".join(known)) if known else "see `las ps --all`",
            )
        return row

    def current_run(self, name: str) -> Run | None:
        inst = self.require_instance(name)
        return self.store.run(inst.current_run) if inst.current_run else None

    def stored_plan(self, name: str) -> dict[str, Any]:
        """The instance's plan as stored (as shown: secrets masked), as JSON data."""
        return secrets.stored_plan(self.home, name, self.require_instance(name).plan)

    def plan_of(self, name: str) -> ExecutionPlan:
        from localaistack.plan import ExecutionPlan

        return ExecutionPlan.model_validate(self.stored_plan(name))  # ValueError: it does not fit

    # --- lifecycle -----------------------------------------------------------------------

    def prepare_start(self) -> Pending:
        """A supervisor for the next ``start``, started now so that it gets ready while the
        caller plans and admits. Give it to ``start``, or to ``cancel_start``."""
        spare = self.spares.take() if self.spares is not None else None
        return spare or self.supervisors.spawn(new_run_id())

    def cancel_start(self, pending: Pending) -> None:
        """The supervisor from ``prepare_start`` exits without running anything."""
        self.supervisors.cancel(pending)
        if self.spares is not None:
            self.spares.refill()  # it may have been the spare

    def start(
        self, name: str, *, wait_healthy: bool = False, pending: Pending | None = None
    ) -> StartResult:
        """Start a new run of an existing instance; blocks until it runs or fails.

        With ``wait_healthy`` it blocks until the health probe succeeds or the run fails.
        ``pending`` (from ``prepare_start``) is the supervisor to use; it is let go or
        cancelled whatever happens.

        Raises:
            InstanceNotFound: no such instance.
            InstanceConflict: the instance has an active run (started twice concurrently,
                or already running).
        """
        if pending is None and self.spares is not None:
            pending = self.spares.take()
        try:
            self.reconcile()
            plan_data = self.stored_plan(name)
            run_id = pending.run_id if pending else new_run_id()
            run = self._create_run(name, run_id, plan_data, pending)
        except BaseException:
            if pending is not None:
                self.cancel_start(pending)
            raise
        has_health = plan_data.get("health") is not None
        try:
            message = self.supervisors.start(
                run, wait_healthy=wait_healthy and has_health, pending=pending
            )
        finally:
            if self.spares is not None:
                self.spares.refill()  # for the next start, now that this one is done
        current = self.require_instance(name).current_run or run_id  # restarts move it
        final = self.store.run(current)
        assert final is not None
        pid = message.get("pid") or final.pid
        what = backends.get(final.backend).describe_run(handle_state(final.handle), pid)
        return StartResult(
            name,
            current,
            str(message.get("state", final.state)),
            pid,
            message.get("reason") or final.reason,
            str(run.log_path),
            what,
        )

    def _create_run(
        self, name: str, run_id: str, plan_data: dict[str, Any], pending: Pending | None
    ) -> Run:
        backend = backends.name_for(plan_data)
        log_path = private_dir(self.home, "logs", name) / f"{run_id}.log"
        sup_pid, sup_start = (pending.pid, pending.start) if pending else (None, None)
        with self.store.transaction() as c:
            inst = get_instance(c, name)
            if inst is None:
                raise InstanceNotFound(f"no instance named {name!r}")
            if inst.current_run:
                cur = get_run(c, inst.current_run)
                if cur is not None and cur.state in ACTIVE_STATES:
                    raise InstanceConflict(
                        f"instance {name!r} is already {cur.state}",
                        hint=f"`las stop {name}` first, or `las restart {name}`",
                    )
            me = os.getpid()
            create_run(
                c,
                run_id=run_id,
                instance=name,
                backend=backend,
                boot_id=self._boot,
                log_path=str(log_path),
                reason="requested",
                owner_pid=me,
                owner_start=procs.start_time(me),
                sup_pid=sup_pid,
                sup_start=sup_start,
            )
        run = self.store.run(run_id)
        assert run is not None
        return run

    def stop(
        self, name: str, timeout: float | None = None, notes: list[str] | None = None
    ) -> Run | None:
        """Stop the instance's active run; returns the run as recorded at the end.

        Idempotent: an instance that is not running is left as it is. A store that cannot
        be written (a full disk) never keeps the signal from the workload: what could not
        be recorded is said in ``notes``.

        Raises:
            ExecutionError: the run is still stopping when the wait ends (the supervisor
                did not end it within the stop timeout plus a margin).
            StoreError: the workload has ended, but the store could not record it.
        """
        problems: list[str] = []
        try:
            self.reconcile()
        except StoreError as exc:
            problems.append(_why(exc))
        run = self.current_run(name)
        if run is None or run.state not in ACTIVE_STATES:
            return run
        plan = self.require_instance(name).plan_data()
        plan_timeout = float(plan["stop"]["timeout"])
        ended, unrecorded = self.supervisors.stop(run, timeout, plan_timeout)
        if unrecorded is not None:
            problems.append(unrecorded)
            if notes is not None:
                notes.append(
                    f"the stop request could not be recorded in the state database "
                    f"({unrecorded}); the supervisor was signalled all the same"
                )
        try:
            self.reconcile()
        except StoreError as exc:
            problems.append(_why(exc))
        row = self.store.run(run.run_id)
        if row is None or row.state not in ACTIVE_STATES:
            return row
        if ended and problems:
            raise StoreError(
                f"{name}: the workload was stopped, but the state database "
                f"({self.store.path}) could not record it: {problems[-1]}",
                hint=f"free space where LAS_HOME is ({self.home}); the next las command "
                "records the end",
            )
        waited = timeout if timeout is not None else plan_timeout
        raise ExecutionError(
            f"{name} is still {row.state}: run {row.run_id} did not end within "
            f"{min(waited, STOP_TIMEOUT_MAX):g}s (the stop timeout) and the margin "
            f"after it; its supervisor is pid {row.sup_pid}",
            hint=f"`las stop {name} --timeout 0` kills it now; `las ps` shows when it has ended",
        )

    def remove(self, name: str, *, purge: bool = False, force: bool = False) -> None:
        """Forget an instance (its logs stay unless ``purge``); refuses a running one."""
        self.reconcile()
        run = self.current_run(name)
        if run is not None and run.state in ACTIVE_STATES:
            if not force:
                raise InstanceConflict(
                    f"instance {name!r} is {run.state}",
                    hint=f"`las stop {name}` first, or `las rm -f {name}`",
                )
            self.stop(name)
        with self.store.transaction() as c:
            delete_instance(c, name)
            add_event(
                c, "removed", f"instance removed{' with its logs' if purge else ''}", instance=name
            )
        secrets.remove(self.home, name)
        if purge:
            import shutil

            shutil.rmtree(self.home / "logs" / name, ignore_errors=True)

    # --- views ---------------------------------------------------------------------------

    def ps(self, all_: bool = False) -> list[dict[str, Any]]:
        """The instances (active ones; ``all_``: every one, and the workloads of this home
        that run with no record: see ``unknown_workloads``)."""
        self.reconcile(read_only=True)
        try:
            self.sweep_orphans()
        except StoreError as exc:  # its event could not be written: removal is retried
            self._warn_not_updated(exc)
        out = []
        for inst, run in self.store.instances_with_runs():
            state = run.state if run is not None else "created"
            if not all_ and state not in ACTIVE_STATES:
                continue
            active = state in ACTIVE_STATES
            plan = inst.plan_data()
            out.append(
                {
                    "name": inst.name,
                    "module": inst.module,
                    "mode": inst.mode,
                    "state": state,
                    "health": (run.health or "unknown") if run is not None and active else "",
                    "pid": run.pid if run is not None and active else None,
                    "run_id": run.run_id if run is not None else None,
                    "started_at": run.started_at if run is not None else None,
                    "finished_at": run.finished_at if run is not None else None,
                    "reason": run.reason if run is not None else None,
                    "ports": [
                        f"{p['host_ip']}:{p['host_port']}->{p['name']}" for p in plan["ports"]
                    ],
                    "gpus": [g["uuid"] for g in plan["gpus"]],
                }
            )
        if all_:
            out.extend(self.unknown_workloads())
        return out

    # --- workloads with no record ----------------------------------------------------------

    def unknown_workloads(self, costly: bool = True) -> list[dict[str, Any]]:
        """Workloads of this home that run although no active run records them.

        Each backend finds its own (``Backend.unrecorded``: native runs by las's cgroups
        named for this home's label, containers by their ``las.home`` label); a home
        removed or replaced while they ran leaves such. Each is a ``ps`` row named
        ``?RUN_ID``, state ``orphaned``; `las stop ?RUN_ID` (or `las rm -f ?RUN_ID`) ends
        it. ``costly``: ask the backends whose asking costs (see ``_thorough``).
        """
        label = home_label(self.store.path)
        active = {str(r.run_id) for r in self.store.active_runs()}
        used = self.store.backends_used()
        out: list[dict[str, Any]] = []
        now = time.time()
        for name in backends.REGISTRY:
            thorough = costly and self._thorough(name, used)
            for u in backends.get(name).unrecorded(label, active, thorough):
                row = self.store.run(u.run_id)
                if row is not None and row.finished_at and now - float(row.finished_at) < 5:
                    continue  # its supervisor recorded the end and is emptying it now
                out.append(self._unknown_row(u, row))
        return out

    @staticmethod
    def _thorough(name: str, used: set[str]) -> bool:
        """Whether to ask backend ``name`` where asking costs: when this home's runs used
        it, or when the home has no run at all (a fresh database: a lost home's workloads
        may be anywhere), so that `ps --all` of a home that ran only natively asks no
        engine."""
        return not used or name in used

    def _unknown_row(self, u: Unrecorded, row: Run | None) -> dict[str, Any]:
        known = f"its run is recorded {row.state}" if row is not None else "no record knows it"
        return {
            "name": f"?{u.run_id}",
            "module": str(row.instance) if row is not None else "?",
            "mode": u.backend,
            "state": "orphaned",
            "health": "",
            "pid": u.pid,
            "run_id": u.run_id,
            "started_at": None,
            "finished_at": None,
            "reason": f"runs although {known} ({u.what}); `las stop ?{u.run_id}` ends it",
            "ports": [],
            "gpus": [],
        }

    def unknown_ref(self, ref: str) -> str | None:
        """The run id that ``ref`` (``?RUN_ID``, or a run id no instance is named) names
        among the workloads with no record, or None."""
        run_id = ref[1:] if ref.startswith("?") else ref
        if not run_id or (not ref.startswith("?") and self.store.instance(ref) is not None):
            return None
        if len(run_id) != 12 or any(ch not in "0123456789abcdef" for ch in run_id):
            return None
        return run_id if any(u["run_id"] == run_id for u in self.unknown_workloads()) else None

    def end_unknown(self, run_id: str, timeout: float | None = None) -> str:
        """End a workload with no record (``unknown_workloads``) through the backend that
        runs it: the stop signal, a kill after ``timeout`` (default 10 s), what it leaves
        removed. Returns what was done."""
        wait = 10.0 if timeout is None else timeout
        label = home_label(self.store.path)
        used = self.store.backends_used()
        for name in backends.REGISTRY:
            done = backends.get(name).end_unrecorded(
                label, run_id, wait, self._thorough(name, used)
            )
            if done is not None:
                return done
        raise InstanceNotFound(
            f"no workload with no record is known as ?{run_id}", hint="see `las ps --all`"
        )

    def run_rows(self, name: str) -> list[Run]:
        self.require_instance(name)
        return self.store.runs_of(name)

    def find_run(self, name: str, run_id: str | None) -> Run:
        """The named run of an instance (a unique prefix is enough), or its current run."""
        runs = self.run_rows(name)
        if not runs:
            raise InstanceNotFound(f"instance {name!r} has no runs yet", hint=f"`las start {name}`")
        if run_id is None:
            inst = self.require_instance(name)
            return next(r for r in runs if r.run_id == inst.current_run)
        matches = [r for r in runs if str(r.run_id).startswith(run_id)]
        if len(matches) != 1:
            ids = ", ".join(r.run_id for r in runs)
            raise UsageError(
                f"{'no' if not matches else 'more than one'} run of {name!r} matches {run_id!r}",
                hint=f"runs: {ids}",
            )
        return matches[0]

    def is_active(self, run_id: str) -> bool:
        self.reconcile(read_only=True)
        row = self.store.run(run_id)
        return row is not None and row.state in ACTIVE_STATES

    def limits(self, plan: ExecutionPlan, run: Run | None) -> dict[str, str]:
        """What enforces each limit of the plan, in words (its backend's)."""
        state = handle_state(run.handle if run is not None else None)
        return backends.get(backends.name_of(plan)).describe_limits(plan, state)

    @staticmethod
    def security(plan: ExecutionPlan) -> dict[str, Any]:
        """The isolation a run gets, as `las inspect` shows it (engine inspect agrees)."""
        return backends.get(backends.name_of(plan)).describe_security(plan)

    def preflight(self, plan: ExecutionPlan) -> None:
        """Its backend's checks, before anything is created (a container's: its engine
        answers, has the image, the volumes' sources exist).

        Raises:
            StartFailed: the run could not start.
        """
        backends.get(backends.name_of(plan)).preflight(plan)

    def record_event(self, name: str, type_: str, message: str) -> None:
        with self.store.transaction() as c:
            add_event(c, type_, message, instance=name)

    def fail_run(self, run_id: str, reason: str) -> None:
        with self.store.transaction() as c:
            set_run_state(c, run_id, "failed", reason)
