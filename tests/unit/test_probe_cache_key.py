"""The hardware probe cache: a kept profile is used only while its key holds, one test for
each thing the key covers; what changes while the machine runs is read afresh."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localaistack.control import hardware, probecache
from localaistack.control.hardware import (
    CgroupInfo,
    CpuInfo,
    EngineInfo,
    GpuInfo,
    HardwareProfile,
    MemoryInfo,
    ProbeNote,
)

GIB = 1 << 30


def profile(*, engines: bool, gpus: tuple[GpuInfo, ...] = ()) -> HardwareProfile:
    return HardwareProfile(
        collected_at="2026-01-01T00:00:00+00:00",
        hostname="box",
        cpu=CpuInfo(model="cpu", cores=4, threads=8, arch="x86_64"),
        memory=MemoryInfo(total=16 * GIB, available=8 * GIB),
        gpus=gpus,
        engines=tuple(
            EngineInfo(name=n, installed=True, usable=True, version="9")
            for n in ("podman", "docker")
        )
        if engines
        else hardware.unprobed_engines(),
        cgroup=CgroupInfo(version="v2", controllers=("memory",)),
    )


GPU = GpuInfo(
    vendor="nvidia", index=0, uuid="GPU-1", name="g", memory_total=8 * GIB, memory_free=GIB
)


class Probes:
    """Counts the probes ``hardware_profile`` runs (each answered without the machine)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = 0
        self.engines = 0
        self.gpus = 0
        self.cgroups = 0
        self.gpu_list: tuple[GpuInfo, ...] = ()
        self.free = GIB

        def detect_hardware(*, probe_engines: bool) -> HardwareProfile:
            self.full += 1
            return profile(engines=probe_engines, gpus=self.gpu_list)

        def detect_engines() -> tuple[EngineInfo, ...]:
            self.engines += 1
            return profile(engines=True).engines

        def detect_gpus() -> tuple[tuple[GpuInfo, ...], tuple[ProbeNote, ...]]:
            self.gpus += 1
            found = tuple(g.model_copy(update={"memory_free": self.free}) for g in self.gpu_list)
            return found, (ProbeNote(source="nvml", ok=True, detail="1 GPU(s)"),)

        def detect_cgroup() -> CgroupInfo:
            self.cgroups += 1
            return CgroupInfo(version="v2", controllers=("memory", "cpu")[: self.cgroups % 2 + 1])

        monkeypatch.setattr(hardware, "detect_hardware", detect_hardware)
        monkeypatch.setattr(hardware, "detect_engines", detect_engines)
        monkeypatch.setattr(hardware, "detect_gpus", detect_gpus)
        monkeypatch.setattr(hardware, "detect_cgroup", detect_cgroup)


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> Probes:
    monkeypatch.delenv("LAS_PROBE_CACHE", raising=False)
    return Probes(monkeypatch)


@pytest.fixture
def bindir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH of its own, with a podman and a docker that are files of the test."""
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("podman", "docker"):
        (d / name).write_text("#!/bin/sh\nexit 0\n")
        (d / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}:/usr/bin:/bin")
    return d


def home_of(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    return home


def test_a_profile_is_probed_once_and_kept_private(
    tmp_path: Path, probes: Probes, bindir: Path
) -> None:
    home = home_of(tmp_path)
    first = probecache.hardware_profile(home, probe_engines=True)
    again = probecache.hardware_profile(home, probe_engines=True)
    assert probes.full == 1
    assert again.cpu == first.cpu and again.engines == first.engines
    kept = probecache.path_of(home)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(kept.parent.stat().st_mode) == 0o700


def _set_text(monkeypatch: pytest.MonkeyPatch, path: str, value: str) -> None:
    real = probecache._text
    monkeypatch.setattr(probecache, "_text", lambda p: value if p == path else real(p))


def _meminfo(monkeypatch: pytest.MonkeyPatch) -> None:
    real = probecache._text("/proc/meminfo") or ""
    changed = "\n".join(
        "MemTotal:       1234 kB" if line.startswith("MemTotal:") else line
        for line in real.splitlines()
    )
    _set_text(monkeypatch, "/proc/meminfo", changed)


def _replace_binary(bindir: Path, name: str) -> None:
    new = bindir / f".{name}.new"
    new.write_text("#!/bin/sh\nexit 1\n")
    new.chmod(0o755)
    os.replace(new, bindir / name)


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Makes a unix socket that answers at a path; gives its URL."""
    made: list[socket.socket] = []

    def make(name: str) -> str:
        path = str(tmp_path / name)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(8)
        made.append(s)
        return f"unix://{path}"

    yield make
    for s in made:
        s.close()


