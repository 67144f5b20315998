"""Lifecycle commands: run, start, stop, restart, rm, ps, inspect, logs, events."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from localaistack.cli.launch import interrupted, report_start, run_instance
from localaistack.cli.output import table, warn
from localaistack.cli.planning import plan_options
from localaistack.errors import InstanceConflict, UsageError

if TYPE_CHECKING:
    from localaistack.store.records import Run


def _runtime() -> Any:
    from localaistack.runtime.manager import Runtime
    from localaistack.store.paths import las_home

    rt = Runtime(las_home())
    _warnings(rt)  # a new home that finds workloads of a lost one running says so
    return rt


def _warnings(rt: Any) -> None:
    """What the runtime could not do or found amiss (state not updated: disk full), on
    stderr, each once."""
    warn(rt.warnings)
    rt.warnings.clear()


def _ts(value: float | None) -> str:
    if value is None:
        return ""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _ago(value: float | None) -> str:
    if value is None:
        return ""
    secs = max(0.0, time.time() - value)
    if secs < 60:
        return f"{secs:.0f}s ago"
    if secs < 3600:
        return f"{secs / 60:.0f}m ago"
    if secs < 86400:
        return f"{secs / 3600:.0f}h ago"
    return f"{secs / 86400:.0f}d ago"


DETACH_HELP = "Return once the workload runs, without waiting for its health probe."


@click.command()
@click.argument("module")
@plan_options
@click.option("--name", help="Instance name (default: the module's name).")
@click.option("--detach", "-d", is_flag=True, help=DETACH_HELP)
def run(
    module: str,
    mode: str | None,
    sets: tuple[str, ...],
    hardware_file: Path | None,
    policy_file: Path | None,
    name: str | None,
    detach: bool,
) -> None:
    """Plan MODULE (catalog name or manifest path) and start it as an instance.

    Waits until the workload is healthy (when it declares a health probe; running
    otherwise) or has failed (non-zero exit, with the reason). --detach returns at running.
    The hardware probe is kept while nothing it was probed from changes (docs/planning.md;
    LAS_PROBE_CACHE=0 turns that off).
    """
    if hardware_file is not None:
        raise UsageError(
            "--hardware plans for another machine; `las run` runs on this one",
            hint="use `las plan --hardware FILE` to see such a plan",
        )
    run_instance(module, mode, sets, policy_file, name, detach)


def _readmit(rt: Any, name: str) -> None:
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
    from localaistack.store.paths import las_home

    plan = rt.plan_of(name)
    capacity = Capacity.of(
        hardware.detect_hardware(probe_engines=False), load_policy(None, las_home())
    )
    if plan.gpus:  # the driver frees VRAM after the process is gone: wait for it (bounded)
        targets = release_targets(plan, capacity)
        ok, message = wait_gpu_release([g.uuid for g in plan.gpus], targets)
        if not ok:
            warn([message])
    notes: list[str] = []
    readmit(
        rt.store,
        name,
        plan,
        capacity=capacity,
        live=live_usage(capacity, store=rt.store),
        notes=notes,
    )
    warn(notes)


@click.command()
@click.argument("name")
@click.option("--detach", "-d", is_flag=True, help=DETACH_HELP)
def start(name: str, detach: bool) -> None:
    """Start a stopped instance again with its plan (a new run; a fresh restart budget)."""
    rt = _runtime()
    try:
        rt.reconcile()
        _readmit(rt, name)
        report_start(rt, _start_waiting(rt, name, detach))
    finally:
        rt.close()


def _start_waiting(rt: Any, name: str, detach: bool) -> Any:
    """``rt.start``; a Ctrl-C while it waits says what goes on (exit 130)."""
    try:
        return rt.start(name, wait_healthy=not detach)
    except KeyboardInterrupt:
        raise interrupted(rt, name) from None


def _stop_line(name: str, row: Any) -> str:
    if row is None:
        return f"{name}: has no run"
    return f"{name}: {row.state} ({row.reason})"


STOP_TIMEOUT_HELP = (
    "Seconds to wait after the stop signal before SIGKILL, from 0 to 3600 (default: the "
    "plan's). Another stop while one waits: the earliest deadline wins."
)


def _check_stop_timeout(timeout: float | None) -> None:
    from localaistack.runtime.supervision import STOP_TIMEOUT_MAX

    if timeout is not None and not 0 <= timeout <= STOP_TIMEOUT_MAX:  # (NaN fails too)
        raise UsageError(
            f"--timeout {timeout:g} is not a number of seconds from 0 to {STOP_TIMEOUT_MAX:g}",
            hint=f"the longest stop timeout is {STOP_TIMEOUT_MAX:g}s (1 hour); 0 kills at once",
        )


def _stop_waiting(rt: Any, name: str, timeout: float | None) -> Any:
    """``rt.stop``, with what could not be recorded said on stderr (before any error)."""
    notes: list[str] = []
    try:
        return rt.stop(name, timeout, notes)
    finally:
        warn(notes)


@click.command()
@click.argument("name")
@click.option("--timeout", "-t", type=float, default=None, help=STOP_TIMEOUT_HELP)
def stop(name: str, timeout: float | None) -> None:
    """Stop an instance: its stop signal, then SIGKILL to the whole group after the timeout.

    Returns once the run has ended (exit 0), or exits 4 saying it is still stopping (its
    supervisor did not end it within the timeout and a margin). The workload is signalled
    even when the state database cannot be written (a full disk): then exit 5, saying so.
    """
    _check_stop_timeout(timeout)
    rt = _runtime()
    try:
        unknown = rt.unknown_ref(name)  # ?RUN_ID: a workload of this home with no record
        if unknown is not None:
            click.echo(rt.end_unknown(unknown, timeout))
            return
        click.echo(_stop_line(name, _stop_waiting(rt, name, timeout)))
    finally:
        rt.close()


@click.command()
@click.argument("name")
@click.option("--timeout", "-t", type=float, default=None, help=STOP_TIMEOUT_HELP)
@click.option("--detach", "-d", is_flag=True, help=DETACH_HELP)
def restart(name: str, timeout: float | None, detach: bool) -> None:
    """Stop an instance (if running) and start it again (a fresh restart budget)."""
    _check_stop_timeout(timeout)
    rt = _runtime()
    try:
        _stop_waiting(rt, name, timeout)
        _readmit(rt, name)
        report_start(rt, _start_waiting(rt, name, detach))
    finally:
        rt.close()


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--purge", is_flag=True, help="Also delete the instance's log files.")
@click.option("--force", "-f", is_flag=True, help="Stop the instance first if it is running.")
def rm(names: tuple[str, ...], purge: bool, force: bool) -> None:
    """Forget stopped instances (logs are kept unless --purge)."""
    rt = _runtime()
    try:
        for name in names:
            unknown = rt.unknown_ref(name) if name.startswith("?") else None
            if unknown is not None:  # a workload of this home with no record
                if not force:
                    raise InstanceConflict(
                        f"{name} is a workload that runs with no record",
                        hint=f"`las stop {name}` or `las rm -f {name}` ends it",
                    )
                click.echo(rt.end_unknown(unknown))
                continue
            rt.remove(name, purge=purge, force=force)
            click.echo(name)
    finally:
        rt.close()


@click.command()
@click.option("--all", "-a", "all_", is_flag=True, help="Include stopped and failed instances.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def ps(all_: bool, as_json: bool) -> None:
    """List instances (running ones; --all for every instance)."""
    rt = _runtime()
    try:
        items = rt.ps(all_)
        _warnings(rt)
    finally:
        rt.close()
    if as_json:
        shown = [
            {
                **it,
                "started_at": _ts(it["started_at"]) or None,
                "finished_at": _ts(it["finished_at"]) or None,
            }
            for it in items
        ]
        click.echo(json.dumps(shown, indent=2))
        return
    rows = []
    for it in items:
        when = (
            _ago(it["started_at"])
            if it["state"] in ("running", "stopping")
            else _ago(it["finished_at"])
        )
        rows.append(
            [
                it["name"],
                it["module"],
                it["mode"],
                it["state"],
                it["health"],
                str(it["pid"] or ""),
                ", ".join(it["ports"]),
                when,
                (it["reason"] or "") if it["state"] in ("failed", "stopped", "orphaned") else "",
            ]
        )
    click.echo(
        table(
            ["name", "module", "mode", "state", "health", "pid", "ports", "since", "reason"], rows
        )
    )


def _run_dict(row: Run) -> dict[str, Any]:
    return {
        "run_id": row.run_id,
        "attempt": row.attempt,
        "state": row.state,
        "exit_code": row.exit_code,
        "signal": row.signal,
        "reason": row.reason,
        "pid": row.pid,
        "started_at": _ts(row.started_at) or None,
        "finished_at": _ts(row.finished_at) or None,
        "log_path": row.log_path,
        "lines_dropped": row.lines_dropped,
    }


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def inspect(name: str, as_json: bool) -> None:
    """Show an instance: state, reason, plan, every run, limits, and the last log lines."""
    from localaistack.cli.render import masked_plan_dict, plan_lines
    from localaistack.runtime.logs.reader import format_record, tail_records
    from localaistack.store import secrets

    rt = _runtime()
    try:
        rt.reconcile(read_only=True)
        _warnings(rt)
        inst = rt.require_instance(name)
        plan = rt.plan_of(name)
        runs = rt.run_rows(name)
        transitions = {r.run_id: rt.store.transitions_of(r.run_id) for r in runs}
        current_row = next((r for r in runs if r.run_id == inst.current_run), None)
        limits = rt.limits(plan, current_row)
        security = rt.security(plan)
    finally:
        rt.close()
    current = next((r for r in runs if r.run_id == inst.current_run), None)
    last_lines: list[str] = []
    if current is not None and current.state == "failed":
        hidden = secrets.read(rt.home, name) or {"values": []}  # the workload may print them
        last_lines = [
            (
                line  # las's own note: composed from the shown plan
                if rec.stream == "L"
                else secrets.mask(line, hidden["values"])  # the workload's output, quoted
            ).rstrip("\n")
            for rec in tail_records(Path(current.log_path), 20)
            for line in [format_record(rec, False).decode("utf-8", "replace")]
        ]
    data = {
        "name": name,
        "module": inst.module,
        "mode": inst.mode,
        "state": current.state if current else "created",
        "reason": current.reason if current else None,
        "health": current.health if current else "unknown",
        "probes": [
            {**pr, "at": _ts(pr["at"])}
            for pr in (json.loads(current.probes) if current and current.probes else [])
        ],
        "created_at": _ts(inst.created_at),
        "plan": masked_plan_dict(plan),
        "runs": [
            {
                **_run_dict(r),
                "transitions": [
                    {
                        "from": t.from_state,
                        "to": t.to_state,
                        "at": _ts(t.at),
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
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"Instance {name} ({inst.module}, {inst.mode}): {data['state']}")
    if data["reason"]:
        click.echo(f"  reason: {data['reason']}")
    click.echo(f"  health: {data['health']}")
    for pr in data["probes"][-5:]:
        latency = f"{pr['latency_ms']:.1f} ms"
        click.echo(f"    {pr['at']}  {pr['outcome']:<8} {latency:>10}  {pr['message']}")
    click.echo("Runs:")
    for r in data["runs"]:
        exit_ = (
            f"exit {r['exit_code']}"
            if r["exit_code"] is not None
            else (f"signal {r['signal']}" if r["signal"] else "")
        )
        click.echo(
            f"  {r['run_id']}  #{r['attempt']}  {r['state']:<8} {exit_:<10} "
            f"{r['started_at'] or '-'} .. {r['finished_at'] or '-'}"
        )
        if r["reason"]:
            click.echo(f"      {r['reason']}")
        if r["lines_dropped"]:
            click.echo(f"      {r['lines_dropped']} log line(s) could not be written")
        click.echo(f"      log: {r['log_path']}")
    click.echo("Limits:")
    for k, v in limits.items():
        click.echo(f"  {k}: {v}")
    click.echo("Security:")
    for k, v in security.items():
        click.echo(f"  {k}: {v}")
    click.echo("")
    click.echo("\n".join(plan_lines(plan)))
    if last_lines:
        click.echo("")
        click.echo(f"Last {len(last_lines)} log lines:")
        for line in last_lines:
            click.echo(f"  {line}")


@click.command()
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends.")
@click.option("--tail", "-n", type=int, default=None, help="Only the last N lines.")
@click.option("--run", "run_id", help="Show this run (id or unique prefix), not the current one.")
@click.option("--timestamps", "-t", is_flag=True, help="Show each line's time and stream.")
def logs(name: str, follow: bool, tail: int | None, run_id: str | None, timestamps: bool) -> None:
    """Show an instance's output, as the workload wrote it (current run by default)."""
    from localaistack.runtime.logs.reader import (
        follow_records,
        format_records,
        iter_records,
        tail_records,
    )

    if tail is not None and tail < 0:
        raise UsageError("--tail must not be negative")
    rt = _runtime()
    try:
        rt.reconcile(read_only=True)
        _warnings(rt)
        row = rt.find_run(name, run_id)
        path = Path(row.log_path)
        out = sys.stdout.buffer
        if follow:
            current = str(row.run_id)
            records = follow_records(path, stop=lambda: not rt.is_active(current), tail=tail)
        elif tail is not None:
            records = iter(tail_records(path, tail))
        else:
            records = iter_records(path)
        try:
            # A partial line (no newline: the end of a stream, or cut) followed by a record
            # of another stream, las's own note included, ends with a newline first.
            for chunk in format_records(records, timestamps):
                out.write(chunk)
                if follow:
                    out.flush()
        except BrokenPipeError:
            pass
        out.flush()
    finally:
        rt.close()


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--tail", "-n", type=int, default=None, help="Only the last N events.")
def events(follow: bool, as_json: bool, tail: int | None) -> None:
    """Show the event log (state changes, creations, removals)."""
    rt = _runtime()
    try:
        rt.reconcile(read_only=True)
        _warnings(rt)
        last = 0
        rows = rt.store.events(0, tail)
        while True:
            for ev in rows:
                last = ev.id
                if as_json:
                    click.echo(
                        json.dumps(
                            {
                                "id": ev.id,
                                "at": _ts(ev.at),
                                "instance": ev.instance,
                                "run_id": ev.run_id,
                                "type": ev.type,
                                "message": ev.message,
                            }
                        )
                    )
                else:
                    click.echo(f"{_ts(ev.at)}  {ev.instance or '-':<16} {ev.type:<10} {ev.message}")
            if not follow:
                break
            sys.stdout.flush()
            time.sleep(0.2)
            rt.reconcile(read_only=True)
            rows = rt.store.events(last)
    except KeyboardInterrupt:
        pass
    finally:
        rt.close()


COMMANDS = (run, start, stop, restart, rm, ps, inspect, logs, events)
