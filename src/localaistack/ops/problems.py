"""LasError <-> RFC 9457 problem details: the service answers an error with
``problem_of(err)``; a client rebuilds the same error (class, words, exit code) with
``error_of(status, body)``. Imports only the error tree (no web framework)."""

from __future__ import annotations

import re
from typing import Any

from localaistack import errors as err_mod

PREFIX = "urn:localaistack:problem:"
MEDIA_TYPE = "application/problem+json"

# Most specific first: the first class the error is an instance of decides the status.
_STATUS: list[tuple[type[err_mod.LasError], int]] = [
    (err_mod.UsageError, 400),
    (err_mod.ManifestError, 422),
    (err_mod.PolicyError, 422),
    (err_mod.HardwareProfileError, 422),
    (err_mod.PolicyViolation, 403),
    (err_mod.NoCompatibleMode, 409),
    (err_mod.RequirementUnmet, 409),
    (err_mod.AdmissionRefused, 409),
    (err_mod.PlanningError, 409),
    (err_mod.InstanceNotFound, 404),
    (err_mod.InstanceConflict, 409),
    (err_mod.StartFailed, 422),
    (err_mod.RecoveryFailed, 409),
    (err_mod.NotSupported, 400),
    (err_mod.ExecutionError, 409),
    (err_mod.StoreError, 503),
    (err_mod.LasError, 500),
]


def _classes() -> dict[str, type[err_mod.LasError]]:
    found: dict[str, type[err_mod.LasError]] = {}
    for value in vars(err_mod).values():
        if isinstance(value, type) and issubclass(value, err_mod.LasError):
            found[value.__name__] = value
    return found


def kebab(name: str) -> str:
    """``InstanceNotFound`` -> ``instance-not-found``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def words(name: str) -> str:
    """``InstanceNotFound`` -> ``Instance not found``."""
    return kebab(name).replace("-", " ").capitalize()


def status_of(err: err_mod.LasError) -> int:
    for cls, status in _STATUS:
        if isinstance(err, cls):
            return status
    return 500  # pragma: no cover (LasError is last)


def problem_of(err: err_mod.LasError) -> tuple[int, dict[str, Any]]:
    """The status and problem+json body for ``err``."""
    status = status_of(err)
    name = type(err).__name__
    body: dict[str, Any] = {
        "type": PREFIX + kebab(name),
        "title": words(name),
        "status": status,
        "detail": err.message,
        "hint": err.hint,
        "exit_code": err.exit_code,
    }
    if isinstance(err, err_mod.ManifestError):
        body["problems"] = list(err.problems)
    if isinstance(err, err_mod.StoreError):
        body["cause"] = err.cause
    return status, body


def plain_problem(status: int, title: str, detail: str, hint: str | None = None) -> dict[str, Any]:
    """A problem with no LasError behind it (401, 404 route, 405, 413): a client rebuilds a
    UsageError (exit 2) from it, or a LasError for a 5xx."""
    return {
        "type": PREFIX + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "detail": detail,
        "hint": hint,
        "exit_code": 2 if status < 500 else 1,
    }


def error_of(status: int, body: dict[str, Any]) -> err_mod.LasError:
    """The LasError a problem body describes (a non-problem body: a LasError saying so)."""
    detail = body.get("detail") if isinstance(body, dict) else None
    hint = body.get("hint") if isinstance(body, dict) else None
    kind = body.get("type") if isinstance(body, dict) else None
    message = detail if isinstance(detail, str) else f"the service answered HTTP {status}"
    hint = hint if isinstance(hint, str) else None
    cls: type[err_mod.LasError] | None = None
    if isinstance(kind, str) and kind.startswith(PREFIX):
        wanted = kind.removeprefix(PREFIX)
        cls = next((c for n, c in _classes().items() if kebab(n) == wanted), None)
    err: err_mod.LasError
    if cls is not None and issubclass(cls, err_mod.ManifestError):
        problems = body.get("problems")
        err = cls(message, hint, [str(p) for p in problems] if isinstance(problems, list) else [])
    elif cls is err_mod.StoreError:
        cause = body.get("cause")
        err = err_mod.StoreError(message, hint, cause if isinstance(cause, str) else "other")
    elif cls is not None:
        err = cls(message, hint)
    elif 400 <= status < 500:
        err = err_mod.UsageError(message, hint)
    else:
        err = err_mod.LasError(message, hint)
    code = body.get("exit_code") if isinstance(body, dict) else None
    if isinstance(code, int) and not isinstance(code, bool) and code != type(err).exit_code:
        err.exit_code = code
    return err
