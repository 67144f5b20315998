"""Secret values in a plan (as JSON data): which they are, and the plan with them masked.

Standard library only: the supervisor masks with it. The store keeps plans in the masked
form, and a plan's id (plan.py) is a hash of that form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

MASK = "***"
# The plan's fields a parameter value can reach (by substitution, or quoted in a decision).
MASKED_SECTIONS = ("native", "container", "health", "parameters", "decisions")


def secret_values(plan: dict[str, Any]) -> list[str]:
    """The non-empty secret values of a plan (as JSON data), longest first."""
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
    """``text`` with every occurrence of each value replaced by ``***``."""
    for v in values:
        if v:
            text = text.replace(v, MASK)
    return text


def masked(
    plan: dict[str, Any], on_masked: Callable[[list[Any], str], None] | None = None
) -> dict[str, Any]:
    """A plan (as JSON data) with its secret values shown as ``***`` wherever they reach;
    ``on_masked(path, original)`` is told of each string changed."""
    values = secret_values(plan)
    if not values:
        return plan

    def walk(obj: Any, path: list[Any]) -> Any:
        if isinstance(obj, str):
            shown = mask(obj, values)
            if shown != obj and on_masked is not None:
                on_masked(path, obj)
            return shown
        if isinstance(obj, list):
            return [walk(x, [*path, i]) for i, x in enumerate(obj)]
        if isinstance(obj, dict):
            return {k: walk(v, [*path, k]) for k, v in obj.items()}
        return obj

    return {k: walk(v, [k]) if k in MASKED_SECTIONS else v for k, v in plan.items()}
