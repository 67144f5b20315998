"""Lifecycle commands: run, start, stop, restart, rm, ps, inspect, logs, events.

Each parses its arguments, calls the operations (in process, or a service: cli/session.py)
and formats what comes back."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

import click

from localaistack.cli.output import table
from localaistack.cli.planning import parse_sets, plan_options
from localaistack.cli.session import report_start, session
from localaistack.errors import UsageError
from localaistack.ops.api import EventInfo, RunRequest, StopOutcome


def _ago(value: str | None) -> str:
    """How long ago an ISO time (as the operations give it) was."""
    if not value:
        return ""
    secs = max(0.0, time.time() - datetime.fromisoformat(value).timestamp())
    if secs < 60:
        return f"{secs:.0f}s ago"
    if secs < 3600:
        return f"{secs / 60:.0f}m ago"
    if secs < 86400:
        return f"{secs / 3600:.0f}h ago"
    return f"{secs / 86400:.0f}d ago"


DETACH_HELP = "Return once the workload runs, without waiting for its health probe."

RESTART_POLICIES = ("never", "on-failure", "always", "unless-stopped")


@click.command()
@click.argument("module")
@plan_options
@click.option("--name", help="Instance name (default: the module's name).")
@click.option("--detach", "-d", is_flag=True, help=DETACH_HELP)
@click.option(
    "--restart",
    type=click.Choice(RESTART_POLICIES),
    help="Restart policy (default: the manifest's); always and unless-stopped also start "
    "it again when `las serve` starts (after a reboot).",
)
def run(
    module: str,
    mode: str | None,
    sets: tuple[str, ...],
    hardware_file: Path | None,
    policy_file: Path | None,
    name: str | None,
    detach: bool,
    restart: str | None,
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
    req = RunRequest(
        module=module,
        mode=mode,
        set=parse_sets(sets),
        name=name,
        detach=detach,
        restart=restart,
    )
    with session() as ops:
        report_start(ops.run(req, policy_file))


@click.command()
@click.argument("name")
@click.option("--detach", "-d", is_flag=True, help=DETACH_HELP)
def start(name: str, detach: bool) -> None:
    """Start a stopped instance again with its plan (a new run; a fresh restart budget)."""
    with session() as ops:
        report_start(ops.start(name, detach))


def _stop_line(outcome: StopOutcome) -> str:
    if outcome.message is not None:
        return outcome.message
    if outcome.state is None:
        return f"{outcome.name}: has no run"
    return f"{outcome.name}: {outcome.state} ({outcome.reason})"


STOP_TIMEOUT_HELP = (
    "Seconds to wait after the stop signal before SIGKILL, from 0 to 3600 (default: the "
    "plan's). Another stop while one waits: the earliest deadline wins."
)


@click.command()
@click.argument("name")
@click.option("--timeout", "-t", type=float, default=None, help=STOP_TIMEOUT_HELP)
def stop(name: str, timeout: float | None) -> None:
    """Stop an instance: its stop signal, then SIGKILL to the whole group after the timeout.

    Returns once the run has ended (exit 0), or exits 4 saying it is still stopping (its
    supervisor did not end it within the timeout and a margin). The workload is signalled
    even when the state database cannot be written (a full disk): then exit 5, saying so.
    """
    with session() as ops:
        click.echo(_stop_line(ops.stop(name, timeout)))


@click.command()
@click.argument("name")
@click.option("--timeout", "-t", type=float, default=None, help=STOP_TIMEOUT_HELP)
@click.option("--detach", "-d", is_flag=True, help=DETACH_HELP)
def restart(name: str, timeout: float | None, detach: bool) -> None:
    """Stop an instance (if running) and start it again (a fresh restart budget)."""
    with session() as ops:
        report_start(ops.restart(name, timeout, detach))


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--purge", is_flag=True, help="Also delete the instance's log files.")
@click.option("--force", "-f", is_flag=True, help="Stop the instance first if it is running.")
def rm(names: tuple[str, ...], purge: bool, force: bool) -> None:
    """Forget stopped instances (logs are kept unless --purge)."""
    with session() as ops:
        for name in names:
            done = ops.remove(name, purge=purge, force=force)
            click.echo(done.message if done.message is not None else name)


@click.command()
@click.option("--all", "-a", "all_", is_flag=True, help="Include stopped and failed instances.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def ps(all_: bool, as_json: bool) -> None:
    """List instances (running ones; --all for every instance)."""
    with session() as ops:
        items = ops.ps(all_)
    if as_json:
        click.echo(json.dumps([it.model_dump(mode="json") for it in items], indent=2))
        return
    rows = []
    for it in items:
        when = _ago(it.started_at if it.state in ("running", "stopping") else it.finished_at)
        rows.append(
            [
                it.name,
                it.module,
                it.mode,
                it.state,
                it.health,
                str(it.pid or ""),
                ", ".join(it.ports),
                when,
                (it.reason or "") if it.state in ("failed", "stopped", "orphaned") else "",
            ]
        )
    click.echo(
        table(
            ["name", "module", "mode", "state", "health", "pid", "ports", "since", "reason"], rows
        )
    )


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def inspect(name: str, as_json: bool) -> None:
    """Show an instance: state, reason, plan, every run, limits, and the last log lines."""
    from localaistack.cli.render import plan_lines
    from localaistack.plan import ExecutionPlan

    with session() as ops:
        detail = ops.inspect(name)
    data = detail.model_dump(mode="json", by_alias=True)
    limits, security, last_lines = detail.limits, detail.security, detail.last_log_lines
    plan = ExecutionPlan.model_validate(detail.plan)  # its shown form: plan_lines masks it
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"Instance {name} ({detail.module}, {detail.mode}): {detail.state}")
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
    out = sys.stdout.buffer
    with session() as ops:
        chunks = ops.logs(name, follow=follow, tail=tail, run_id=run_id, timestamps=timestamps)
        try:
            for chunk in chunks:
                out.write(chunk)
                if follow:
                    out.flush()
        except BrokenPipeError:
            pass
        out.flush()


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--tail", "-n", type=int, default=None, help="Only the last N events.")
def events(follow: bool, as_json: bool, tail: int | None) -> None:
    """Show the event log (state changes, creations, removals)."""
    with session() as ops:
        try:
            for ev in ops.events(tail=tail, follow=follow):
                click.echo(_event_line(ev, as_json))
                if follow:
                    sys.stdout.flush()
        except KeyboardInterrupt:
            pass


def _event_line(ev: EventInfo, as_json: bool) -> str:
    if as_json:
        return json.dumps(ev.model_dump(mode="json"))
    return f"{ev.at}  {ev.instance or '-':<16} {ev.type:<10} {ev.message}"


COMMANDS = (run, start, stop, restart, rm, ps, inspect, logs, events)
