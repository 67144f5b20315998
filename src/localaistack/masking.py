"""Secret values in a plan (as JSON data): where they sit, and the plan as shown.

Masking is structural: it replaces the values of the fields where a secret sits, and
nothing else. A secret sits in

* a secret parameter's ``value``;
* a secret env entry's ``value`` (``native.env``, ``container.env``);
* a string into which the planner substituted a secret parameter (an argv item, a
  workdir, a volume source, a health command item). The planner renders each such string
  a second time from the same template with the secret as ``***``, and lists it in the
  plan's ``shown`` entries (``{"path": "native.argv.3", "text": "--key=***"}``).

No text is searched for a secret value: a secret that equals a common word, a port
number or a single letter changes no other field. ``mask`` (search and replace by value)
is only for text las quotes from elsewhere (the workload's output, an engine's message),
never for text las composes itself.

Standard library only: the supervisor masks with it. The store keeps plans in the shown
form (``masked``), and a plan's id (plan.py) is a hash of that form.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MASK = "***"
# The planner lists a string as secret-bearing only at these positions (path patterns:
# "#" stands for a list index). A shown entry elsewhere is refused: masking never touches
# a field that cannot hold a substituted parameter.
SHOWN_POSITIONS = frozenset(
    {
        ("native", "argv", "#"),
        ("native", "workdir"),
        ("container", "argv", "#"),
        ("container", "volumes", "#", "source"),
        ("health", "command", "#"),
    }
)
# Every position a secret can sit in (the secrets file's fields are at these).
SECRET_POSITIONS = SHOWN_POSITIONS | {
    ("parameters", "#", "value"),
    ("native", "env", "#", "value"),
    ("container", "env", "#", "value"),
}


def parse_path(path: str) -> list[str | int]:
    """``"native.argv.3"`` as ``["native", "argv", 3]``."""
    return [int(p) if p.isdigit() else p for p in path.split(".")]


def position(path: Iterable[str | int]) -> tuple[str, ...]:
    """A path's pattern: list indexes as ``#``."""
    return tuple("#" if isinstance(p, int) else p for p in path)


def secret_values(plan: dict[str, Any]) -> list[str]:
    """The non-empty secret values of a plan (as JSON data), longest first: what ``mask``
    looks for in text that las quotes from elsewhere."""
    found = {
        str(p["value"])
        for p in plan.get("parameters") or ()
        if p.get("secret") and p.get("value") is not None  # unset is no secret
    }
    for section in ("native", "container"):
        spec = plan.get(section) or {}
        found |= {str(v["value"]) for v in spec.get("env") or () if v.get("secret")}
    # Longest first: a secret that contains another is masked whole.
    return sorted((v for v in found if v and v != MASK), key=lambda v: (-len(v), v))


def mask(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of each value replaced by ``***``.

    Only for text las quotes from elsewhere (a workload's output line, an engine's error):
    applied to a whole message it would change every word that contains a short secret.
    """
    for v in values:
        if v:
            text = text.replace(v, MASK)
    return text


def _put(obj: Any, path: list[str | int], value: Any) -> Any:
    """``obj`` with the string at ``path`` replaced, copying what lies on the path (the
    caller's data is never changed).

    Raises:
        ValueError: there is no string at ``path``.
    """
    key = path[0]
    try:
        old = obj[key]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"no field {key!r} in the plan") from None
    if len(path) == 1 and not isinstance(old, str):
        raise ValueError(f"the plan's field {key!r} is not a string")
    new: Any = list(obj) if isinstance(obj, list) else dict(obj)
    new[key] = value if len(path) == 1 else _put(old, path[1:], value)
    return new


def masked(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan (as JSON data) as las shows and stores it: each secret value where it sits
    shown as ``***`` (empty values stay empty), every other field as it is. The ``shown``
    entries are applied and left out; ``plan`` is not changed.

    Raises:
        ValueError: a shown entry names a position no secret can be substituted into.
    """
    out = {k: v for k, v in plan.items() if k != "shown"}
    for i, p in enumerate(plan.get("parameters") or ()):
        if p.get("secret") and p.get("value"):
            out = _put(out, ["parameters", i, "value"], MASK)
    for section in ("native", "container"):
        for i, v in enumerate((plan.get(section) or {}).get("env") or ()):
            if v.get("secret") and v.get("value"):
                out = _put(out, [section, "env", i, "value"], MASK)
    for entry in plan.get("shown") or ():
        path = parse_path(entry["path"])
        if position(path) not in SHOWN_POSITIONS:
            raise ValueError(f"plan.shown: {entry['path']} is not where a secret can sit")
        out = _put(out, path, entry["text"])
    return out


def differences(real: Any, shown: Any, path: list[str | int] | None = None) -> list[list[Any]]:
    """``[path, real text]`` for each string of ``shown`` (a ``masked`` plan) that differs
    from ``real``: what putting the real plan back takes. A field-by-field comparison of
    two documents of the same shape."""
    path = path or []
    if isinstance(shown, dict):
        return [d for k, v in shown.items() for d in differences(real[k], v, [*path, k])]
    if isinstance(shown, list):
        return [d for i, v in enumerate(shown) for d in differences(real[i], v, [*path, i])]
    return [] if shown == real else [[path, real]]
