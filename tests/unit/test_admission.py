"""Admission: the reservation ledger, capacity and live checks, overcommit, concurrency.

A real SQLite store in ``tmp_path``; saved hardware profiles; fake live usage and a fake
NVML module (there is no GPU here).
"""

from __future__ import annotations

import os
import threading
import time
import uuid as uuidlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from localaistack.control.admission import (
    Capacity,
    LiveUsage,
    ResourcesRefused,
    admit_new,
    live_usage,
    readmit,
    release_targets,
    wait_gpu_release,
)
from localaistack.control.hardware import GpuInfo, HardwareProfile, load_profile
from localaistack.control.manifest import parse_manifest
from localaistack.control.planner import PlanRequest, make_plan
from localaistack.control.policy import Policy, parse_policy
from localaistack.errors import AdmissionRefused, InstanceConflict
from localaistack.plan import (
    ExecutionPlan,
    GpuAssignment,
    ModuleRef,
    NativeSpec,
    Resources,
)
from localaistack.store.db import (
    ADMISSION_HOLD,
    Store,
    create_run,
    mark_admitted,
    reservations,
    set_run_state,
)

PROFILES = Path(__file__).resolve().parent.parent / "data" / "profiles"
GIB = 1 << 30
MIB = 1 << 20


def profile(name: str) -> HardwareProfile:
    return load_profile(PROFILES / f"{name}.json")


def policy(**fields: Any) -> Policy:
    data: dict[str, Any] = {"reserve": {"memory": "1GiB", "vram": "512MiB"}, **fields}
    return parse_policy(yaml.safe_dump(data), "test-policy.yaml")


def gpu(hw: HardwareProfile, index: int = 0) -> GpuInfo:
    return hw.gpus[index]


def make(
    module: str = "llm",
    *,
    vram: int = 0,
    on: GpuInfo | None = None,
    memory: int | None = None,
    cpus: float | None = None,
) -> ExecutionPlan:
    gpus = (
        (GpuAssignment(index=on.index, uuid=on.uuid, vendor=on.vendor, vram=vram),)
        if on is not None
        else ()
    )
    return ExecutionPlan(
        module=ModuleRef(
            name=module, version="1", category="llm", source="builtin", digest="0" * 64
        ),
        mode="native",
        native=NativeSpec(argv=("/bin/true",)),
        resources=Resources(memory=memory, cpus=cpus, gpus=len(gpus), vram=vram),
        gpus=gpus,
    )


def factory(plan: ExecutionPlan) -> Any:
    return lambda _allocate: plan


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(tmp_path / "state.db")
    yield s
    s.close()


def start_run(store: Store, name: str, state: str = "running") -> str:
    """Create ``name``'s next run (as the runtime does) and move it to ``state``."""
    run_id = uuidlib.uuid4().hex[:12]
    with store.transaction() as c:
        create_run(
            c,
            run_id=run_id,
            instance=name,
            backend="native",
            boot_id="b",
            log_path="/dev/null",
            reason="test",
        )
        if state != "starting":
            set_run_state(c, run_id, state, "test")
    return run_id


def end_run(store: Store, run_id: str, state: str = "stopped") -> None:
    with store.transaction() as c:
        set_run_state(c, run_id, state, "test")


def running(store: Store, name: str, plan: ExecutionPlan) -> str:
    admit_new(store, name, factory(plan))
    return start_run(store, name)


# --------------------------------------------------------------------------- the ledger


def test_admit_within_capacity_and_the_ledger_holds_it(store: Store) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    notes: list[str] = []
    admit_new(
        store,
        "llm1",
        factory(make(vram=5 * GIB, on=g, memory=4 * GIB, cpus=2)),
        capacity=Capacity.of(hw, policy()),
        live=LiveUsage(ram_available=20 * GIB, gpu_free={g.uuid: 7 * GIB}),
        notes=notes,
    )
    assert notes == []
    with store.transaction() as c:
        (r,) = reservations(c)
    assert (r.instance, r.memory, r.cpus, r.gpus, r.state) == (
        "llm1",
        4 * GIB,
        2.0,
        {g.uuid: 5 * GIB},
        "admitted",
    )
    run_id = start_run(store, "llm1", "starting")
    with store.transaction() as c:
        assert [r.state for r in reservations(c)] == ["starting"]
    end_run(store, run_id, "failed")
    with store.transaction() as c:
        assert reservations(c) == []


