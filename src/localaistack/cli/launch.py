"""``las run`` itself: plan, admit, start, report. No click here.

``las run`` is the one command on a latency path (docs/benchmarks.md), and importing click
costs it about 30 ms of a ~100 ms start. So its work lives here, free of click, and two
front ends call ``run_instance``:

* the click command (cli/lifecycle.py), for every form of ``las run``;
* ``cli/entry.py``, before click is imported, for the plain forms that ``parse_simple``
  understands: ``MODULE`` with ``-d/--detach``, ``--name``, ``--mode``, ``--set`` and
  ``--policy``. Anything else (``--help``, ``--hardware``, an unknown option, ``--``, a
  value that looks like an option) goes to click, which reports it as it always does. A
  test checks, over generated command lines, that ``parse_simple`` and click agree.

Errors are ``LasError``s, rendered by ``fail`` (shared with the click front end).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from localaistack.errors import Interrupted, LasError, StartFailed, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

MODES = ("native", "container")


class RunArgs(NamedTuple):
    """``las run``'s parameters, as the click command receives them."""

    module: str
    mode: str | None = None
    sets: tuple[str, ...] = ()
    policy_file: Path | None = None
    name: str | None = None
    detach: bool = False


_VALUED = {"--name": "name", "--mode": "mode", "--set": "sets", "--policy": "policy_file"}


def parse_simple(args: list[str]) -> RunArgs | None:
    """``las run``'s arguments (after ``run``) if they are of the plain form; else None."""
    module: str | None = None
    found: dict[str, Any] = {"sets": []}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-d", "--detach"):
            found["detach"] = True
            continue
        key, eq, value = arg.partition("=")
        if key in _VALUED:
            if not eq:
                if i >= len(args):
                    return None
                value = args[i]
                i += 1
            if value.startswith("-") or (key == "--mode" and value not in MODES):
                return None
            field = _VALUED[key]
            if field == "sets":
                found["sets"].append(value)
            else:
                found[field] = Path(value) if field == "policy_file" else value
            continue
        if arg.startswith("-") or module is not None:
            return None
        module = arg
    if module is None:
        return None
    return RunArgs(module, **{**found, "sets": tuple(found["sets"])})


def shown(text: str) -> str:
    """``text`` safe to print on a terminal: control and format characters (NUL, ESC, a
    carriage return, bidi overrides...) and undecodable bytes escaped, as Python writes them
    (``\\x00``, ``\\u202e``, ``\\xff``); newlines and tabs kept."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in "\n\t" or ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def fail(err: LasError) -> NoReturn:
    """Print ``err`` (message, problems, hint) to stderr and exit with its code."""
    lines = [f"error: {shown(err.message)}"]
    lines += [f"  {shown(p)}" for p in getattr(err, "problems", None) or [] if p != err.message]
    if err.hint:
        lines.append(f"hint: {shown(err.hint)}")
    sys.stdout.flush()
    sys.stderr.write("\n".join(lines) + "\n")
    sys.exit(err.exit_code)


def warn(notes: list[str]) -> None:
    for note in notes:
        sys.stderr.write(f"warning: {shown(note)}\n")


def main(args: RunArgs) -> NoReturn:
    """``las run`` without click (from cli/entry.py): exits like the click command would."""
    try:
        run_instance(*args)
    except LasError as err:
        fail(err)
    except KeyboardInterrupt:
        sys.stderr.write("\nAborted!\n")  # what click prints
        sys.exit(1)
    except BrokenPipeError:  # stdout closed early (`las run ... | head -0`): as click does
        _fast_exit(1)
    # Done, the store closed: skip the interpreter's teardown of every imported module
    # (~10 ms here), which nothing of las's needs; only the output must be flushed.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        _fast_exit(1)
    _fast_exit(0)


# Called with the exit status just before `las run` ends with os._exit: the las agent's
# worker (cli/agent.py) reports it to its client there, before the process's teardown.
exit_hooks: list[Callable[[int], None]] = []


def _fast_exit(code: int) -> NoReturn:
    import atexit

    atexit._run_exitfuncs()  # what las registered (cli/entry.py: the agent's start)
    for hook in exit_hooks:
        hook(code)
    os._exit(code)


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
        from localaistack.cli import entry

        pending = entry.take(rt.store.path) or rt.prepare_start()
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
    if run is None or run["state"] not in ACTIVE_STATES:
        clear_admission(rt, name)
        return Interrupted(f"interrupted: {name} was not started")
    return Interrupted(
        f"interrupted: {name} goes on starting in the background (run {run['run_id']}, "
        f"{run['state']}); las only stopped waiting for it",
        hint=f"`las stop {name}` stops it; `las ps` and `las logs {name}` show how it goes",
    )


def report_start(rt: Any, result: Any) -> None:
    """The line `las run`/`start`/`restart` print, or the failure as a StartFailed."""
    if result.state in ("failed", "stopped"):
        raise StartFailed(
            f"{result.name}: run {result.run_id} {result.state}: {result.reason}",
            hint=f"`las logs {result.name}` shows its output ({result.log_path})",
        )
    plan = json.loads(rt.require_instance(result.name)["plan"])
    ports = ", ".join(f"{b['name']}: {b['host_ip']}:{b['host_port']}" for b in plan["ports"])
    what = f"container {result.container}" if result.container else f"pid {result.pid}"
    line = f"{result.name}  run {result.run_id}  {result.state}  {what}"
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
    from localaistack.cli.main import planner_for
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
