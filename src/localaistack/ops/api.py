"""The operations interface and the data it returns: the shapes of the CLI's ``--json``
output and of the HTTP API's bodies are these models, serialised the same way.

This module imports neither control nor runtime nor the store: a client of `las serve`
(``remote``) needs only it, pydantic and httpx.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from localaistack.plan import ExecutionPlan

RestartPolicy = Literal["never", "on-failure", "always", "unless-stopped"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ------------------------------------------------------------------------------


class PlanRequestBody(_Model):
    """`las plan`: a dry run; nothing is started or reserved."""

    module: str = Field(description="catalog name, or a manifest path on the service's machine")
    mode: Literal["native", "container"] | None = None
    set: dict[str, str] = Field(default_factory=dict, description="module parameters")
    hardware: dict[str, Any] | None = Field(
        default=None, description="a saved hardware profile (`las hw --json`) to plan for"
    )


class RunRequest(_Model):
    """`las run`: plan, admit and start an instance."""

    module: str = Field(description="catalog name, or a manifest path on the service's machine")
    mode: Literal["native", "container"] | None = None
    set: dict[str, str] = Field(default_factory=dict, description="module parameters")
    name: str | None = Field(default=None, description="instance name (default: the module's)")
    detach: bool = Field(default=False, description="return at running, not at healthy")
    restart: RestartPolicy | None = Field(
        default=None, description="restart policy (default: the manifest's)"
    )


class StartRequest(_Model):
    detach: bool = False


class StopRequest(_Model):
    timeout: float | None = Field(
        default=None, description="seconds before SIGKILL, 0-3600 (default: the plan's)"
    )


class RestartRequest(_Model):
    timeout: float | None = None
    detach: bool = False


# --- results -------------------------------------------------------------------------------


class StartOutcome(_Model):
    """How a start (run, start, restart) went. ``state`` failed/stopped: it did not start
    (the CLI exits 4 with ``reason``); the run stays inspectable."""

    name: str
    run_id: str
    state: str
    pid: int | None
    reason: str | None
    log_path: str
    what: str  # how its backend names the run: "pid 123", "container 0123abcd4567"
    ports: list[str]  # "NAME: HOST_IP:HOST_PORT"


class StopOutcome(_Model):
    """How a stop went: the run's state and reason (None: the instance has no run), or,
    for a workload with no record (``?RUN_ID``), what was done (``message``)."""

    name: str
    state: str | None = None
    reason: str | None = None
    message: str | None = None


class RemoveOutcome(_Model):
    name: str
    message: str | None = None  # a workload with no record: what was done to end it


class InstanceSummary(_Model):
    """A row of `las ps` (timestamps ISO 8601 UTC, as printed by `--json`)."""

    name: str
    module: str
    mode: str
    state: str
    health: str
    pid: int | None
    run_id: str | None
    started_at: str | None
    finished_at: str | None
    reason: str | None
    ports: list[str]
    gpus: list[str]


class Transition(_Model):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str | None = Field(alias="from")
    to: str
    at: str
    reason: str | None


class RunInfo(_Model):
    run_id: str
    attempt: int
    state: str
    exit_code: int | None
    signal: str | None
    reason: str | None
    pid: int | None
    started_at: str | None
    finished_at: str | None
    log_path: str
    lines_dropped: int
    transitions: list[Transition]


class InstanceDetail(_Model):
    """`las inspect`: the plan is its shown form (each secret ``***``)."""

    name: str
    module: str
    mode: str
    state: str
    reason: str | None
    health: str
    probes: list[dict[str, Any]]
    created_at: str
    plan: dict[str, Any]
    runs: list[RunInfo]
    limits: dict[str, str]
    security: dict[str, Any]
    last_log_lines: list[str]


class EventInfo(_Model):
    """An entry of the event log; ``id`` orders them (and is the SSE event id)."""

    id: int
    at: str
    instance: str | None
    run_id: str | None
    type: str
    message: str


class Problem(_Model):
    """An error answer of the API (RFC 9457 problem details, application/problem+json),
    worded as the CLI's error; ``exit_code`` is the one the CLI exits with."""

    type: str = Field(description="urn:localaistack:problem:<the error class, kebab-case>")
    title: str
    status: int
    detail: str
    hint: str | None
    exit_code: int
    problems: list[str] | None = Field(default=None, description="a manifest's problems")
    cause: str | None = Field(default=None, description="a state store error's cause")


class ServiceHealth(_Model):
    status: Literal["ok"]
    version: str


# --- the interface ---------------------------------------------------------------------------


class Operations(ABC):
    """What a client of the runtime can do. Errors are ``LasError``s (the same ones, with
    the same words, through either implementation). What an operation could do but found
    amiss (a state not recorded, a lost home's workloads) is appended to ``warnings``, for
    the caller to show (the CLI: on stderr, each once)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def close(self) -> None:  # noqa: B027 (nothing to close by default)
        """Release what the implementation holds (a store connection, an HTTP client)."""

    def __enter__(self) -> Operations:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # control: nothing runs
    @abstractmethod
    def hardware(self) -> dict[str, Any]:
        """This machine's hardware profile, as `las hw --json` prints it."""

    @abstractmethod
    def modules(self) -> list[dict[str, Any]]:
        """The catalog, as `las modules --json` prints it."""

    @abstractmethod
    def plan(self, req: PlanRequestBody, policy_file: Path | None = None) -> ExecutionPlan:
        """The explained plan (a dry run). ``policy_file``: only in process (a service
        plans with its own policy; the remote implementation refuses one)."""

    # lifecycle
    @abstractmethod
    def run(self, req: RunRequest, policy_file: Path | None = None) -> StartOutcome:
        """Plan, admit and start an instance; waits until healthy (running with
        ``detach``) or failed. A Ctrl-C while waiting raises ``Interrupted``, saying
        whether it goes on starting."""

    @abstractmethod
    def start(self, name: str, detach: bool = False) -> StartOutcome:
        """A new run of a stopped instance, with its plan, through admission."""

    @abstractmethod
    def restart(self, name: str, timeout: float | None, detach: bool = False) -> StartOutcome:
        """Stop (if running), then start again."""

    @abstractmethod
    def stop(self, name: str, timeout: float | None) -> StopOutcome:
        """The stop signal, SIGKILL after ``timeout``; returns once the run has ended."""

    @abstractmethod
    def remove(self, name: str, purge: bool = False, force: bool = False) -> RemoveOutcome:
        """Forget a stopped instance (``force``: stop it first)."""

    @abstractmethod
    def ps(self, all_: bool = False) -> list[InstanceSummary]:
        """The instances: active ones; ``all_``: every one, and workloads with no record."""

    @abstractmethod
    def inspect(self, name: str) -> InstanceDetail:
        """One instance: state, reason, probes, plan (shown form), runs, limits."""

    @abstractmethod
    def logs(
        self,
        name: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        run_id: str | None = None,
        timestamps: bool = False,
    ) -> Iterator[bytes]:
        """A run's output, formatted as `las logs` prints it; ``follow``: until the run
        ends."""

    @abstractmethod
    def events(
        self, *, after: int = 0, tail: int | None = None, follow: bool = False
    ) -> Iterator[EventInfo]:
        """Events after id ``after`` (``tail``: only the last N); ``follow``: then every
        new one as it is committed, until the caller stops iterating."""