def test_ledger_full_refuses_the_second_and_names_the_first(store: Store) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    admit_new(store, "llm1", factory(make(vram=5 * GIB, on=g)), capacity=Capacity.of(hw, policy()))
    start_run(store, "llm1")
    with pytest.raises(ResourcesRefused) as info:
        admit_new(
            store, "llm2", factory(make(vram=5 * GIB, on=g)), capacity=Capacity.of(hw, policy())
        )
    err = info.value
    assert isinstance(err, AdmissionRefused)
    assert err.message == (
        f"llm2 asks for 5.0GiB of VRAM on GPU 0 ({g.uuid}); 2.5GiB is free: 8.0GiB total "
        "- 512.0MiB reserve (policy) - 5.0GiB held by llm1"
    )
    assert err.hint is not None
    assert "`las stop llm1`" in err.hint and "overcommit: allow" in err.hint
    (short,) = err.details["shortfalls"]
    assert short["resource"] == "vram" and short["gpu"] == g.uuid and short["index"] == 0
    assert short["requested"] == 5 * GIB and short["free"] == 5 * GIB // 2
    assert short["held"] == [{"instance": "llm1", "amount": 5 * GIB, "state": "running"}]
    assert short["limited_by"] == ["ledger"]
    assert store.instance("llm2") is None  # nothing was created


def test_an_admitted_instance_holds_before_its_run_exists(store: Store) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    admit_new(store, "llm1", factory(make(vram=5 * GIB, on=g)), capacity=Capacity.of(hw, policy()))
    with pytest.raises(ResourcesRefused, match=r"5\.0GiB held by llm1 \(admitted\)"):
        admit_new(
            store, "llm2", factory(make(vram=5 * GIB, on=g)), capacity=Capacity.of(hw, policy())
        )
    with store.transaction() as c:
        # A `las run` that died between admission and start holds only for a while.
        assert reservations(c, now=time.time() + ADMISSION_HOLD + 1) == []


def test_live_memory_low_though_the_ledger_is_empty(store: Store) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    live = LiveUsage(
        ram_available=20 * GIB,
        gpu_free={g.uuid: int(1.5 * GIB)},
        gpu_source={g.uuid: "NVML"},
        known=[f"pid 4242 python3: 6.0GiB on {g.uuid}", "pid 7 java: 3.0GiB RAM"],
    )
    with pytest.raises(ResourcesRefused) as info:
        admit_new(
            store,
            "llm1",
            factory(make(vram=5 * GIB, on=g)),
            capacity=Capacity.of(hw, policy()),
            live=live,
        )
    err = info.value
    assert err.message == (
        f"llm1 asks for 5.0GiB of VRAM on GPU 0 ({g.uuid}); 7.5GiB is free: 8.0GiB total "
        "- 512.0MiB reserve (policy); live: 1.5GiB free (NVML), 1.0GiB after the reserve; "
        f"held outside las: pid 4242 python3: 6.0GiB on {g.uuid}"
    )
    assert err.hint is not None and "pid 4242" in err.hint
    (short,) = err.details["shortfalls"]
    assert short["limited_by"] == ["live"]
    assert short["others"] == [f"pid 4242 python3: 6.0GiB on {g.uuid}"]
    assert short["live_usable"] == GIB