Change = Callable[[pytest.MonkeyPatch, Path, Path, Callable[[str], str]], Any]
CHANGES: dict[str, Change] = {
    "boot id": lambda mp, _b, _t, _l: _set_text(mp, "/proc/sys/kernel/random/boot_id", "other\n"),
    "host name": lambda mp, _b, _t, _l: mp.setattr(socket, "gethostname", lambda: "renamed"),
    "CPUs this process may use": lambda mp, _b, _t, _l: mp.setattr(
        os, "sched_getaffinity", lambda _pid: {0}
    ),
    "CPU count": lambda mp, _b, _t, _l: mp.setattr(os, "cpu_count", lambda: 999),
    "MemTotal": lambda mp, _b, _t, _l: _meminfo(mp),
    "GPU device nodes": lambda mp, _b, _t, _l: mp.setattr(
        probecache, "_gpu_nodes", lambda: ["/dev/nvidia0", "/dev/nvidiactl"]
    ),
    "nvidia-smi on PATH": lambda _mp, b, _t, _l: _replace_binary(b, "nvidia-smi"),
    "effective uid": lambda mp, _b, _t, _l: mp.setattr(os, "geteuid", lambda: 4242),
    "podman binary replaced": lambda _mp, b, _t, _l: _replace_binary(b, "podman"),
    "docker binary replaced": lambda _mp, b, _t, _l: _replace_binary(b, "docker"),
    "docker binary gone": lambda _mp, b, _t, _l: (b / "docker").unlink(),
    "DOCKER_HOST": lambda mp, _b, _t, _l: mp.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375"),
    "CONTAINER_HOST": lambda mp, _b, _t, _l: mp.setenv("CONTAINER_HOST", "unix:///nowhere"),
    "docker socket comes up": lambda _mp, _b, _t, listen: listen("docker.sock"),
    "engine configuration file": lambda _mp, _b, t, _l: (
        (t / "xdg" / "containers").mkdir(parents=True),
        (t / "xdg" / "containers" / "storage.conf").write_text("[storage]\n"),
    ),
    "the probe's code": lambda mp, _b, t, _l: mp.setattr(
        hardware, "__file__", str(t / "bin" / "podman")
    ),
}


