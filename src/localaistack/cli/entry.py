"""The ``las`` program's entry point.

``las run``/``start``/``restart`` go to the las agent first, when one serves this
``$LAS_HOME`` (cli/handover.py, cli/agent.py): the command then runs in a warm las and
this process only waits for it. Without an agent, ``las`` runs the command itself (and
starts an agent for the next command once it is done), as follows.

For ``las run``, the supervisor starts first; the plain forms of ``las run`` then run
without importing click (cli/launch.py).

A supervisor is a Python process that needs tens of milliseconds to start, and ``las``
itself needs about as long to import its command-line library. So for ``las run`` (on a
store that exists already) the supervisor is spawned before anything else, and both start
at once; ``las run`` lets it go once the plan is admitted (``take``). When ``las`` ends
without doing so (a usage error, a refusal, ``--help``), the go pipe closes and the
supervisor exits, leaving nothing behind.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms before the spawn

if TYPE_CHECKING:
    from localaistack.runtime.spawn import Pending

_early: list[Pending] = []  # at most one


def main() -> None:
    args = sys.argv[1:]
    from localaistack.cli import handover  # os-only, as is the rest until the spawn

    if handover.wanted(args):
        from localaistack.store.home import home_dir

        home = home_dir()
        outcome = handover.hand_over(home, args) if handover.safe_home(home) else "absent"
        if isinstance(outcome, int):  # the agent ran it; nothing here needs a teardown
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(outcome & 0xFF)
        if outcome in ("absent", "stale"):  # (else an agent that serves others runs)
            import atexit  # launch.py's fast exit runs these too

            atexit.register(_start_agent, home)  # for the next command, once this one ends
    run(args)


def _start_agent(home: str) -> None:
    from localaistack.cli import handover

    if handover.safe_home(home):
        handover.start_agent(home)


def run(args: list[str]) -> None:
    """``las ARGS``, here (also in the agent's workers, cli/agent.py); exits."""
    pending = _spawn_early(args)
    if pending is not None:
        _early.append(pending)
    if args and args[0] == "run":
        # The plain forms of `las run` skip click (cli/launch.py); it exits.
        from localaistack.cli import launch

        parsed = launch.parse_simple(args[1:])
        if parsed is not None:
            launch.main(parsed)
    from localaistack.cli.main import main as cli

    cli(args)


def _spawn_early(args: list[str]) -> Pending | None:
    if not args or args[0] != "run" or "--help" in args or "-h" in args:
        return None
    if os.environ.get("LAS_EARLY_SUPERVISOR") == "0":
        return None
    try:
        # os-only modules: the sooner the spawn, the sooner the supervisor is ready
        from localaistack.runtime.spawn import new_run_id, spawn_supervisor
        from localaistack.store.home import check_home, home_dir

        home = home_dir()
        db = os.path.join(home, "state.db")
        if not os.path.exists(db):  # the first run creates the store: no supervisor may race it
            return None
        check_home(home)
        return spawn_supervisor(db, home, new_run_id())
    except Exception:  # only an optimisation: `las run` reports whatever is wrong itself
        return None


def take(db: str | os.PathLike[str]) -> Pending | None:
    """The supervisor spawned early for ``db``, if any (once)."""
    pending = _early.pop() if _early else None
    if pending is not None and pending.db != os.fspath(db):
        os.close(pending.go_fd)  # another store after all: it exits
        os.close(pending.ready_fd)
        pending.close_reply()
        return None
    return pending