def test_overcommit_allow_admits_and_records_it(store: Store) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    allow = policy(overcommit="allow")
    running(store, "llm1", make(vram=5 * GIB, on=g))
    notes: list[str] = []
    admit_new(
        store,
        "llm2",
        factory(make(vram=5 * GIB, on=g)),
        capacity=Capacity.of(hw, allow),
        notes=notes,
    )
    assert store.instance("llm2") is not None
    assert len(notes) == 1
    assert notes[0].startswith("overcommitted (policy overcommit: allow): llm2 asks for 5.0GiB")
    (ev,) = [e for e in store.events() if e.type == "overcommit"]
    assert ev.instance == "llm2" and "held by llm1" in ev.message
    with store.transaction() as c:
        assert sum(r.gpus[g.uuid] for r in reservations(c)) == 10 * GIB


def test_the_reserve_is_respected(store: Store) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    big = policy(reserve={"memory": "1GiB", "vram": "4GiB"})
    with pytest.raises(
        ResourcesRefused, match=r"4\.0GiB is free: 8\.0GiB total - 4\.0GiB reserve \(policy\)$"
    ):
        admit_new(store, "llm1", factory(make(vram=5 * GIB, on=g)), capacity=Capacity.of(hw, big))
    admit_new(store, "llm1", factory(make(vram=5 * GIB, on=g)), capacity=Capacity.of(hw, policy()))
    with store.transaction() as c:
        assert [r.instance for r in reservations(c)] == ["llm1"]


def test_fits_exactly_to_the_byte(store: Store) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    admit_new(
        store,
        "llm1",
        factory(make(vram=8 * GIB - 512 * MIB, on=g)),
        capacity=Capacity.of(hw, policy()),
        live=LiveUsage(gpu_free={g.uuid: 8 * GIB}),
    )
    with pytest.raises(ResourcesRefused, match=r"asks for 1\.0MiB of VRAM"):
        admit_new(store, "llm2", factory(make(vram=MIB, on=g)), capacity=Capacity.of(hw, policy()))


def test_a_stopped_instance_releases_its_reservation(store: Store) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    run_id = running(store, "llm1", make(vram=5 * GIB, on=g))
    with pytest.raises(ResourcesRefused):
        admit_new(
            store, "llm2", factory(make(vram=5 * GIB, on=g)), capacity=Capacity.of(hw, policy())
        )
    end_run(store, run_id, "stopped")
    admit_new(store, "llm2", factory(make(vram=5 * GIB, on=g)), capacity=Capacity.of(hw, policy()))
    with store.transaction() as c:
        assert [r.instance for r in reservations(c)] == ["llm2"]


def test_a_stopping_instance_still_holds(store: Store) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    run_id = running(store, "llm1", make(vram=5 * GIB, on=g))
    with store.transaction() as c:
        set_run_state(c, run_id, "stopping", "test")
    with pytest.raises(ResourcesRefused, match=r"held by llm1 \(stopping\)"):
        admit_new(
            store, "llm2", factory(make(vram=5 * GIB, on=g)), capacity=Capacity.of(hw, policy())
        )


def test_ram_refusal_names_holders(store: Store) -> None:
    hw = profile("1x8gib")  # 32GiB of RAM
    running(store, "db", make(memory=20 * GIB))
    with pytest.raises(ResourcesRefused) as info:
        admit_new(
            store,
            "llm2",
            factory(make(memory=16 * GIB)),
            capacity=Capacity.of(hw, policy()),
            live=LiveUsage(ram_available=25 * GIB, known=["pid 7 java: 3.0GiB RAM"]),
        )
    assert info.value.message == (
        "llm2 asks for 16.0GiB of RAM; 11.0GiB is free: 32.0GiB total - 1.0GiB reserve "
        "(policy) - 20.0GiB held by db; live: 25.0GiB free (MemAvailable), 24.0GiB after "
        "the reserve; held outside las: pid 7 java: 3.0GiB RAM"
    )
    assert info.value.details["shortfalls"][0]["resource"] == "ram"
    admit_new(store, "small", factory(make(memory=10 * GIB)), capacity=Capacity.of(hw, policy()))


