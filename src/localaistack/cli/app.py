"""``las``: the LocalAIStack runtime's command line, one click application.

``cli`` is the group; the commands are defined in control_commands.py (they plan) and
lifecycle.py (they run), which import only the helpers below them (session.py, planning.py,
render.py, output.py), never this module. Commands parse their arguments, call the
operations (ops/: in process, or a `las serve` named by --host) and format what comes back.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from localaistack.cli import control_commands, lifecycle, serve_command
from localaistack.cli.output import fail
from localaistack.cli.session import HOST_KEY
from localaistack.errors import LasError


class LasGroup(click.Group):
    """Maps every LasError to its message, hint and exit code; no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LasError as err:
            fail(err)
        except Exception as err:
            # A SQLite error that escaped the store's own wrapping (a damaged page met
            # while rows are fetched): a StoreError naming the cause, not a traceback.
            from localaistack.store.db import translate
            from localaistack.store.paths import las_home

            store_err = translate(err, las_home() / "state.db")
            if store_err is None:
                raise
            fail(store_err)


@click.group(cls=LasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="localaistack", prog_name="las")
@click.option(
    "--host",
    envvar="LAS_HOST",
    metavar="URL",
    help="Work through the `las serve` at URL (unix:///PATH or http://HOST:PORT) instead of "
    "on $LAS_HOME directly; env LAS_HOST. validate, trust, serve and system stay local.",
)
@click.pass_context
def cli(ctx: click.Context, host: str | None) -> None:
    """LocalAIStack runtime: plan and run AI modules natively or in containers.

    State, logs, user modules and policy live in $LAS_HOME (default: /var/lib/localaistack
    for root, ~/.local/state/localaistack otherwise).
    """
    ctx.meta[HOST_KEY] = host or None


for _command in (*control_commands.COMMANDS, *lifecycle.COMMANDS, *serve_command.COMMANDS):
    cli.add_command(_command)


def main(args: list[str] | None = None) -> NoReturn:
    """The ``las`` program (the console script, and ``python -m localaistack``)."""
    try:
        try:
            cli.main(args=args, prog_name="las")
        except LasError as err:  # raised outside a command, e.g. in a callback
            fail(err)
    except SystemExit as done:
        code = _exit_code(done.code)
    else:
        code = 0
    # A command has closed what it opened (the store, its files): only the output is left
    # to flush. The interpreter's teardown of every module imported (the planner, pydantic)
    # is skipped: nothing of las's needs it, and it is on every command's path.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away (`las ps | head -0`): as click does
        code = code or 1
    os._exit(code)


def _exit_code(code: object) -> int:
    """What ``sys.exit(code)`` would exit with."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1
