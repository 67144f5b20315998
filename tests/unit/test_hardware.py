"""Hardware profile: real detection here, fake sysfs/proc trees and fake CLIs on PATH."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from localaistack.cli.render import hardware_lines
from localaistack.control.hardware import (
    CgroupInfo,
    CpuInfo,
    EngineInfo,
    GpuInfo,
    HardwareProfile,
    MemoryInfo,
    ProbeNote,
    detect_cgroup,
    detect_cpu,
    detect_engine,
    detect_engines,
    detect_gpus,
    detect_hardware,
    load_profile,
    parse_nvidia_smi_csv,
    probe_amd_sysfs,
    probe_nvidia_smi,
    probe_nvml,
    profile_json,
    save_profile,
)
from localaistack.errors import HardwareProfileError

GIB = 1 << 30
MIB = 1 << 20
PROFILES = Path(__file__).resolve().parents[1] / "data" / "profiles"
SLEEP = shutil.which("sleep") or "/bin/sleep"


def _has_gpu_hardware() -> bool:
    return Path("/dev/nvidia0").exists() or any(
        Path("/sys/class/drm").glob("card*/device/mem_info_vram_total")
    )


def _script(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _sample_profile(**changes: Any) -> HardwareProfile:
    base = HardwareProfile(
        collected_at="2025-01-01T00:00:00+00:00",
        hostname="box",
        cpu=CpuInfo(model="Test CPU", cores=4, threads=8, arch="x86_64"),
        memory=MemoryInfo(total=16 * GIB, available=12 * GIB),
        gpus=(
            GpuInfo(
                vendor="nvidia",
                index=0,
                uuid="GPU-0000",
                name="NVIDIA Test",
                memory_total=8 * GIB,
                memory_free=7 * GIB,
                driver="550.54",
                compute_capability="8.6",
            ),
        ),
        gpu_detection=(ProbeNote(source="nvml", ok=True, detail="1 GPU(s)"),),
        engines=(
            EngineInfo(name="podman", installed=True, usable=True, version="4.3.1"),
            EngineInfo(name="docker", installed=True, usable=False, reason="daemon down"),
        ),
        cgroup=CgroupInfo(version="v2", controllers=("memory", "cpu"), detail="test"),
    )
    return base.model_copy(update=changes)


# --------------------------------------------------------------------------- real detection


def test_detect_hardware_on_this_machine() -> None:
    profile = detect_hardware()
    assert profile.source == "detected"
    assert profile.schema_version == 1
    assert profile.hostname
    assert profile.collected_at.endswith("+00:00")
    assert profile.cpu.cores >= 1
    assert profile.cpu.threads >= profile.cpu.cores
    assert profile.cpu.model and profile.cpu.arch
    assert profile.memory.total > 0
    assert 0 <= profile.memory.available <= profile.memory.total
    assert [e.name for e in profile.engines] == ["podman", "docker"]
    for e in profile.engines:
        assert e.usable or e.reason, e
        assert e.installed or not e.usable
    assert profile.cgroup.version in ("v1", "v2", "hybrid", "none")
    assert profile.gpu_detection
    assert all(n.detail for n in profile.gpu_detection)
    lines = hardware_lines(profile)
    assert any(line.startswith("CPU: ") for line in lines)
    assert any(line.startswith("RAM: ") for line in lines)
    assert any(line.startswith("cgroup: ") for line in lines)


@pytest.mark.skipif(_has_gpu_hardware(), reason="this machine has a GPU")
def test_detect_hardware_without_gpus_says_why() -> None:
    profile = detect_hardware()
    assert profile.gpus == ()
    assert profile.total_vram == 0
    assert {n.source for n in profile.gpu_detection} >= {"nvml", "amd-sysfs"}
    for note in profile.gpu_detection:
        assert note.ok is False
        assert note.detail.strip()
    gpu_line = next(line for line in hardware_lines(profile) if line.startswith("GPUs: "))
    assert gpu_line.startswith("GPUs: none (nvml: ")
    assert "amd-sysfs: no " in gpu_line


def test_detect_cpu_reads_model_name(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Fancy CPU @ 3GHz\n\n"
        "processor\t: 1\nmodel name\t: Fancy CPU @ 3GHz\n"
    )
    cpu = detect_cpu(tmp_path)
    assert cpu.model == "Fancy CPU @ 3GHz"
    assert cpu.cores >= 1 and cpu.threads >= cpu.cores


def test_detect_cpu_without_cpuinfo_falls_back(tmp_path: Path) -> None:
    cpu = detect_cpu(tmp_path)  # no cpuinfo file at all
    assert cpu.model
    assert cpu.cores >= 1


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path: Path) -> None:
    profile = detect_hardware()
    path = tmp_path / "hw.json"
    save_profile(profile, path)
    loaded = load_profile(path)
    assert loaded.source == str(path)
    assert loaded.model_copy(update={"source": "detected"}) == profile
    data = json.loads(path.read_text())
    assert "source" not in data
    assert path.read_text().startswith('{\n  "schema_version": 1,')
    assert path.read_text().endswith("}\n")


def test_save_is_atomic_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "hw.json"
    path.write_text("old content")
    save_profile(_sample_profile(), path)
    assert load_profile(path).hostname == "box"
    save_profile(_sample_profile(hostname="other"), path)
    assert load_profile(path).hostname == "other"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hw.json"]  # no temp file left


def test_save_into_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(HardwareProfileError, match="cannot write hardware profile"):
        save_profile(_sample_profile(), tmp_path / "nope" / "hw.json")


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.json"
    with pytest.raises(HardwareProfileError) as info:
        load_profile(path)
    assert str(path) in info.value.message
    assert "does not exist" in info.value.message
    assert info.value.hint


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(HardwareProfileError, match="cannot read hardware profile"):
        load_profile(tmp_path)


def test_load_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"schema_version": 1,\n  oops}')
    with pytest.raises(HardwareProfileError, match=r"is not valid JSON: .* at line 2 column 3"):
        load_profile(path)


def test_load_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(HardwareProfileError, match="is not valid JSON"):
        load_profile(path)


def test_load_top_level_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(HardwareProfileError, match="must be a JSON object, not list"):
        load_profile(path)


def test_load_wrong_shape_lists_field_errors(tmp_path: Path) -> None:
    data = json.loads((PROFILES / "1x8gib.json").read_text())
    del data["gpus"][0]["memory_total"]
    data["cpu"]["cores"] = "many"
    data["surprise"] = True
    path = tmp_path / "shape.json"
    path.write_text(json.dumps(data))
    with pytest.raises(HardwareProfileError) as info:
        load_profile(path)
    message = info.value.message
    assert message.startswith(f"hardware profile {path} is invalid: ")
    assert "gpus.0.memory_total: Field required" in message
    assert "cpu.cores: " in message
    assert "surprise: Extra inputs are not permitted" in message


def test_load_unknown_schema_version(tmp_path: Path) -> None:
    data = json.loads((PROFILES / "cpu-only.json").read_text())
    data["schema_version"] = 2
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(data))
    with pytest.raises(HardwareProfileError, match="unsupported schema_version 2"):
        load_profile(path)


def test_load_accepts_a_source_key(tmp_path: Path) -> None:
    data = json.loads((PROFILES / "cpu-only.json").read_text())
    data["source"] = "somewhere else"
    path = tmp_path / "with-source.json"
    path.write_text(json.dumps(data))
    assert load_profile(path).source == str(path)


# --------------------------------------------------------------------------- models


def test_models_are_frozen_and_strict() -> None:
    profile = _sample_profile()
    with pytest.raises(ValidationError):
        profile.hostname = "x"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        CpuInfo(model="x", cores=1, threads=1, arch="x", speed=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        CpuInfo(model="x", cores=0, threads=1, arch="x")
    assert isinstance(profile.gpus, tuple)
    assert isinstance(profile.cgroup.controllers, tuple)


def test_helpers() -> None:
    profile = _sample_profile()
    assert profile.usable_engines == ("podman",)
    podman = profile.engine("podman")
    assert podman is not None and podman.version == "4.3.1"
    assert profile.engine("lxc") is None
    assert profile.total_vram == 8 * GIB


def test_hardware_lines_sample() -> None:
    lines = hardware_lines(_sample_profile())
    assert "CPU: Test CPU (4 cores, 8 threads, x86_64)" in lines
    assert "RAM: 16.0GiB total, 12.0GiB available" in lines
    assert (
        "GPU 0: nvidia NVIDIA Test, 8.0GiB total / 7.0GiB free, driver 550.54, compute 8.6, "
        "uuid GPU-0000"
    ) in lines
    assert "podman: usable, 4.3.1" in lines
    assert "docker: installed, not usable: daemon down" in lines
    assert "cgroup: v2; controllers writable: memory, cpu; test" in lines
    assert not any(line.startswith("GPUs: none") for line in lines)


# --------------------------------------------------------------------------- saved profiles


SAVED = {
    # name: (gpu count, GiB per GPU, cores, RAM GiB, usable engines)
    "cpu-only": (0, 0, 16, 64, ("podman",)),
    "no-engine": (0, 0, 8, 32, ()),
    "1x8gib": (1, 8, None, None, ("podman", "docker")),
    "2x24gib": (2, 24, 32, 128, ("podman", "docker")),
    "4x80gib": (4, 80, 64, 512, ("podman", "docker")),
}


@pytest.mark.parametrize("name", sorted(SAVED))
def test_saved_profiles(name: str) -> None:
    count, gib, cores, ram, usable = SAVED[name]
    path = PROFILES / f"{name}.json"
    profile = load_profile(path)
    assert profile.source == str(path)
    assert len(profile.gpus) == count
    assert [g.index for g in profile.gpus] == list(range(count))
    for g in profile.gpus:
        assert g.vendor == "nvidia"
        assert g.memory_total == gib * GIB
        assert 0 < g.memory_free < g.memory_total
        assert g.uuid.startswith("GPU-") and g.driver and g.compute_capability
    assert len({g.uuid for g in profile.gpus}) == count
    assert profile.total_vram == count * gib * GIB
    if cores is not None:
        assert profile.cpu.cores == cores
    if ram is not None:
        assert profile.memory.total == ram * GIB
    assert 0 < profile.memory.available < profile.memory.total
    assert profile.usable_engines == usable
    assert [e.name for e in profile.engines] == ["podman", "docker"]
    # The files are in exactly the form save_profile writes.
    assert path.read_text() == profile_json(profile)


def test_saved_profiles_engines_and_names() -> None:
    cpu_only = load_profile(PROFILES / "cpu-only.json")
    docker = cpu_only.engine("docker")
    assert docker is not None and not docker.installed and docker.reason
    no_engine = load_profile(PROFILES / "no-engine.json")
    assert all(not e.installed and not e.usable for e in no_engine.engines)
    assert {g.name for g in load_profile(PROFILES / "2x24gib.json").gpus} == {
        "NVIDIA GeForce RTX 4090"
    }
    assert {g.name for g in load_profile(PROFILES / "4x80gib.json").gpus} == {
        "NVIDIA H100 80GB HBM3"
    }
    uuids = [g.uuid for n in SAVED for g in load_profile(PROFILES / f"{n}.json").gpus]
    assert len(uuids) == len(set(uuids)) == 7
    lines = hardware_lines(cpu_only)
    assert "podman: usable, 4.9.3" in lines
    assert "docker: not installed (not found on PATH)" in lines


# --------------------------------------------------------------------------- AMD sysfs


def _amd_card(sysfs: Path, n: int, vendor: str, total: int, used: int, **files: str) -> Path:
    dev = sysfs / "class" / "drm" / f"card{n}" / "device"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text(vendor + "\n")
    (dev / "mem_info_vram_total").write_text(f"{total}\n")
    (dev / "mem_info_vram_used").write_text(f"{used}\n")
    for name, value in files.items():
        (dev / name).write_text(value + "\n")
    return dev


def test_amd_sysfs(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    _amd_card(
        sysfs,
        0,
        "0x1002",
        16 * GIB,
        1 * GIB,
        product_name="AMD Radeon RX 7800 XT",
        unique_id="a1b2c3d4e5f60718",
        device="0x747e",
    )
    _amd_card(sysfs, 1, "0x1002", 64 * GIB, 0, device="0x740f")
    _amd_card(sysfs, 2, "0x8086", 4 * GIB, 0)  # an Intel card with VRAM files: skipped
    (sysfs / "class" / "drm" / "card0-DP-1").mkdir()  # a connector: ignored
    (sysfs / "module" / "amdgpu").mkdir(parents=True)
    (sysfs / "module" / "amdgpu" / "version").write_text("6.7.0\n")

    gpus, note = probe_amd_sysfs(sysfs)
    assert note.source == "amd-sysfs" and note.ok
    assert "card2: vendor 0x8086, not AMD" in note.detail
    assert gpus == (
        GpuInfo(
            vendor="amd",
            index=0,
            uuid="a1b2c3d4e5f60718",
            name="AMD Radeon RX 7800 XT",
            memory_total=16 * GIB,
            memory_free=15 * GIB,
            driver="6.7.0",
            compute_capability=None,
        ),
        GpuInfo(
            vendor="amd",
            index=1,
            uuid="amd-card1",
            name="AMD GPU (device 0x740f)",
            memory_total=64 * GIB,
            memory_free=64 * GIB,
            driver="6.7.0",
        ),
    )
    all_gpus, notes = detect_gpus(sysfs_root=sysfs, env={"PATH": ""}, use_nvml=False)
    assert all_gpus == gpus
    assert [(n.source, n.ok) for n in notes] == [("nvidia-smi", False), ("amd-sysfs", True)]


def test_amd_sysfs_absent(tmp_path: Path) -> None:
    gpus, note = probe_amd_sysfs(tmp_path)
    assert gpus == ()
    assert not note.ok
    assert note.detail == f"no {tmp_path}/class/drm/card*/device/mem_info_vram_total"


def test_amd_sysfs_only_other_vendors(tmp_path: Path) -> None:
    _amd_card(tmp_path, 0, "0x10de", GIB, 0)
    gpus, note = probe_amd_sysfs(tmp_path)
    assert gpus == ()
    assert not note.ok and note.detail == "card0: vendor 0x10de, not AMD"


def test_amd_sysfs_unreadable_size(tmp_path: Path) -> None:
    dev = _amd_card(tmp_path, 0, "0x1002", GIB, 0)
    (dev / "mem_info_vram_total").write_text("garbage\n")
    gpus, note = probe_amd_sysfs(tmp_path)
    assert gpus == ()
    assert not note.ok and note.detail.startswith("card0: cannot read VRAM size")


# --------------------------------------------------------------------------- nvidia-smi

SMI_CSV = (
    "0, GPU-1f2e3d4c-0000-1111-2222-333344445555, NVIDIA GeForce RTX 4090, 24564, 24100, "
    "550.54.14, 8.9\n"
    "1, GPU-9a8b7c6d-0000-1111-2222-333344445555, NVIDIA GeForce RTX 4090, 24564, 23000, "
    "550.54.14, 8.9\n"
)


def _fake_smi(directory: Path, csv_text: str) -> Path:
    assert "'" not in csv_text
    return _script(directory, "nvidia-smi", f"printf '%s' '{csv_text}'\n")


def _check_smi_gpus(gpus: tuple[GpuInfo, ...]) -> None:
    assert len(gpus) == 2
    first, second = gpus
    assert first.vendor == "nvidia" and first.index == 0
    assert first.uuid == "GPU-1f2e3d4c-0000-1111-2222-333344445555"
    assert first.name == "NVIDIA GeForce RTX 4090"
    assert first.memory_total == 24564 * MIB
    assert first.memory_free == 24100 * MIB
    assert first.driver == "550.54.14"
    assert first.compute_capability == "8.9"
    assert second.index == 1 and second.memory_free == 23000 * MIB
    assert second.uuid != first.uuid


def test_nvidia_smi_csv_fallback(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    _fake_smi(bindir, SMI_CSV)
    gpus, note = probe_nvidia_smi(env={"PATH": str(bindir)})
    assert note.source == "nvidia-smi" and note.ok, note
    _check_smi_gpus(gpus)


@pytest.mark.skipif(probe_nvml()[1].ok, reason="NVML works here, nvidia-smi is not asked")
def test_detect_gpus_falls_back_to_nvidia_smi_when_nvml_fails(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    _fake_smi(bindir, SMI_CSV)
    gpus, notes = detect_gpus(sysfs_root=tmp_path / "sys", env={"PATH": str(bindir)})
    _check_smi_gpus(gpus)
    assert [(n.source, n.ok) for n in notes] == [
        ("nvml", False),
        ("nvidia-smi", True),
        ("amd-sysfs", False),
    ]
    assert notes[0].detail.startswith("NVML not available: ")
    profile = detect_hardware(sysfs_root=tmp_path / "sys", env={"PATH": str(bindir)})
    assert len(profile.gpus) == 2
    assert profile.total_vram == 2 * 24564 * MIB
    assert any(
        line.startswith("GPU 1: nvidia NVIDIA GeForce RTX 4090, ")
        for line in hardware_lines(profile)
    )


def test_nvidia_smi_old_driver_without_compute_cap(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    _script(
        bindir,
        "nvidia-smi",
        'case "$1" in *compute_cap*)\n'
        "  echo 'Field \"compute_cap\" is not a valid field to query.'; exit 2;;\n"
        "esac\n"
        "echo '0, GPU-aaaa, Tesla T4, 15360, 15000, 470.82.01'\n",
    )
    gpus, note = probe_nvidia_smi(env={"PATH": str(bindir)})
    assert note.ok, note
    assert len(gpus) == 1
    assert gpus[0].name == "Tesla T4"
    assert gpus[0].compute_capability is None
    assert gpus[0].driver == "470.82.01"


def test_nvidia_smi_failure_is_reported(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    _script(
        bindir,
        "nvidia-smi",
        'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\n'
        "exit 9\n",
    )
    gpus, note = probe_nvidia_smi(env={"PATH": str(bindir)})
    assert gpus == ()
    assert not note.ok
    assert note.detail == (
        "exit 9: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    )


def test_nvidia_smi_not_installed() -> None:
    gpus, note = probe_nvidia_smi(env={"PATH": ""})
    assert gpus == ()
    assert not note.ok and "not installed" in note.detail


def test_nvidia_smi_timeout_kills_the_process_group(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    _script(bindir, "nvidia-smi", f"{SLEEP} 30\n")  # a child of sh that holds stdout open
    start = time.monotonic()
    gpus, note = probe_nvidia_smi(env={"PATH": str(bindir)}, timeout=0.5)
    assert time.monotonic() - start < 10
    assert gpus == ()
    assert not note.ok and note.detail == "timed out after 0.5s"


def test_parse_nvidia_smi_csv_tolerates_na_and_bad_lines() -> None:
    gpus, problems = parse_nvidia_smi_csv(
        "0, GPU-x, NVIDIA A100-SXM4-40GB, 40960, [N/A], [N/A], [Not Supported]\n"
        "\n"
        "garbage line\n"
        "x, GPU-y, Broken, 1, 1, 1, 1\n"
    )
    assert len(gpus) == 1
    assert gpus[0].memory_free == 0
    assert gpus[0].driver is None and gpus[0].compute_capability is None
    assert len(problems) == 2


# --------------------------------------------------------------------------- NVML (fake module)


class _FakeNvmlError(Exception):
    pass


def _fake_nvml(
    devices: list[dict[str, Any]], fail_init: bool = False, fail_name: bool = False
) -> SimpleNamespace:
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if fail_init:
            raise _FakeNvmlError("Driver Not Loaded")

    def name(handle: int) -> bytes:
        if fail_name:
            raise _FakeNvmlError("GPU is lost")
        return bytes(devices[handle]["name"], "ascii")

    def cc(handle: int) -> tuple[int, int]:
        if "cc" not in devices[handle]:
            raise _FakeNvmlError("Not Supported")
        return devices[handle]["cc"]  # type: ignore[no-any-return]

    return SimpleNamespace(
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: b"535.104.05",
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=name,
        nvmlDeviceGetUUID=lambda h: devices[h]["uuid"],
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(
            total=devices[h]["total"], free=devices[h]["free"], used=0
        ),
        nvmlDeviceGetCudaComputeCapability=cc,
    )


def test_nvml_probe_decodes_bytes_and_shuts_down() -> None:
    nvml = _fake_nvml(
        [
            {
                "name": "NVIDIA H100 80GB HBM3",
                "uuid": b"GPU-aaa",
                "total": 80 * GIB,
                "free": 79 * GIB,
                "cc": (9, 0),
            },
            {"name": "NVIDIA L4", "uuid": "GPU-bbb", "total": 24 * GIB, "free": 20 * GIB},
        ]
    )
    gpus, note = probe_nvml(nvml)
    assert note == ProbeNote(source="nvml", ok=True, detail="2 GPU(s)")
    assert gpus[0] == GpuInfo(
        vendor="nvidia",
        index=0,
        uuid="GPU-aaa",
        name="NVIDIA H100 80GB HBM3",
        memory_total=80 * GIB,
        memory_free=79 * GIB,
        driver="535.104.05",
        compute_capability="9.0",
    )
    assert gpus[1].uuid == "GPU-bbb" and gpus[1].compute_capability is None
    assert nvml.calls == ["init", "shutdown"]


def test_nvml_probe_init_failure() -> None:
    nvml = _fake_nvml([], fail_init=True)
    gpus, note = probe_nvml(nvml)
    assert gpus == ()
    assert note == ProbeNote(
        source="nvml", ok=False, detail="NVML not available: Driver Not Loaded"
    )
    assert nvml.calls == ["init"]


def test_nvml_probe_query_failure_still_shuts_down() -> None:
    nvml = _fake_nvml([{"name": "x", "uuid": "u", "total": 1, "free": 1}], fail_name=True)
    gpus, note = probe_nvml(nvml)
    assert gpus == ()
    assert not note.ok and note.detail == "NVML query failed: GPU is lost"
    assert nvml.calls == ["init", "shutdown"]


# --------------------------------------------------------------------------- engines


def test_docker_daemon_down(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    _script(
        bindir,
        "docker",
        "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
        "Is the docker daemon running?' >&2\nexit 1\n",
    )
    info = detect_engine("docker", env={"PATH": str(bindir)})
    assert info.name == "docker"
    assert info.installed is True
    assert info.usable is False
    assert info.reason is not None
    assert info.reason.startswith("Cannot connect to the Docker daemon")


def test_docker_usable(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    payload = {"Client": {"Version": "27.0.1"}, "Server": {"Version": "26.1.4"}}
    _script(bindir, "docker", f"echo '{json.dumps(payload)}'\n")
    info = detect_engine("docker", env={"PATH": str(bindir)})
    assert info == EngineInfo(name="docker", installed=True, usable=True, version="26.1.4")


def test_docker_host_is_passed_through(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    _script(
        bindir, "docker", 'echo "Cannot connect to the Docker daemon at $DOCKER_HOST" >&2\nexit 1\n'
    )
    env = {"PATH": str(bindir), "DOCKER_HOST": "tcp://10.1.2.3:2375"}
    info = detect_engine("docker", env=env)
    assert info.reason == "Cannot connect to the Docker daemon at tcp://10.1.2.3:2375"


def test_podman_usable_and_failing(tmp_path: Path) -> None:
    good = tmp_path / "good"
    _script(
        good,
        "podman",
        'case "$1" in version) echo \'{"Client": {"Version": "4.3.1"}}\';; image) exit 1;; esac\n',
    )
    info = detect_engine("podman", env={"PATH": str(good)})
    assert info == EngineInfo(name="podman", installed=True, usable=True, version="4.3.1")

    bad = tmp_path / "bad"
    _script(
        bad,
        "podman",
        "echo 'WARN[0000] some warning' >&2\n"
        "echo 'Error: cannot find cgroup mount destination: unknown FS type' >&2\nexit 125\n",
    )
    info = detect_engine("podman", env={"PATH": str(bad)})
    assert info.installed and not info.usable
    assert info.reason == "Error: cannot find cgroup mount destination: unknown FS type"


def test_engine_timeout(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    _script(bindir, "podman", f"{SLEEP} 30\n")
    start = time.monotonic()
    info = detect_engine("podman", env={"PATH": str(bindir)}, timeout=0.5)
    assert time.monotonic() - start < 10
    assert info.installed and not info.usable
    assert info.reason == "`podman version` timed out after 0.5s"


def test_engines_not_installed_with_empty_path() -> None:
    engines = detect_engines(env={"PATH": ""})
    assert engines == (
        EngineInfo(name="podman", installed=False, usable=False, reason="not found on PATH"),
        EngineInfo(name="docker", installed=False, usable=False, reason="not found on PATH"),
    )
    lines = hardware_lines(_sample_profile(engines=engines))
    assert "podman: not installed (not found on PATH)" in lines


def test_detect_hardware_uses_the_given_environment(tmp_path: Path) -> None:
    profile = detect_hardware(env={"PATH": ""}, sysfs_root=tmp_path)
    assert profile.usable_engines == ()
    assert all(not e.installed for e in profile.engines)


# --------------------------------------------------------------------------- cgroups


def _mountinfo(proc: Path, lines: list[str], cgroup: str) -> None:
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n")
    (proc / "self" / "cgroup").write_text(cgroup)


def test_cgroup_v2(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    mine = root / "user.slice" / "app"
    mine.mkdir(parents=True)
    (mine / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (mine / "cgroup.subtree_control").write_text("")
    proc = tmp_path / "proc"
    _mountinfo(
        proc,
        [
            "22 1 0:21 / /proc rw,nosuid - proc proc rw",
            f"30 23 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate",
        ],
        "0::/user.slice/app\n",
    )
    info = detect_cgroup(proc)
    assert info.version == "v2"
    if os.access(mine, os.W_OK):
        assert info.controllers == ("memory", "cpu", "pids", "cpuset", "io")
    assert f"cgroup2 at {root}" in info.detail


def test_cgroup_hybrid(tmp_path: Path) -> None:
    base = tmp_path / "fs"
    for d in ("cpu,cpuacct", "memory/lxc/box", "systemd", "unified"):
        (base / d).mkdir(parents=True)
    (base / "unified" / "cgroup.controllers").write_text("\n")
    (base / "unified" / "cgroup.subtree_control").write_text("")
    proc = tmp_path / "proc"
    _mountinfo(
        proc,
        [
            f"32 31 0:29 / {base}/cpu\\054cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
            f"35 31 0:32 / {base}/memory rw - cgroup cgroup rw,memory",
            f"40 31 0:37 / {base}/systemd rw - cgroup cgroup rw,xattr,name=systemd",
            f"41 31 0:38 / {base}/unified rw - cgroup2 cgroup2 rw",
        ],
        "4:memory:/lxc/box\n2:cpu,cpuacct:/\n1:name=systemd:/\n0::/\n",
    )
    info = detect_cgroup(proc)
    assert info.version == "hybrid"
    if os.access(base / "memory" / "lxc" / "box", os.W_OK):
        assert info.controllers == ("memory", "cpu", "cpuacct")
    assert "v1 controllers mounted under" in info.detail
    line = hardware_lines(_sample_profile(cgroup=info))[-1]
    assert line.startswith("cgroup: v1 (hybrid); controllers writable: ")


def test_cgroup_none_and_unreadable(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _mountinfo(proc, ["22 1 0:21 / /proc rw - proc proc rw"], "")
    info = detect_cgroup(proc)
    assert info.version == "none" and info.controllers == ()
    assert "no cgroup or cgroup2 mount" in info.detail
    missing = detect_cgroup(tmp_path / "nowhere")
    assert missing.version == "none"
    assert missing.detail.startswith("cannot read ")


def test_cgroup_on_this_machine() -> None:
    info = detect_cgroup()
    assert info.version in ("v1", "v2", "hybrid", "none")
    assert len(set(info.controllers)) == len(info.controllers)
    if info.version != "none":
        assert info.detail
