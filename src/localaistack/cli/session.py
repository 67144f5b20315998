"""Which operations a command works through: in process (``LocalOperations``, the
default), or a `las serve` named by ``--host`` / ``LAS_HOST`` (``RemoteOperations``); and
what every lifecycle command prints the same way (a start's line)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from localaistack.cli.output import warn
from localaistack.errors import StartFailed
from localaistack.ops.api import Operations, StartOutcome

HOST_KEY = "las.host"


def host() -> str | None:
    """The service this command talks to (``--host`` or ``LAS_HOST``), or None."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(HOST_KEY) if ctx is not None else None


@contextmanager
def session() -> Iterator[Operations]:
    """The operations for this command. Warnings go to stderr: in process as they arise
    (before a long wait), from a service after each answer; each before any error."""
    from localaistack.store.paths import las_home

    ops: Operations
    url = host()
    if url:
        from localaistack.ops.remote import RemoteOperations

        ops = RemoteOperations(url, home=las_home())
    else:
        from localaistack.ops.local import LocalOperations

        ops = LocalOperations(las_home(), on_warning=lambda note: warn([note]))
    try:
        yield ops
    finally:
        warn(ops.warnings)
        ops.warnings.clear()
        ops.close()


def report_start(outcome: StartOutcome) -> None:
    """The line `las run`/`start`/`restart` print, or the failure as a StartFailed."""
    if outcome.state in ("failed", "stopped"):
        raise StartFailed(
            f"{outcome.name}: run {outcome.run_id} {outcome.state}: {outcome.reason}",
            hint=f"`las logs {outcome.name}` shows its output ({outcome.log_path})",
        )
    line = f"{outcome.name}  run {outcome.run_id}  {outcome.state}  {outcome.what}"
    ports = ", ".join(outcome.ports)
    print(line + (f"  {ports}" if ports else ""), flush=True)
