"""Secret values of an instance's plan, kept out of everything las shows or stores openly.

A plan marks secrets (``Parameter.secret``, ``EnvVar.secret``: declared ``secret: true``
or named like ``*_KEY``, ``*_TOKEN``, ``*PASSWORD*``, ``*SECRET*``). The runtime must still
pass the real values to the workload, so they are split off when an instance is created:

* the plan stored in ``state.db`` has every occurrence of a secret value replaced by
  ``***`` in the fields a value can be substituted into (argv, env, workdir, volumes,
  health command, parameters, decisions); ports, GPUs and resources are never touched, so
  what other commands read from the stored plan stays true;
* ``$LAS_HOME/secrets/INSTANCE.json`` (0600, in a 0700 directory) holds the secret values
  and, for each masked field, its path in the plan and its real text. Only the supervisor
  reads it, at exec time (``reveal``); ``las rm`` deletes it; a file whose instance is gone
  (a creation rolled back) is deleted when the next instance is created.

``mask`` replaces secret values in any text las writes itself (reasons, events, its lines
in a run's log, the supervisor's log). The workload's own output is the workload's: a
module that prints its secret prints it into its log.

Standard library only: the supervisor imports this.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

from localaistack.masking import MASK, mask, masked, secret_values

__all__ = ["MASK", "mask", "reveal", "secret_values", "split"]


def split(plan: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The plan with its secrets masked, and what ``reveal`` needs (None: no secret)."""
    values = secret_values(plan)
    if not values:
        return plan, None
    fields: list[list[Any]] = []
    shown = masked(plan, lambda path, original: fields.append([path, original]))
    return shown, {"values": values, "fields": fields}


def reveal(plan: dict[str, Any], secrets: dict[str, Any] | None) -> dict[str, Any]:
    """The stored (masked) plan with its real values put back; ``plan`` is not changed."""
    if not secrets:
        return plan
    out: dict[str, Any] = json.loads(json.dumps(plan))
    for path, text in secrets["fields"]:
        target: Any = out
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = text
    return out


# os.path, not pathlib: the supervisor reads secrets on its start path, and pathlib (with
# what it imports) costs it several milliseconds.


def secrets_dir(home: str | Path) -> str:
    return os.path.join(home, "secrets")


def secrets_path(home: str | Path, instance: str) -> str:
    return os.path.join(secrets_dir(home), f"{instance}.json")


def write(home: str | Path, instance: str, secrets: dict[str, Any]) -> None:
    """Save an instance's secrets: 0600 from creation, replaced atomically."""
    folder = secrets_dir(home)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    path = secrets_path(home, instance)
    tmp = os.path.join(folder, f".{instance}.json.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(secrets, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read(home: str | Path, instance: str) -> dict[str, Any] | None:
    """An instance's secrets, or None when it has none."""
    try:
        with open(secrets_path(home, instance)) as f:
            data: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        return None
    return data


def remove(home: str | Path, instance: str) -> None:
    """Forget an instance's secrets (idempotent)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(secrets_path(home, instance))


def sweep(home: str | Path, keep: Iterable[str]) -> None:
    """Delete secrets files of instances not in ``keep`` (left by a rolled-back creation)."""
    wanted = {f"{name}.json" for name in keep}
    try:
        entries = list(os.scandir(secrets_dir(home)))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name not in wanted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
