"""Secret values of an instance's plan, kept out of everything las shows or stores openly.

A plan marks secrets (``Parameter.secret``, ``EnvVar.secret``: declared ``secret: true``
or named like ``*_KEY``, ``*_TOKEN``, ``*PASSWORD*``, ``*SECRET*``). The runtime must still
pass the real values to the workload, so they are split off when an instance is created:

* the plan stored in ``state.db`` is the plan as shown (``masking.masked``): the value of
  each secret parameter and of each secret env entry is ``***``, and each argv item,
  workdir, volume source or health command item into which the planner substituted a
  secret parameter is the planner's rendering of the same template with the secret as
  ``***`` (``--key=***``). Nothing else is touched: a secret that equals a word, a port
  number or a letter elsewhere in the plan changes nothing there, so the stored plan
  always loads and what other commands read from it stays true;
* ``$LAS_HOME/secrets/INSTANCE.json`` (0600, in a 0700 directory) holds ``values`` (the
  secret values), ``fields`` (for each masked field, its path in the plan and its real
  text) and ``format`` (2). Only the supervisor reads the real text, at exec time
  (``reveal``); ``las rm`` deletes the file; a file whose instance is gone (a creation
  rolled back) is deleted when the next instance is created.

Text las composes itself (reasons, events, its lines in a run's log, the supervisor's
log) is composed from the shown plan. ``mask`` (by value) is only applied to what las
quotes from elsewhere: a workload's output line in a reason, an engine's error, a health
command's output. The workload's own output is the workload's: a module that prints its
secret prints it into its log (``las logs``).

Plans stored before format 2 were masked by search and replace over whole fields, which
could hit a field where no secret sits (a parameter's ``source`` "default", a word in a
decision). ``stored_plan`` gives such fields their true text back on reading (from the
file's ``fields``); fields where a secret can sit keep their old masking.

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

from localaistack.masking import (
    MASK,
    SECRET_POSITIONS,
    SHOWN_POSITIONS,
    differences,
    mask,
    masked,
    position,
    secret_values,
)

__all__ = ["MASK", "mask", "reveal", "secret_values", "split", "stored_plan"]

FORMAT = 2  # the secrets file's format: 2 = structural masking (1: none, by substitution)
# Decisions of plans stored before format 2 that quoted a path which could hold a secret:
# their old masking is kept.
_QUOTING_TOPICS = frozenset({"executable", "vram estimate", "trust"})


def split(plan: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The plan as stored (secrets masked where they sit), and what ``reveal`` needs (None:
    no secret)."""
    values = secret_values(plan)
    if not values and not plan.get("shown"):  # nothing to mask (the start path: no walk)
        return plan, None
    shown = masked(plan)
    fields = differences(plan, shown)
    if not values and not fields:
        return shown, None
    return shown, {"format": FORMAT, "values": values, "fields": fields}


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


def _may_hold_secret(real: dict[str, Any], path: list[Any]) -> bool:
    """Whether a secret can sit at ``path`` of the (real) plan."""
    where = position(path)
    if where in SHOWN_POSITIONS:  # a secret parameter may have been substituted here
        return True
    if where == ("parameters", "#", "value"):
        return bool(real["parameters"][path[1]].get("secret"))
    if where in SECRET_POSITIONS:  # an env entry's value
        return bool(real[path[0]]["env"][path[2]].get("secret"))
    if path[0] == "decisions":  # one that quotes a path which may hold a secret
        return len(path) > 1 and real["decisions"][path[1]].get("topic") in _QUOTING_TOPICS
    return False


def repaired(plan: dict[str, Any], secrets: dict[str, Any] | None) -> dict[str, Any]:
    """A stored plan as shown: one stored before format 2 with its true text back in every
    field its masking by substitution changed where no secret can sit; ``plan`` is not
    changed."""
    if not secrets or secrets.get("format", 1) >= FORMAT:
        return plan
    real = reveal(plan, secrets)
    out: dict[str, Any] = json.loads(json.dumps(plan))
    for path, text in secrets["fields"]:
        if _may_hold_secret(real, path):
            continue
        target: Any = out
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = text
    return out


def stored_plan(home: str | Path, instance: str, text: str) -> dict[str, Any]:
    """An instance's stored plan (its JSON text) as data, as shown (see ``repaired``)."""
    plan: dict[str, Any] = json.loads(text)
    if MASK not in text:  # nothing masked: no secrets file to read
        return plan
    return repaired(plan, read(home, instance))


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