def test_ram_refusal_from_live_memory(store: Store) -> None:
    hw = profile("1x8gib")
    with pytest.raises(ResourcesRefused) as info:
        admit_new(
            store,
            "llm",
            factory(make(memory=8 * GIB)),
            capacity=Capacity.of(hw, policy()),
            live=LiveUsage(ram_available=4 * GIB, known=["pid 7 java: 24.0GiB RAM"]),
        )
    (short,) = info.value.details["shortfalls"]
    assert short["limited_by"] == ["live"] and short["live_usable"] == 3 * GIB
    assert "held outside las: pid 7 java: 24.0GiB RAM" in info.value.message


def test_ram_and_vram_short_at_once_are_both_named(store: Store) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    with pytest.raises(ResourcesRefused) as info:
        admit_new(
            store,
            "huge",
            factory(make(vram=9 * GIB, on=g, memory=40 * GIB)),
            capacity=Capacity.of(hw, policy()),
        )
    lines = info.value.message.split("\n  ")
    assert len(lines) == 2
    assert lines[0].startswith("huge asks for 40.0GiB of RAM")
    assert lines[1].startswith("huge asks for 9.0GiB of VRAM on GPU 0")


def test_another_gpu_with_room_is_suggested(store: Store) -> None:
    hw = profile("2x24gib")
    g0, g1 = hw.gpus
    running(store, "llm1", make(vram=20 * GIB, on=g0))
    with pytest.raises(ResourcesRefused) as info:
        admit_new(
            store, "llm2", factory(make(vram=20 * GIB, on=g0)), capacity=Capacity.of(hw, policy())
        )
    assert info.value.hint is not None
    assert "GPU 1 has 23.5GiB free (plan it again)" in info.value.hint
    admit_new(
        store, "llm2", factory(make(vram=20 * GIB, on=g1)), capacity=Capacity.of(hw, policy())
    )


def test_multi_gpu_plans_hold_each_gpu(store: Store) -> None:
    hw = profile("4x80gib")
    plan = make(vram=60 * GIB)
    plan = plan.model_copy(
        update={
            "gpus": tuple(
                GpuAssignment(index=g.index, uuid=g.uuid, vendor=g.vendor, vram=60 * GIB)
                for g in hw.gpus[:2]
            )
        },
    )
    admit_new(store, "big", factory(plan), capacity=Capacity.of(hw, policy()))
    with pytest.raises(ResourcesRefused, match=r"held by big"):
        admit_new(
            store,
            "other",
            factory(make(vram=30 * GIB, on=hw.gpus[1])),
            capacity=Capacity.of(hw, policy()),
        )
    admit_new(
        store,
        "other",
        factory(make(vram=30 * GIB, on=hw.gpus[2])),
        capacity=Capacity.of(hw, policy()),
    )


def test_cpus_are_reported_not_refused(store: Store) -> None:
    hw = profile("1x8gib")  # 16 threads
    running(store, "a", make(cpus=12))
    notes: list[str] = []
    admit_new(store, "b", factory(make(cpus=8)), capacity=Capacity.of(hw, policy()), notes=notes)
    assert notes == [
        "CPUs oversubscribed: b asks for 8 CPU(s); 20 in all (a 12) on 16 threads "
        "(admitted: CPU time is shared)"
    ]


def test_without_hardware_and_policy_nothing_is_checked(store: Store) -> None:
    g = gpu(profile("1x8gib"))
    running(store, "llm1", make(vram=5 * GIB, on=g))
    admit_new(store, "llm2", factory(make(vram=5 * GIB, on=g)))
    readmit(store, "llm2", make(vram=5 * GIB, on=g))


