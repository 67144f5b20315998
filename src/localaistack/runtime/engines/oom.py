"""Whether a container was killed by its memory limit, where the engine does not always
say so: podman on cgroup v1 never reports OOMKilled, and docker records it from a
separate event, sometimes after ``wait`` has returned."""

from __future__ import annotations

from localaistack.runtime.engines.spec import ContainerState, format_bytes

# How long final_state() waits for docker to record OOMKilled (it comes from a separate
# event, later on a loaded machine); only an exit 137 under a memory limit waits.
OOM_SETTLE = 3.0


def oom_detected(
    engine: str, state: ContainerState, memory_limit: int | None, *, infer: bool
) -> tuple[bool, str]:
    """Whether the container was killed by its memory limit, and how that was decided.

    True when the engine reports OOMKilled. With ``infer`` (an engine that cannot report
    it), exit code 137 (SIGKILL) under a memory limit counts as out-of-memory, and the
    reason says that it was inferred. ``memory_limit`` is the limit set (bytes); None or 0
    falls back to the one inspect shows.
    """
    limit = memory_limit or state.memory_limit
    if state.oom_killed:
        return True, f"reported by {engine} (OOMKilled)"
    if state.exit_code != 137:
        return False, f"not reported by {engine} and exit code is {state.exit_code}"
    if not limit:
        return False, "exit 137 (SIGKILL) without a memory limit: not an out-of-memory kill"
    if infer:
        return True, (
            f"inferred: exit 137 under a {format_bytes(limit)} memory limit; {engine} on "
            "cgroup v1 does not report OOMKilled"
        )
    return False, (
        f"exit 137 under a {format_bytes(limit)} memory limit, but {engine} did not "
        "report OOMKilled: killed by a signal, not by the limit"
    )


def may_be_unrecorded(state: ContainerState | None) -> bool:
    """Whether ``state`` (an exited container) may be an OOM kill that the engine has not
    recorded yet: exit 137 under a memory limit without OOMKilled."""
    return (
        state is not None
        and not state.running
        and state.exit_code == 137
        and state.memory_limit > 0
        and not state.oom_killed
    )