@pytest.mark.parametrize("what", CHANGES)
def test_a_change_in_what_the_profile_was_probed_from_probes_again(
    what: str,
    tmp_path: Path,
    probes: Probes,
    bindir: Path,
    listening: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = home_of(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'docker.sock'}")
    monkeypatch.delenv("CONTAINER_HOST", raising=False)
    (bindir / "nvidia-smi").write_text("#!/bin/sh\n")
    (bindir / "nvidia-smi").chmod(0o755)
    probecache.hardware_profile(home, probe_engines=True)
    probecache.hardware_profile(home, probe_engines=True)
    assert probes.full == 1  # kept
    CHANGES[what](monkeypatch, bindir, tmp_path, listening)
    probecache.hardware_profile(home, probe_engines=True)
    assert probes.full == 2, f"{what} changed, the kept profile was used"
    probecache.hardware_profile(home, probe_engines=True)
    assert probes.full == 2  # and the new one is kept


def test_a_docker_socket_that_stops_answering_probes_again(
    tmp_path: Path, probes: Probes, bindir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = home_of(tmp_path)
    path = tmp_path / "docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    probecache.hardware_profile(home, probe_engines=True)
    probecache.hardware_profile(home, probe_engines=True)
    server.close()  # the daemon is gone; its socket file stays
    assert path.exists()
    probecache.hardware_profile(home, probe_engines=True)
    assert probes.full == 2


def test_what_changes_while_the_machine_runs_is_read_on_every_use(
    tmp_path: Path, probes: Probes, bindir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = home_of(tmp_path)
    probes.gpu_list = (GPU,)
    first = probecache.hardware_profile(home, probe_engines=False)
    assert probes.gpus == 0 and probes.cgroups == 0  # the probe found them
    probes.free = 5 * GIB
    real = probecache._text("/proc/meminfo") or ""
    lines = [line for line in real.splitlines() if not line.startswith("MemAvailable:")]
    _set_text(monkeypatch, "/proc/meminfo", "\n".join([*lines, "MemAvailable:    2048 kB"]))
    probecache.hardware_profile(home, probe_engines=False)
    kept = probecache.hardware_profile(home, probe_engines=False)
    assert probes.full == 1
    assert kept.memory.available == 2 << 20 and kept.memory.total == first.memory.total
    assert kept.gpus[0].memory_free == 5 * GIB and probes.gpus == 2  # GPUs: every time
    assert probes.cgroups == 2 and kept.cgroup.controllers == ("memory",)


def test_a_profile_without_gpus_does_not_probe_them_again(
    tmp_path: Path, probes: Probes, bindir: Path
) -> None:
    home = home_of(tmp_path)
    probecache.hardware_profile(home, probe_engines=False)
    assert probecache.hardware_profile(home, probe_engines=False).gpus == ()
    assert probes.gpus == 0 and probes.full == 1


def test_engines_are_probed_when_first_needed_and_then_kept(
    tmp_path: Path, probes: Probes, bindir: Path
) -> None:
    home = home_of(tmp_path)
    native = probecache.hardware_profile(home, probe_engines=False)
    assert all(not e.probed for e in native.engines)
    both = probecache.hardware_profile(home, probe_engines=True)
    assert probes.full == 1 and probes.engines == 1
    assert both.usable_engines == ("podman", "docker")
    probecache.hardware_profile(home, probe_engines=True)
    assert probes.engines == 1  # kept with them
    # A plan that does not need them sees them as not probed, as without the cache.
    again = probecache.hardware_profile(home, probe_engines=False)
    assert again.engines == hardware.unprobed_engines()


def test_the_cache_can_be_turned_off(
    tmp_path: Path, probes: Probes, bindir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = home_of(tmp_path)
    monkeypatch.setenv("LAS_PROBE_CACHE", "0")
    probecache.hardware_profile(home, probe_engines=True)
    probecache.hardware_profile(home, probe_engines=True)
    assert probes.full == 2
    assert not (home / "cache").exists()


@pytest.mark.parametrize("damage", ["{not json", '{"key": 1}', "[]", '{"key": null, "profile": 1}'])
def test_a_damaged_cache_file_is_probed_again_and_replaced(
    damage: str, tmp_path: Path, probes: Probes, bindir: Path
) -> None:
    home = home_of(tmp_path)
    probecache.hardware_profile(home, probe_engines=False)
    probecache.path_of(home).write_text(damage)
    probecache.hardware_profile(home, probe_engines=False)
    assert probes.full == 2
    probecache.hardware_profile(home, probe_engines=False)
    assert probes.full == 2


def test_a_kept_profile_that_no_longer_validates_is_probed_again(
    tmp_path: Path, probes: Probes, bindir: Path
) -> None:
    import json

    home = home_of(tmp_path)
    probecache.hardware_profile(home, probe_engines=False)
    entry = json.loads(probecache.path_of(home).read_text())
    entry["profile"]["schema_version"] = 99
    probecache.path_of(home).write_text(json.dumps(entry))
    assert probecache.hardware_profile(home, probe_engines=False).schema_version == 1
    assert probes.full == 2


def test_a_cache_that_cannot_be_written_only_costs_a_probe(
    tmp_path: Path, probes: Probes, bindir: Path
) -> None:
    home = home_of(tmp_path)
    (home / "cache").write_text("a file where the directory goes")
    probecache.hardware_profile(home, probe_engines=False)
    probecache.hardware_profile(home, probe_engines=False)
    assert probes.full == 2