def test_a_plan_made_by_the_planner(store: Store) -> None:
    hw = profile("1x8gib")
    text = yaml.safe_dump(
        {
            "name": "gpu-llm",
            "version": "1.0",
            "hardware": {"gpu": {"vram_min": "5GiB"}},
            "runtime": {
                "modes": ["native"],
                "native": {"command": ["llm-server", "--port", "${ports.http}"]},
                "ports": [{"name": "http", "port": 8080}],
                "resources": {"memory": "4GiB"},
            },
        }
    )
    loaded = parse_manifest(text, Path("/manifests/gpu-llm.yaml"))
    pol = policy(trusted_native=["gpu-llm"])

    def plan_with(allocate: Any) -> ExecutionPlan:
        return make_plan(
            loaded, hw, pol, PlanRequest(), allocate, which=lambda cmd, _p: f"/usr/bin/{cmd}"
        )

    plan = admit_new(store, "one", plan_with, capacity=Capacity.of(hw, pol))
    assert plan.gpus[0].vram == 5 * GIB and plan.resources.memory == 4 * GIB
    with pytest.raises(ResourcesRefused, match=r"two asks for 5\.0GiB of VRAM .* held by one"):
        admit_new(store, "two", plan_with, capacity=Capacity.of(hw, pol))


# --------------------------------------------------------------------------- readmit


def test_readmit_does_not_count_the_instance_against_itself(store: Store) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    plan = make(vram=7 * GIB, on=g)
    run_id = running(store, "llm1", plan)
    end_run(store, run_id)
    readmit(store, "llm1", plan, capacity=Capacity.of(hw, policy()))
    start_run(store, "llm1")
    with pytest.raises(InstanceConflict, match="already running"):
        readmit(store, "llm1", plan, capacity=Capacity.of(hw, policy()))


def test_readmit_refused_while_another_holds_the_gpu(store: Store) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    plan1 = make(vram=5 * GIB, on=g)
    end_run(store, running(store, "llm1", plan1))
    running(store, "llm2", make(vram=5 * GIB, on=g))
    with pytest.raises(ResourcesRefused, match=r"llm1 asks for .* held by llm2"):
        readmit(store, "llm1", plan1, capacity=Capacity.of(hw, policy()))
    with store.transaction() as c:
        assert [r.instance for r in reservations(c)] == ["llm2"]  # no hold was taken


def test_readmit_of_a_gpu_this_machine_lacks(store: Store) -> None:
    other = profile("2x24gib")
    plan = make(vram=5 * GIB, on=other.gpus[1])
    end_run(store, running(store, "llm1", plan))
    with pytest.raises(ResourcesRefused, match=r"which this machine does not have"):
        readmit(store, "llm1", plan, capacity=Capacity.of(profile("1x8gib"), policy()))


# --------------------------------------------------------------------------- concurrency


