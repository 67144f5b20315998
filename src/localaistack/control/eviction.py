"""Which model the gateway stops to make room for another (issue #20, the policy's
``gateway.evict``): a decision, so it is made here, from figures the caller passes; the
gateway acts on it and records it as an event.

``idle-lru``: among the models the gateway started itself, that are ready, not pinned and
have no request in flight or queued, the one used least recently (then by name, so that
the same state always gives the same answer). ``never``: none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

EvictPolicy = Literal["idle-lru", "never"]


@dataclass(frozen=True)
class Candidate:
    """A model with an instance, as the gateway sees it now."""

    model: str
    instance: str
    state: str  # cold, starting, ready, busy, stopping
    owned: bool  # its instance was started by the gateway (never evict another's)
    pinned: bool
    in_flight: int
    queued: int
    last_used: float  # monotonic seconds of its last request's end (or its start)


def why_not(c: Candidate) -> str | None:
    """Why ``c`` may not be evicted (None: it may)."""
    if not c.owned:
        return "its instance was not started by the gateway"
    if c.pinned:
        return "it is pinned"
    if c.in_flight or c.queued:
        return f"{c.in_flight} request(s) in flight, {c.queued} queued"
    if c.state != "ready":
        return f"it is {c.state}"
    return None


def next_victim(
    candidates: Iterable[Candidate], policy: EvictPolicy, needing: str
) -> Candidate | None:
    """The model to stop so that ``needing`` can start; None: nothing may be stopped."""
    if policy == "never":
        return None
    eligible = [c for c in candidates if c.model != needing and why_not(c) is None]
    return min(eligible, key=lambda c: (c.last_used, c.model), default=None)
