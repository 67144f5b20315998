"""Every error las raises on purpose, in one tree.

Each error carries a message (what is wrong), a hint (what to do) and the exit code the
CLI uses. Anything that is not a ``LasError`` reaching the CLI is a bug.

::

    LasError                         exit 1
    ├── UsageError                   exit 2   bad arguments, unknown names
    ├── ManifestError                exit 1   a manifest (or several) is invalid
    ├── PolicyError                  exit 1   the policy file is invalid
    ├── HardwareProfileError         exit 1   a saved hardware profile cannot be read
    ├── PlanningError                exit 3   no plan can be made
    │   ├── PolicyViolation                   the policy forbids what was asked
    │   ├── NoCompatibleMode                  no declared mode is usable here
    │   ├── RequirementUnmet                  the hardware lacks what the manifest needs
    │   └── AdmissionRefused                  the resources are not free
    ├── ExecutionError               exit 4   the runtime could not do what the plan says
    │   ├── StartFailed                       the workload did not start
    │   ├── InstanceNotFound                  no instance by that name
    │   ├── InstanceConflict                  the name is taken or the state forbids it
    │   ├── RecoveryFailed                    a persisted handle cannot be reattached
    │   └── NotSupported                      this backend cannot do that
    ├── Interrupted                  exit 130 Ctrl-C while a command waited
    ├── StoreError                   exit 5   the state database or LAS_HOME is unusable
    └── ServiceUnavailable           exit 6   the service (--host / LAS_HOST) cannot be reached
"""

from __future__ import annotations


class LasError(Exception):
    """Base of every deliberate las error."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(LasError):
    """Raised when the command line itself is wrong (unknown option value, bad --set)."""

    exit_code = 2


class ManifestError(LasError):
    """Raised when one or more manifests are invalid; ``problems`` lists each finding."""

    def __init__(
        self, message: str, hint: str | None = None, problems: list[str] | None = None
    ) -> None:
        super().__init__(message, hint)
        self.problems = problems or []


class ModelsError(ManifestError):
    """Raised when models.yaml (the gateway's models) cannot be read or is invalid;
    ``problems`` lists each finding, as a manifest's."""


class PolicyError(LasError):
    """Raised when a policy file cannot be read or is invalid."""


class HardwareProfileError(LasError):
    """Raised when a saved hardware profile cannot be loaded."""


class PlanningError(LasError):
    """Raised when the control layer cannot produce a plan."""

    exit_code = 3


class PolicyViolation(PlanningError):
    """Raised when the policy forbids the requested mode, module or setting."""


class NoCompatibleMode(PlanningError):
    """Raised when none of the manifest's modes can run on this machine under this policy."""


class RequirementUnmet(PlanningError):
    """Raised when the hardware does not meet the manifest's requirements."""


class AdmissionRefused(PlanningError):
    """Raised when the resources a plan needs are not free."""


class ExecutionError(LasError):
    """Raised when the runtime cannot carry out a plan or a lifecycle command."""

    exit_code = 4


class StartFailed(ExecutionError):
    """Raised when a workload could not be started."""


class InstanceNotFound(ExecutionError):
    """Raised when no instance has the given name."""


class InstanceConflict(ExecutionError):
    """Raised when an instance name is taken or its state forbids the command."""


class RecoveryFailed(ExecutionError):
    """Raised when a persisted run handle cannot be reattached."""


class NotSupported(ExecutionError):
    """Raised when a backend cannot perform the requested operation."""


class Interrupted(LasError):
    """Raised when the user interrupts a command (SIGINT) while it waits."""

    exit_code = 130


class StoreError(LasError):
    """Raised when the state database or LAS_HOME cannot be used.

    ``cause`` names the kind of trouble, for callers that carry on without writing (a
    read-only `las ps` on a full disk): ``full`` (no space), ``readonly`` (a read-only
    filesystem), ``permission``, ``corrupt`` (not a database, or damaged), ``empty`` (a
    0-byte database file), ``busy`` (locked by another process), ``io`` or ``other``.
    """

    exit_code = 5

    def __init__(self, message: str, hint: str | None = None, cause: str = "other") -> None:
        super().__init__(message, hint)
        self.cause = cause


class ServiceUnavailable(LasError):
    """Raised by a client of `las serve` when the service named by ``--host`` / ``LAS_HOST``
    cannot be reached (no socket, connection refused, no answer in time, connection lost).
    It never travels as a problem: only a client raises it."""

    exit_code = 6