def _race(db: Path, requests: list[tuple[str, ExecutionPlan]], hw: HardwareProfile) -> list[Any]:
    barrier = threading.Barrier(len(requests))
    results: list[Any] = [None] * len(requests)

    def slow(plan: ExecutionPlan) -> Any:
        def make_it(_allocate: Any) -> ExecutionPlan:
            time.sleep(0.05)  # inside the write lock: widen the window for a lost update
            return plan

        return make_it

    def worker(i: int, name: str, plan: ExecutionPlan) -> None:
        s = Store(db)
        try:
            barrier.wait()
            admit_new(s, name, slow(plan), capacity=Capacity.of(hw, policy()))
            results[i] = "ok"
        except Exception as exc:
            results[i] = exc
        finally:
            s.close()

    threads = [threading.Thread(target=worker, args=(i, n, p)) for i, (n, p) in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.mark.parametrize("rounds", range(3))
def test_two_admissions_of_the_last_gpu_exactly_one_wins(tmp_path: Path, rounds: int) -> None:
    hw = profile("2x24gib")
    g0, g1 = hw.gpus
    db = tmp_path / "state.db"
    s = Store(db)
    running(s, "first", make(vram=20 * GIB, on=g0))
    s.close()
    results = _race(db, [("a", make(vram=20 * GIB, on=g1)), ("b", make(vram=20 * GIB, on=g1))], hw)
    assert sorted(r if r == "ok" else type(r).__name__ for r in results) == [
        "ResourcesRefused",
        "ok",
    ]
    loser = next(r for r in results if r != "ok")
    winner = "a" if results[0] == "ok" else "b"
    assert f"20.0GiB held by {winner} (admitted)" in loser.message


def test_two_admissions_of_the_last_ram_exactly_one_wins(tmp_path: Path) -> None:
    hw = profile("1x8gib")  # 32GiB - 1GiB reserve
    results = _race(
        tmp_path / "state.db",
        [("a", make(memory=20 * GIB)), ("b", make(memory=20 * GIB))],
        hw,
    )
    assert sorted(r if r == "ok" else type(r).__name__ for r in results) == [
        "ResourcesRefused",
        "ok",
    ]


# --------------------------------------------------------------------------- live usage


class FakeNvml:
    """Enough of pynvml for live_usage and wait_gpu_release."""

    def __init__(self, gpus: dict[str, list[int]], procs: dict[str, list[Any]] | None = None):
        self.gpus = gpus  # uuid -> successive free values (the last one repeats)
        self.procs = procs or {}
        self.uuids = list(gpus)
        self.shutdowns = 0

    def nvmlInit(self) -> None:  # noqa: N802
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:  # noqa: N802
        return self.uuids[i]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:  # noqa: N802
        if uuid not in self.gpus:
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return uuid

    def nvmlDeviceGetUUID(self, handle: str) -> bytes:  # noqa: N802
        return handle.encode()

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:  # noqa: N802
        values = self.gpus[handle]
        free = values.pop(0) if len(values) > 1 else values[0]
        return SimpleNamespace(free=free, total=8 * GIB, used=8 * GIB - free)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[Any]:  # noqa: N802
        return self.procs.get(handle, [])


class NoNvml:
    def nvmlInit(self) -> None:  # noqa: N802
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")


def fake_proc(root: Path, procs: dict[int, tuple[int, str, int]], avail_kb: int) -> Path:
    """A /proc with ``pid: (ppid, comm, rss pages)`` and a meminfo."""
    root.mkdir()
    (root / "meminfo").write_text(
        f"MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   {avail_kb} kB\n"
    )
    for pid, (ppid, comm, rss) in procs.items():
        (root / str(pid)).mkdir()
        rest = ["S", str(ppid)] + ["0"] * 19 + [str(rss)] + ["0"] * 20
        (root / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")
        (root / str(pid) / "cgroup").write_text("0::/user.slice\n")
    return root


def test_live_usage_from_nvml_and_proc(tmp_path: Path) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    pages = (6 * GIB) // 4096
    root = fake_proc(
        tmp_path / "proc",
        {
            100: (1, "las-supervisor", 10),
            101: (100, "llama-server", 10),  # las's workload (a child of its supervisor)
            200: (1, "python3", 10),
            300: (1, "java", pages),
            301: (1, "small", 10),
        },
        avail_kb=12 * 1024 * 1024,
    )
    nvml = FakeNvml(
        {g.uuid: [3 * GIB]},
        {
            g.uuid: [
                SimpleNamespace(pid=101, usedGpuMemory=2 * GIB),
                SimpleNamespace(pid=200, usedGpuMemory=3 * GIB),
                SimpleNamespace(pid=999, usedGpuMemory=None),
            ]
        },
    )
    live = live_usage(Capacity.of(hw, policy()), managed_pids={100}, nvml=nvml, proc_root=root)
    assert live.ram_available == 12 * GIB
    assert live.gpu_free == {g.uuid: 3 * GIB} and live.gpu_source == {g.uuid: "NVML"}
    assert live.others[:2] == [
        f"pid 200 python3: 3.0GiB on {g.uuid}",
        f"pid 999 ?: unknown memory on {g.uuid}",
    ]
    if os.sysconf("SC_PAGE_SIZE") == 4096:
        assert live.others[2:] == ["pid 300 java: 6.0GiB RAM"]
    assert nvml.shutdowns == 1
    assert live.notes == []


def test_live_usage_knows_las_from_the_store(tmp_path: Path, store: Store) -> None:
    hw = profile("1x8gib")
    g = gpu(hw)
    run_id = running(store, "llm1", make(vram=5 * GIB, on=g))
    with store.transaction() as c:
        c.execute("UPDATE runs SET pid=?, sup_pid=? WHERE run_id=?", (101, 100, run_id))
    root = fake_proc(
        tmp_path / "proc",
        {100: (1, "sup", 1), 101: (100, "llama", 1), 102: (101, "worker", 1), 5: (1, "x", 1)},
        avail_kb=1024,
    )
    procs = {g.uuid: [SimpleNamespace(pid=p, usedGpuMemory=GIB) for p in (102, 5)]}
    live = live_usage(
        Capacity.of(hw, policy()),
        store=store,
        nvml=FakeNvml({g.uuid: [GIB]}, procs),
        proc_root=root,
    )
    assert live.others == [f"pid 5 x: 1.0GiB on {g.uuid}"]


def test_live_usage_without_nvml_never_crashes(tmp_path: Path) -> None:
    hw = profile("1x8gib")
    live = live_usage(Capacity.of(hw, policy()), nvml=NoNvml(), proc_root=tmp_path / "nothing")
    assert live.gpu_free == {} and live.ram_available is None
    assert any("NVML not available" in n for n in live.notes)
    # The real pynvml (or its absence) on this machine: no exception either.
    real = live_usage(Capacity.of(hw, policy()))
    assert real.ram_available is None or real.ram_available > 0


def test_live_usage_on_a_cpu_only_machine_does_not_ask_nvml(tmp_path: Path) -> None:
    live = live_usage(Capacity.of(profile("cpu-only"), policy()), nvml=NoNvml())
    assert live.notes == [] and live.gpu_free == {}


# --------------------------------------------------------------------------- release


def test_wait_gpu_release_without_nvml_returns_at_once() -> None:
    t0 = time.monotonic()
    assert wait_gpu_release(["GPU-x"], {"GPU-x": GIB}, nvml=NoNvml()) == (
        True,
        "no NVML: not checked",
    )
    ok, _message = wait_gpu_release(["GPU-x"], {"GPU-x": GIB}, timeout=5)  # real pynvml or none
    assert time.monotonic() - t0 < 2
    assert ok  # no GPU here: not checked, or not known to NVML


def test_wait_gpu_release_waits_until_the_memory_is_free() -> None:
    nvml = FakeNvml({"GPU-a": [GIB, 2 * GIB, 6 * GIB], "GPU-b": [8 * GIB]})
    ok, message = wait_gpu_release(
        ["GPU-a", "GPU-b"], {"GPU-a": 5 * GIB, "GPU-b": GIB}, timeout=5, poll=0.01, nvml=nvml
    )
    assert ok
    assert message == "GPU memory released (GPU-a: 6.0GiB free, GPU-b: 8.0GiB free)"
    assert nvml.gpus["GPU-a"] == [6 * GIB]  # it polled until then


def test_wait_gpu_release_gives_up_after_the_timeout() -> None:
    nvml = FakeNvml({"GPU-a": [GIB]})
    t0 = time.monotonic()
    ok, message = wait_gpu_release(
        ["GPU-a", "GPU-gone"], {"GPU-a": 5 * GIB}, timeout=0.2, poll=0.02, nvml=nvml
    )
    assert not ok and 0.2 <= time.monotonic() - t0 < 2
    assert message == (
        "GPU memory not released after 0.2s: GPU-a: 1.0GiB free, 5.0GiB expected; "
        "not known to NVML: GPU-gone"
    )
    assert nvml.shutdowns == 1


def test_release_targets_are_the_plans_vram_and_the_reserve() -> None:
    g = gpu(profile("1x8gib"))
    cap = Capacity.of(profile("cpu-only"), policy())
    assert release_targets(make(vram=5 * GIB, on=g), cap) == {g.uuid: 5 * GIB + 512 * MIB}
    assert release_targets(make(), cap) == {}


def test_mark_admitted_on_a_missing_instance_is_harmless(store: Store) -> None:
    with store.transaction() as c:
        mark_admitted(c, "nobody")
        assert reservations(c) == []
