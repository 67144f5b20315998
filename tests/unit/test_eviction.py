"""The gateway's choice of a model to evict (control/eviction.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from localaistack.control.eviction import Candidate, next_victim, why_not

candidates = st.builds(
    Candidate,
    model=st.sampled_from(["a", "b", "c", "d", "e"]),
    instance=st.just("i"),
    state=st.sampled_from(["cold", "starting", "ready", "busy", "stopping"]),
    owned=st.booleans(),
    pinned=st.booleans(),
    in_flight=st.integers(0, 3),
    queued=st.integers(0, 3),
    last_used=st.floats(0, 1000, allow_nan=False),
)


@settings(deadline=None)  # a loaded CI machine must not fail it on time
@given(st.lists(candidates, max_size=8), st.sampled_from(["a", "b", "z"]))
def test_idle_lru_never_picks_what_it_must_not(cands: list[Candidate], needing: str) -> None:
    victim = next_victim(cands, "idle-lru", needing)
    eligible = [c for c in cands if c.model != needing and why_not(c) is None]
    if not eligible:
        assert victim is None
        return
    assert victim is not None and victim in eligible
    assert victim.owned and not victim.pinned and victim.state == "ready"
    assert victim.in_flight == 0 and victim.queued == 0 and victim.model != needing
    assert all(victim.last_used <= c.last_used for c in eligible)  # least recently used


@settings(deadline=None)
@given(st.lists(candidates, max_size=8))
def test_never_evicts_nothing(cands: list[Candidate]) -> None:
    assert next_victim(cands, "never", "z") is None


def test_reasons_are_told() -> None:
    base = Candidate("a", "i", "ready", True, False, 0, 0, 1.0)
    assert why_not(base) is None
    assert why_not(Candidate("a", "i", "ready", False, False, 0, 0, 1.0)) == (
        "its instance was not started by the gateway"
    )
    assert why_not(Candidate("a", "i", "ready", True, True, 0, 0, 1.0)) == "it is pinned"
    assert why_not(Candidate("a", "i", "busy", True, False, 2, 1, 1.0)) == (
        "2 request(s) in flight, 1 queued"
    )
    assert why_not(Candidate("a", "i", "starting", True, False, 0, 0, 1.0)) == "it is starting"
    older = Candidate("b", "j", "ready", True, False, 0, 0, 0.5)
    assert next_victim([base, older], "idle-lru", "z") == older
