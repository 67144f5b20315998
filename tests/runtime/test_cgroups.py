"""Real cgroups: tracking, memory and CPU limits, OOM evidence, cleanup (needs root)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localaistack.runtime import cgroups

MiB = 1 << 20


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "cgroups are Linux only"
    if os.geteuid() != 0:
        return "needs root to create cgroups (CI runs these as root)"
    if cgroups.version_at() is None:
        return f"no cgroup filesystem at {cgroups.cgroup_root()}"
    run_id = f"test-probe-{uuid.uuid4().hex[:8]}"
    cg, notes = cgroups.create(run_id)
    if cg is None:
        return f"cgroupfs not writable here: {notes['processes']}"
    cg.remove()
    return None


SKIP = _skip_reason()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")

Make = Callable[..., tuple[cgroups.RunCgroup, dict[str, str]]]  # (memory=, cpus=)


@pytest.fixture
def make() -> Iterator[Make]:
    """Create run cgroups; every one (and every member) is gone after the test."""
    run_ids: list[str] = []

    def _make(
        memory: int | None = None, cpus: float | None = None
    ) -> tuple[cgroups.RunCgroup, dict[str, str]]:
        run_id = f"test-{uuid.uuid4().hex[:12]}"
        run_ids.append(run_id)
        cg, notes = cgroups.create(run_id, memory=memory, cpus=cpus)
        assert cg is not None, notes
        return cg, notes

    yield _make
    for run_id in run_ids:
        cg = cgroups.existing(run_id)
        if cg is not None:
            cg.kill_all()
            cg.remove()
        assert cgroups.existing(run_id) is None, f"cgroup of {run_id} left behind"


def _start(cg: cgroups.RunCgroup, code: str) -> subprocess.Popen[bytes]:
    files = cg.procs_files
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        preexec_fn=lambda: cgroups.join(files),  # noqa: PLW1509
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.communicate()  # reaps it and closes the pipe


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _require(note: str) -> None:
    if note.startswith("not enforced"):
        pytest.skip(f"this machine cannot enforce it: {note}")


def test_limits_are_written_and_noted(make: Make) -> None:
    cg, notes = make(memory=64 * MiB, cpus=0.5)
    _require(notes["memory"])
    _require(notes["cpus"])
    assert notes["processes"].startswith(f"cgroup {cg.version} ")
    assert str(64 * MiB) in notes["memory"]
    if cg.version == "v2":
        (d,) = cg.paths
        assert Path(d, "memory.max").read_text().strip() == str(64 * MiB)
        assert Path(d, "cpu.max").read_text().split() == ["50000", "100000"]
        assert notes["cpus"] == "cgroup v2 cpu.max 50000 100000"
        if Path(d, "memory.swap.max").exists():
            assert Path(d, "memory.swap.max").read_text().strip() == "0"
    else:
        assert set(cg.dirs) == {"pids", "memory", "cpu"}
        mem = cg.dirs["memory"]
        assert Path(mem, "memory.limit_in_bytes").read_text().strip() == str(64 * MiB)
        assert notes["memory"].startswith(f"cgroup v1 memory.limit_in_bytes = {64 * MiB}")
        if Path(mem, "memory.memsw.limit_in_bytes").exists():
            assert Path(mem, "memory.memsw.limit_in_bytes").read_text().strip() == str(64 * MiB)
            assert notes["memory"].endswith("(swap capped too)")
        cpu = cg.dirs["cpu"]
        assert Path(cpu, "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert Path(cpu, "cpu.cfs_period_us").read_text().strip() == "100000"
        assert notes["cpus"] == "cgroup v1 cpu.cfs_quota_us 50000 / period 100000"
        assert notes["processes"] == f"cgroup v1 pids {cg.dirs['pids']}"
    for path in cg.paths:
        assert path.endswith(os.path.join("las", os.path.basename(path)))


def test_no_limits_requested(make: Make) -> None:
    cg, notes = make()
    assert notes["memory"] == "none requested"
    assert notes["cpus"] == "none requested"
    assert len(cg.paths) == 1
    assert cg.memory_peak() is None or cg.version == "v2"
    assert cg.memory_limit() is None
    assert not cg.hit_limit()
    assert cg.oom_kills() == 0


def test_child_joins_and_is_a_member(make: Make) -> None:
    cg, _ = make(memory=256 * MiB, cpus=1.0)
    proc = _start(cg, "import time; print('up', flush=True); time.sleep(30)")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        assert proc.pid in cg.pids()
        for procs_file in cg.procs_files:  # in every hierarchy, not only the tracking one
            assert str(proc.pid) in Path(procs_file).read_text().split()
        assert cgroups.tree_rss(cg.pids()) > 0
    finally:
        _stop(proc)
    assert cg.pids() == []


def test_over_the_memory_limit_is_oom_killed(make: Make) -> None:
    cg, notes = make(memory=64 * MiB)
    _require(notes["memory"])
    code = (
        "chunks = []\n"
        "for i in range(25):\n"  # 25 x 8 MiB = 200 MiB, every page written
        "    chunks.append(bytearray(b'x') * (8 << 20))\n"
        "print('survived', flush=True)\n"
    )
    proc = _start(cg, code)
    out, _ = proc.communicate(timeout=60)
    assert out == b""
    assert proc.returncode == -signal.SIGKILL
    peak = cg.memory_peak()
    if peak is not None:
        assert 32 * MiB < peak <= 64 * MiB
    assert cg.memory_limit() == 64 * MiB
    assert cg.hit_limit()  # failcnt, or (where a kernel leaves failcnt at 0) the peak
    if cg.has_oom_counter():
        assert cg.oom_kills() >= 1
    # else: kernel < 4.13 on v1 has no oom_kill counter; SIGKILL + the limit hit is the evidence


def test_cpu_quota_caps_usage(make: Make) -> None:
    cg, notes = make(cpus=0.5)
    _require(notes["cpus"])
    proc = _start(cg, "print('up', flush=True)\nwhile True:\n    pass\n")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        time.sleep(0.3)
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(2.0)
        cpu1, t1 = _cpu_seconds(proc.pid), time.monotonic()
    finally:
        _stop(proc)
    rate = (cpu1 - cpu0) / (t1 - t0)
    assert rate <= 0.65, f"{rate:.2f} CPU-seconds per second under a 0.5 CPU quota"
    assert rate > 0.05, f"{rate:.2f}: the loop hardly ran at all"


def test_kill_all_reaches_a_descendant_that_left_the_session(make: Make) -> None:
    cg, _ = make()
    code = (
        "import os, time\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    os.write(w, str(os.getpid()).encode() + b'\\n')\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(os.read(r, 64).decode().strip(), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = _start(cg, code)
    try:
        assert proc.stdout is not None
        grandchild = int(proc.stdout.readline())
        assert os.getsid(grandchild) == grandchild != os.getsid(proc.pid)
        assert set(cg.pids()) == {proc.pid, grandchild}
        assert cg.kill_all() == 2
        assert cg.pids() == []
    finally:
        _stop(proc)
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _gone(grandchild)


def test_existing_finds_and_remove_removes(make: Make) -> None:
    cg, _ = make(memory=64 * MiB, cpus=0.5)
    run_id = os.path.basename(cg.paths[0])
    found = cgroups.existing(run_id)
    assert found is not None
    assert sorted(found.paths) == sorted(cg.paths)
    assert found.version == cg.version
    proc = _start(cg, "import time; print('up', flush=True); time.sleep(30)")
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    assert found.kill_all() == 1
    _stop(proc)
    found.remove()
    for path in cg.paths:
        assert not os.path.exists(path)
    assert cgroups.existing(run_id) is None
    cg.remove()  # twice is harmless


def test_kill_all_without_waiting_still_signals(make: Make) -> None:
    # timeout=0 once returned before signalling anyone: a run's leftovers survived it.
    cg, _ = make()
    proc = _start(cg, "import time; print('up', flush=True); time.sleep(30)")
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    assert cg.kill_all(timeout=0) == 1
    assert proc.wait(timeout=10) == -signal.SIGKILL
    proc.communicate()


def test_remove_says_what_stays(make: Make) -> None:
    cg, _ = make()
    proc = _start(cg, "import time; print('up', flush=True); time.sleep(30)")
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    try:
        failed = cg.remove(retries=2)  # a member is alive: the directory is busy
        assert failed and all("busy" in f for f in failed), failed
        assert failed[0].startswith(cg.paths[0])
    finally:
        _stop(proc)
    wait = time.monotonic() + 5
    while cg.remove() and time.monotonic() < wait:
        time.sleep(0.01)
    assert cg.remove() == []  # gone, and gone again is no failure
    assert cgroups.existing(os.path.basename(cg.path)) is None


def test_join_accepts_a_single_file(make: Make) -> None:
    cg, _ = make()
    procs_file = cg.procs_file
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE,
        preexec_fn=lambda: cgroups.join(procs_file),  # noqa: PLW1509
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        assert cg.pids() == [proc.pid]
    finally:
        _stop(proc)


@pytest.mark.parametrize("kind", ["missing", "file", "empty-dir"])
def test_no_cgroup_filesystem_says_why(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "cgroup"
    if kind == "file":
        root.write_text("")
    elif kind == "empty-dir":
        root.mkdir()
    cg, notes = cgroups.create("test-none", memory=64 * MiB, cpus=0.5, root=str(root))
    assert cg is None
    assert notes["memory"] == f"not enforced: no cgroup filesystem at {root}"
    assert notes["cpus"] == f"not enforced: no cgroup filesystem at {root}"
    assert notes["processes"].startswith("not tracked: ")
    _, notes = cgroups.create("test-none", root=str(root))
    assert notes["memory"] == notes["cpus"] == "none requested"
    assert cgroups.existing("test-none", root=str(root)) is None
    if kind == "empty-dir":
        assert os.listdir(root) == []


def test_partial_failure_keeps_the_rest(tmp_path: Path) -> None:
    """v1 with no memory hierarchy: processes tracked and CPU capped all the same."""
    if cgroups.version_at() != "v1":
        pytest.skip("builds a v1 root without a memory hierarchy: this machine is not v1")
    real = cgroups.cgroup_root()
    if not os.path.isdir(os.path.join(real, "cpu")):
        pytest.skip("no v1 cpu hierarchy")
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "pids").symlink_to(os.path.join(real, "pids"))
    (root / "cpu").symlink_to(os.path.join(real, "cpu"))
    run_id = f"test-{uuid.uuid4().hex[:12]}"
    cg, notes = cgroups.create(run_id, memory=64 * MiB, cpus=0.5, root=str(root))
    try:
        assert cg is not None
        assert set(cg.dirs) == {"pids", "cpu"}
        assert notes["memory"] == (
            f"not enforced: no cgroup v1 memory hierarchy at {root / 'memory'}"
        )
        assert notes["cpus"] == "cgroup v1 cpu.cfs_quota_us 50000 / period 100000"
        assert notes["processes"].startswith("cgroup v1 pids ")
        assert cg.oom_kills() == 0
        assert not cg.has_oom_counter()
        assert cg.memory_peak() is None
    finally:
        found = cgroups.existing(run_id, root=str(root))
        if found is not None:
            found.remove()
    assert cgroups.existing(run_id, root=str(root)) is None


def test_unified_hierarchy_of_a_hybrid_machine() -> None:
    """The v2 code path, on the controller-less cgroup2 of a hybrid machine: tracking only."""
    root = os.path.join(cgroups.cgroup_root(), "unified")
    if not os.path.isfile(os.path.join(root, "cgroup.controllers")):
        pytest.skip(f"no cgroup2 at {root} (not a hybrid machine)")
    had_parent = os.path.isdir(os.path.join(root, cgroups.PARENT))
    run_id = f"test-{uuid.uuid4().hex[:12]}"
    cg, notes = cgroups.create(run_id, memory=64 * MiB, root=root)
    try:
        assert cg is not None and cg.version == "v2"
        assert notes["processes"] == f"cgroup v2 {root}/las/{run_id}"
        if "memory" not in Path(root, "cgroup.controllers").read_text().split():
            assert notes["memory"] == (
                f"not enforced: the memory controller is not available in {root}"
            )
        assert notes["cpus"] == "none requested"
        proc = _start(cg, "import time; print('up', flush=True); time.sleep(30)")
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        assert cg.pids() == [proc.pid]
        found = cgroups.existing(run_id, root=root)
        assert found is not None and found.paths == cg.paths
        assert found.kill_all() == 1
        _stop(proc)
        found.remove()
        assert cgroups.existing(run_id, root=root) is None
    finally:
        leftover = cgroups.existing(run_id, root=root)
        if leftover is not None:
            leftover.kill_all()
            leftover.remove()
        if not had_parent:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, cgroups.PARENT))


def test_tree_rss() -> None:
    me = cgroups.tree_rss([os.getpid()])
    assert me > 1 * MiB
    assert cgroups.tree_rss([]) == 0
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert cgroups.tree_rss([proc.pid]) == 0  # gone: counts nothing
    assert cgroups.tree_rss([os.getpid(), proc.pid]) >= me // 2
