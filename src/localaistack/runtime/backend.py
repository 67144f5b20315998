"""The seam between supervising a run (the shim, runtime/supervisor.py) and executing it.

A backend executes one run of a plan: native processes (runtime/backends/native.py) or a
container of an engine (runtime/backends/podman.py, docker.py). The shim owns the event
loop, the log, health, the restart policy and stop escalation; it calls a backend for what
depends on how the run is executed. The core, which every backend implements:

* ``start()`` starts the run and returns a ``Started`` (its ``Handle`` included), or
  raises ``errors.StartFailed`` with the reason (its message: the run's reason);
* ``attach(since)`` returns what the shim waits on inside its selector loop: the pid of a
  child of the shim whose exit is the run's end, and the output pipes to read. The shim
  reaps its children itself (it is their subreaper) and passes the main one's wait status
  to ``exit_status``; ``poll_exit()`` is the same, for a caller without a reaper of its own;
* ``stop(signal, grace)`` sends the stop signal; the shim calls ``kill()`` once the
  grace has passed (and ``capabilities.kill_after`` more: where the backend kills at the
  end of the grace itself, as an engine's stop does);
* ``kill()`` SIGKILLs all of the run, now;
* ``inspect()`` says how the run is now (a ``RunStatus``);
* ``recover(handle)`` re-attaches to a run from its stored handle and inspects it, or
  raises ``RecoveryFailed`` with the reason (the caller then records a synthetic exit);
* ``cleanup()`` removes what the run left behind (a cgroup, a container);
* ``capabilities``: what the backend can do, as data, so that no caller branches on its
  kind.

Then the hooks some backends need, each with a default that does nothing (see ``Backend``),
and the class methods the runtime calls without a run: the checks before a start
(``preflight``), the imports a waiting shim does ahead (``preload``), what las shows of a
run (``describe_*``) and the workloads of a home that no active run records
(``unrecorded``, ``end_unrecorded``, ``sweep_orphans``).

The records are immutable ``NamedTuple``s rather than dataclasses: importing dataclasses
(and inspect with it) would add to the memory of every long-lived supervisor.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from localaistack.errors import RecoveryFailed, StartFailed
from localaistack.store.db import HANDLE_VERSION, decode_handle, encode_handle

if TYPE_CHECKING:
    from localaistack.plan import ExecutionPlan

__all__ = [
    "HANDLE_VERSION",
    "Attachment",
    "Backend",
    "Capabilities",
    "ExitStatus",
    "Handle",
    "Orphan",
    "RunContext",
    "RunStatus",
    "StartFailed",
    "Started",
    "Unrecorded",
    "describe_exit",
    "format_size",
]


class Capabilities(NamedTuple):
    """What a backend can do, as data (callers read these instead of its name)."""

    recover: bool  # a run outlives its shim, and a new shim can re-attach to it
    enforces_memory: bool  # the memory limit is enforced by the kernel for the run
    assigns_gpus: bool  # exactly the plan's GPUs are passed to the run
    detects_oom: bool  # an OOM kill is told apart from another SIGKILL
    output: str  # where the output comes from: "pipes" (the workload's) or "engine-logs"
    # Seconds past a stop's grace before the shim calls ``kill()``: 0, or the time the
    # backend gets to kill the run itself first (an engine's stop: signal, grace, SIGKILL).
    kill_after: float
    sees_processes: bool  # the shim can see the run's processes (listener check, sampler)
    stop_margin: float  # seconds a stop may take beyond its timeout (the engine's part)


class ExitStatus(NamedTuple):
    """How a run ended, as the backend tells it.

    ``code`` (exited) or ``signal`` (killed by it; a container's code 128+N sets both);
    ``killed``: it was SIGKILLed after its stop timeout, as the backend can tell;
    ``oom``: killed for memory, and how that is known (the reason's words);
    ``lost``: the run cannot be told about (a container gone), and why;
    ``inspect_error``: why the exit could not be asked about (an engine's words).
    """

    code: int | None = None
    signal: str | None = None
    core_dumped: bool = False
    killed: bool = False
    oom: str | None = None
    lost: str | None = None
    inspect_error: str | None = None

    @staticmethod
    def from_wait_status(status: int) -> ExitStatus:
        from localaistack.runtime import procs

        if os.WIFEXITED(status):
            return ExitStatus(code=os.WEXITSTATUS(status))
        return ExitStatus(
            signal=procs.signal_name(os.WTERMSIG(status)), core_dumped=os.WCOREDUMP(status)
        )


class RunStatus(NamedTuple):
    """How a run is now: running (with its host pid when known), or ended (its exit)."""

    running: bool
    pid: int | None = None
    exit: ExitStatus | None = None
    detail: str = ""  # what the backend names it by ("pid 123", "container 0123abcd4567")


class Handle(NamedTuple):
    """What a backend needs to find a run again: its name, a version, its own state.

    Stored in the run's ``handle`` column (serialised by the store). ``state`` is opaque
    to everything but the backend that wrote it.
    """

    backend: str
    version: int
    state: dict[str, Any]

    def to_json(self) -> str:
        return encode_handle(self.backend, self.version, self.state)

    @staticmethod
    def load(text: str | None, backend: str) -> Handle:
        """The handle stored for a run of ``backend``; RecoveryFailed when it cannot be used
        (none, unreadable, another backend's, or a version this las does not know)."""
        if not text:
            raise RecoveryFailed(f"the run has no stored {backend} handle")
        try:
            name, version, state = decode_handle(text, backend)
        except ValueError as exc:
            raise RecoveryFailed(f"the stored handle cannot be read: {exc}") from None
        if name != backend:
            raise RecoveryFailed(f"the stored handle is a {name} handle, not a {backend} one")
        if version != HANDLE_VERSION:
            raise RecoveryFailed(
                f"the stored {backend} handle has version {version}; this las reads version "
                f"{HANDLE_VERSION} (and the unversioned form of earlier releases) only"
            )
        return Handle(name, version, state)


class RunContext(NamedTuple):
    """What a backend knows of the run it executes."""

    run_id: str
    instance: str
    plan: dict[str, Any]  # the plan with its secrets (what runs)
    shown: dict[str, Any]  # the plan as shown (what las's own messages are composed from)
    db_path: str  # the state database (its home's label names the run's resources)
    shim_pid: int  # the shim's pid: the parent of the run's processes
    # Pids of the shim's own helpers (command probes): no part of the run (the shim adds).
    own_pids: set[int]
    hide: Callable[[str], str] = str  # masks secrets in quoted text
    note: Callable[[str], None] = lambda _: None  # a line of las's own in the run's log


class Started(NamedTuple):
    """A started run: its handle, the host pid (None until known), how to name it."""

    handle: Handle
    pid: int | None
    pid_start: int | None
    what: str  # "pid 123", "container 0123abcd4567"


class Attachment(NamedTuple):
    """What the shim watches: a child whose exit is the run's end, and output pipes."""

    wait_pid: int
    outputs: dict[int, str]  # fd -> stream ("O" stdout, "E" stderr)


class Unrecorded(NamedTuple):
    """A workload of a home that runs although no active run records it (its home was
    removed or replaced while it ran, or its record ended while it did not)."""

    run_id: str
    backend: str
    pid: int | None
    what: str  # how the backend names it: "2 process(es) in cgroup ...", "podman container ..."


class Orphan(NamedTuple):
    """A leftover of a run that no active run points to, found by ``sweep_orphans``."""

    instance: str  # the instance it was started for ("-": not known)
    note: str  # what it is and what was done ("...; removed", "...; removed after 60s")
    removed: bool


class Backend(abc.ABC):
    """The base of every backend: the interface (see the module's docstring) and defaults."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.wait_pid: int | None = None

    # --- the core: every backend implements these -----------------------------------------

    @abc.abstractmethod
    def start(self) -> Started: ...

    @abc.abstractmethod
    def current(self) -> Started:
        """The run as started (or recovered)."""

    @abc.abstractmethod
    def attach(self, since: str | None = None) -> Attachment: ...

    @abc.abstractmethod
    def exit_status(self, wait_status: int) -> ExitStatus:
        """The run's exit, once ``wait_pid`` has ended with ``wait_status``."""

    def poll_exit(self) -> ExitStatus | None:
        """Non-blocking: the run's exit if ``wait_pid`` has ended (reaping it), else None."""
        assert self.wait_pid is not None
        try:
            got, status = os.waitpid(self.wait_pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: its status is gone
            return ExitStatus(lost=f"lost: pid {self.wait_pid} is not a child of this process")
        return None if got == 0 else self.exit_status(status)

    @abc.abstractmethod
    def stop(self, signal_name: str, grace: float) -> None: ...

    @abc.abstractmethod
    def kill(self) -> None: ...

    @abc.abstractmethod
    def inspect(self) -> RunStatus: ...

    def recover(self, handle: Handle) -> RunStatus:
        """Re-attach to the run of ``handle``; its status. RecoveryFailed: it cannot be
        (the default, for a backend whose runs do not outlive their shim)."""
        raise RecoveryFailed(f"a {self.name} run cannot be recovered")

    def cleanup(self) -> list[str]:
        """Remove what the run left; what could not be removed (words for the reason)."""
        return []

    # --- hooks of a run: what only some backends have (the defaults: nothing of the kind) -

    def detach(self) -> None:
        """End the shim's helpers of the run (a container's `logs --follow`, `wait`)."""
        return None  # the default: nothing to do

    def members(self) -> set[int]:
        """The run's live processes the shim can see (``capabilities.sees_processes``): for
        the listener check, the memory sampler and the end of a stop."""
        return set()

    def sweep(self) -> int:
        """After the exit: kill what is left of the run; how many were killed in all."""
        return 0

    def unenforced_memory(self) -> int | None:
        """The memory limit no kernel mechanism enforces (the shim samples RSS instead)."""
        return None

    def watches(self) -> bool:
        """Whether ``watch`` has anything to do (the shim then calls it periodically)."""
        return False

    def watch(self, main: int | None) -> Handle | None:
        """The periodic look at the run: a new handle to store when its state changed."""
        return None

    def host_pid(self) -> tuple[int, int | None] | None:
        """The run's main process as the host sees it, where ``start`` could not tell it
        (asked once attached; None: not known)."""
        return None

    def probe_setup(
        self, spec: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, str], Callable[[], None] | None]:
        """A health probe's spec, environment and child setup for this backend's runs."""
        return spec, dict(os.environ), None

    # --- without a run: before a start, for `las inspect`, for a home's leftovers ---------

    @classmethod
    def preload(cls) -> None:
        """Import what a start needs, in a shim waiting to be told to start (the default:
        nothing beyond the backend's module)."""
        return None  # the default: nothing to do

    @classmethod
    def preflight(cls, plan: ExecutionPlan) -> None:
        """Checks before anything is created (StartFailed: the run could not start)."""
        return None  # the default: nothing to do

    @classmethod
    def describe_run(cls, state: dict[str, Any], pid: int | None) -> str:
        """How las names a run from its handle's ``state`` ("pid 123")."""
        return f"pid {pid}"

    @classmethod
    @abc.abstractmethod
    def describe_limits(cls, plan: ExecutionPlan, state: dict[str, Any]) -> dict[str, str]:
        """What enforces each limit of ``plan``, in words; ``state``: the run's handle's."""

    @classmethod
    @abc.abstractmethod
    def describe_security(cls, plan: ExecutionPlan) -> dict[str, Any]:
        """The isolation a run of ``plan`` gets."""

    @classmethod
    def gone(cls, run_id: str, pid: int, pid_start: int | None) -> bool:
        """Whether nothing is left of the run, told without its shim or the store (``pid``:
        its main process as recorded). Default: cannot be told so (False)."""
        return False

    @classmethod
    def end_lost(
        cls, run_id: str, state: dict[str, Any], pid: int | None, pid_start: int | None
    ) -> tuple[int, list[str]]:
        """A run whose shim died, on this boot, that is not recovered: kill what is left
        of it (``state``: its handle's; ``pid``: its main process as recorded). How many
        processes were killed, and what could not be removed (default: nothing to do, for
        a backend whose runs are recovered)."""
        return 0, []

    @classmethod
    def unrecorded(cls, label: str, active: set[str], thorough: bool) -> list[Unrecorded]:
        """The live workloads this backend runs for the home of ``label`` whose run id is
        not in ``active``. ``thorough``: look where looking costs (an engine call) too."""
        return []

    @classmethod
    def end_unrecorded(cls, label: str, run_id: str, timeout: float, thorough: bool) -> str | None:
        """End the workload ``unrecorded`` found as ``run_id`` (stop signal, then kill after
        ``timeout``; what it leaves removed); what was done, or None: none is known here."""
        return None

    @classmethod
    def sweep_orphans(cls, label: str, active: set[str], grace: float) -> list[Orphan]:
        """Leftovers of runs of this home that no active run points to: each is reported,
        and removed once older than ``grace`` seconds (default: none, for a backend whose
        runs do not outlive their shim)."""
        return []


def format_size(n: int) -> str:
    """A byte count in words: 512MiB, 1.5GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g}{unit}"
    return f"{n}B"


def describe_exit(
    ex: ExitStatus, by_request: bool, killed: bool, sig_name: str, last: str
) -> tuple[str, str]:
    """Final state and reason of a run's exit: the one place these words are composed.

    ``by_request``: it was stopped by a stop request; ``killed``: the shim SIGKILLed it
    after the stop timeout; ``sig_name``: the plan's stop signal; ``last``: the quote of
    its last output ("" when none).
    """
    code, sig = ex.code, ex.signal
    if ex.inspect_error:
        last = f"{last}; inspect failed: {ex.inspect_error}" if last else ex.inspect_error
    tail = f"; {last}" if last else ""
    if ex.lost is not None:
        return "failed", f"{ex.lost} ({last})"
    if ex.oom is not None and not by_request:
        return "failed", ex.oom
    if by_request:
        sigkilled = (
            "stopped",
            f"stopped: did not exit within the stop timeout after {sig_name}; killed with SIGKILL",
        )
        if killed:
            return sigkilled
        if sig == sig_name:
            return "stopped", f"stopped: exited on {sig_name}"
        if ex.killed:
            return sigkilled
        how = f"exited with code {code}" if code is not None else f"ended by {sig}"
        return "stopped", f"stopped: {how} after {sig_name}"
    if code == 0:
        return "stopped", "exited on its own with code 0"
    if code is not None:
        named = f" ({sig})" if sig else ""
        return "failed", f"exited with code {code}{named}{tail}"
    core = " (core dumped)" if ex.core_dumped else ""
    return "failed", f"killed by signal {sig}{core}{tail}"
