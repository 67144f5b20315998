"""The CPU-affinity fallback's choice and wording (runtime.cgroups, pure functions)."""

from __future__ import annotations

from localaistack.runtime.cgroups import affinity_for, cpu_list

WHY = "not enforced: no cgroup filesystem at /nowhere"


def test_cpu_list_reads_like_the_kernels() -> None:
    assert cpu_list([3]) == "3"
    assert cpu_list([3, 0, 1, 2]) == "0-3"
    assert cpu_list([0, 2, 5, 6, 7]) == "0,2,5-7"


def test_ceil_of_cpus_highest_numbered_first() -> None:
    pin, note = affinity_for(0.5, {0, 1, 2, 3}, WHY)
    assert pin == [3]
    assert note == (
        "cpu affinity: 1 core (cpu 3) for 0.5 CPU(s); "
        "no cgroup CPU quota: no cgroup filesystem at /nowhere"
    )
    pin, note = affinity_for(2.5, {0, 2, 4, 6, 8}, WHY)
    assert pin == [4, 6, 8] and note.startswith("cpu affinity: 3 cores (cpu 4,6,8) for 2.5 CPU(s)")


def test_as_many_cpus_as_allowed_is_not_enforced() -> None:
    pin, note = affinity_for(1.5, {0, 1}, WHY)
    assert pin is None
    assert note.startswith("not enforced: 1.5 CPU(s) asked for, and the supervisor may use only 2")
    assert note.endswith("no cgroup CPU quota: no cgroup filesystem at /nowhere")
