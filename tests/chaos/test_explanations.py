"""Explanations are true (issue #17, item 9).

Every "because" and "not" of a plan is a fact las checked, or says what it did not check:
`--mode native` does not probe the engines, so the plan says "not considered", never "not
installed"; a saved profile (`--hardware FILE`) is named as the source of what it says; an
engine missing from PATH is "not found on PATH". Real podman and docker (dockerd at
/run/las-ci/docker.sock), real `las plan`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import PROFILES, Las

from localaistack.control.hardware import EngineInfo, detect_engine, detect_gpus

NO_ENGINE = PROFILES / "no-engine.json"
CPU_ONLY = PROFILES / "cpu-only.json"
COLLECTED = "2025-06-02T09:30:00+00:00"  # both profiles'
ALL_AUTO = "first usable engine (policy container_engine: auto)"


def usable(name: str, env: dict[str, str] | None = None) -> EngineInfo:
    info = detect_engine(name, env=env if env is not None else dict(os.environ))
    if not info.usable:
        pytest.skip(f"{name} is not usable here: {info.reason}")
    return info


def decisions(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["topic"]: d for d in plan["decisions"]}


def lines(text: str) -> list[str]:
    """The plan's text lines, each with its runs of spaces made one (columns vary)."""
    return [" ".join(line.split()) for line in text.splitlines()]


def has_lines(text: str, *want: str) -> None:
    got = lines(text)
    for i in range(len(got) - len(want) + 1):
        if got[i : i + len(want)] == list(want):
            return
    pytest.fail(f"lines {want} not found in:\n{text}")


def root_policy(las: Las, *names: str, **extra: Any) -> Path:
    """A policy that lets these modules run as root (las runs as root here; the test's
    Python may live where the native user cannot read)."""
    las.home.mkdir(mode=0o700, exist_ok=True)
    path = las.home / "policy.yaml"
    data = {"trusted_native": list(names), "native_allow_root": list(names), **extra}
    path.write_text(yaml.safe_dump(data))
    return path


def manifest(tmp_path: Path, name: str, **runtime: Any) -> Path:
    rt: dict[str, Any] = {
        "modes": ["native", "container"],
        "native": {"command": ["/usr/bin/sleep", "300"]},
        "container": {"image": "localhost/las-busybox:latest", "command": ["sleep", "300"]},
        **runtime,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "runtime": rt}))
    return path


# --- --mode native: the engines are not probed, and the plan says so --------------------------


def test_native_mode_with_engines_installed_claims_nothing_about_them(las: Las) -> None:
    usable("podman")
    usable("docker")
    root_policy(las, "echo-http")
    text = las.ok("plan", "echo-http", "--mode", "native").out
    has_lines(
        text,
        "mode native",
        "because requested with --mode",
        "not container: not considered: --mode native asked for",
    )
    assert "not installed" not in text and "podman" not in text and "docker" not in text
    plan = las.ok("plan", "echo-http", "--mode", "native", "--json").json()
    assert decisions(plan)["mode"] == {
        "topic": "mode",
        "choice": "native",
        "reason": "requested with --mode",
        "rejected": [{"option": "container", "reason": "not considered: --mode native asked for"}],
    }


def test_native_mode_still_names_what_the_policy_rules_out(las: Las, tmp_path: Path) -> None:
    """A policy reason is checked without probing anything: it is kept, and true."""
    path = manifest(tmp_path, "polsvc")
    root_policy(las, "polsvc", allowed_modes=["native"], default_mode="native")
    plan = las.ok("plan", str(path), "--mode", "native", "--json").json()
    assert decisions(plan)["mode"]["rejected"] == [
        {"option": "container", "reason": "policy allowed_modes is ['native']"}
    ]


# --- --mode container: an engine missing from PATH ---------------------------------------------


def bin_with(tmp_path: Path, *names: str) -> str:
    """A PATH of one directory holding only these commands (this system's /bin is
    /usr/bin, where both engines live)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name in names:
        for d in ("/usr/local/bin", "/usr/bin"):
            if os.path.exists(f"{d}/{name}"):
                (bindir / name).symlink_to(f"{d}/{name}")
                break
    return str(bindir)


def test_container_mode_with_podman_missing_from_path(las: Las, tmp_path: Path) -> None:
    path_env = bin_with(tmp_path, "docker")
    docker = usable("docker", {**os.environ, "PATH": path_env})
    las.env["PATH"] = path_env
    text = las.ok("plan", "echo-http", "--mode", "container").out
    has_lines(
        text,
        "container engine docker",
        f"because docker {docker.version}: {ALL_AUTO}",
        "not podman: not found on PATH",
    )
    has_lines(text, "mode container", "because requested with --mode", "not native: not requested")
    assert "not installed" not in text


def test_container_mode_with_no_engine_on_path(las: Las, tmp_path: Path) -> None:
    las.env["PATH"] = bin_with(tmp_path)
    res = las("plan", "echo-http", "--mode", "container")
    assert res.code == 3
    assert res.err == (
        "error: --mode container is not possible: no usable container engine (podman: not "
        "found on PATH; docker: not found on PATH)\n"
        "hint: install and start Podman or Docker, or use --mode native\n"
    )


def test_container_mode_with_docker_whose_daemon_does_not_answer(las: Las, tmp_path: Path) -> None:
    path_env = bin_with(tmp_path, "docker")
    env = {**os.environ, "PATH": path_env, "DOCKER_HOST": f"unix://{tmp_path}/none.sock"}
    probe = detect_engine("docker", env=env)
    assert probe.installed and not probe.usable and probe.reason
    las.env.update(PATH=path_env, DOCKER_HOST=env["DOCKER_HOST"])
    res = las("plan", "echo-http", "--mode", "container")
    assert res.code == 3
    assert res.err.startswith(
        "error: --mode container is not possible: no usable container engine (podman: not "
        f"found on PATH; docker: not usable: {probe.reason})\n"
    )


# --- a saved hardware profile: las probed nothing, and says whose facts they are -------------


def test_saved_profile_names_itself_as_the_source(las: Las, tmp_path: Path) -> None:
    plan = las.ok("plan", "echo-http", "--hardware", str(NO_ENGINE), "--json").json()
    d = decisions(plan)
    assert d["mode"] == {
        "topic": "mode",
        "choice": "native",
        "reason": "the manifest's preferred mode",
        "rejected": [
            {
                "option": "container",
                "reason": "no usable container engine (podman: not found on PATH; docker: "
                f"not found on PATH), according to the hardware profile {NO_ENGINE} "
                f"(collected {COLLECTED}; not probed by las)",
            }
        ],
    }
    port = plan["ports"][0]["host_port"]
    assert d["port http"] == {
        "topic": "port http",
        "choice": f"127.0.0.1:{port}",
        "reason": f"free on this machine now; not checked on bare-box ({NO_ENGINE})",
        "rejected": [],
    }
    assert d["executable"]["reason"] == (
        f"not resolved: this plan is for another machine ({NO_ENGINE})"
    )
    assert d["requirements"]["reason"].endswith(f"on bare-box ({NO_ENGINE})")
    res = las("plan", "echo-http", "--mode", "container", "--hardware", str(NO_ENGINE))
    assert res.code == 3
    assert res.err.startswith(
        "error: --mode container is not possible: no usable container engine (podman: not "
        f"found on PATH; docker: not found on PATH), according to the hardware profile "
        f"{NO_ENGINE} (collected {COLLECTED}; not probed by las)\n"
    )


def test_saved_profile_without_gpus_and_a_pin_not_checked(las: Las, tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "gpuopt",
        modes=["native"],
        resources={"gpus": 1},
    )
    data = yaml.safe_load(path.read_text())
    data["hardware"] = {"gpu": {"vram_min": "1GiB", "optional": True}}
    path.write_text(yaml.safe_dump(data))
    las.home.mkdir(mode=0o700, exist_ok=True)
    (las.home / "policy.yaml").write_text(
        yaml.safe_dump({"trusted_native": [{"module": "gpuopt", "sha256": "0" * 64}]})
    )
    plan = las.ok("plan", str(path), "--hardware", str(CPU_ONLY), "--json").json()
    d = decisions(plan)
    assert d["gpus"]["reason"] == (
        f"this machine has none, according to the hardware profile {CPU_ONLY} (collected "
        f"{COLLECTED}; not probed by las) (hardware.gpu.optional allows running without one)"
    )
    assert d["trust"] == {
        "topic": "trust",
        "choice": "pinned, not checked",
        "reason": f"this plan is for another machine ({CPU_ONLY}): its files are not here "
        "to hash; `las run` there checks the pin",
        "rejected": [],
    }
    # Here, the pin is checked (and this one does not match /usr/bin/sleep).
    res = las("plan", str(path))
    assert res.code == 3 and "pinned sha256 " + "0" * 64 in res.err


# --- the default mode choice, with the engines probed -----------------------------------------


def test_default_choice_with_engines_probed(las: Las, tmp_path: Path) -> None:
    podman = usable("podman")
    native_first = manifest(tmp_path, "nfirst", preferred="native")
    container_first = manifest(tmp_path, "cfirst", preferred="container")
    no_preference = manifest(tmp_path, "nopref")
    root_policy(las, "nfirst", "cfirst", "nopref")
    d = decisions(las.ok("plan", str(native_first), "--json").json())
    assert d["mode"]["reason"] == "the manifest's preferred mode"
    # Only said when an engine answered (the container plan is possible).
    assert d["mode"]["rejected"] == [{"option": "container", "reason": "lower in preference"}]
    text = las.ok("plan", str(container_first)).out
    has_lines(text, "mode container", "because the manifest's preferred mode")
    has_lines(text, "not native: lower in preference")
    has_lines(text, "container engine podman", f"because podman {podman.version}: {ALL_AUTO}")
    d = decisions(las.ok("plan", str(no_preference), "--json").json())
    assert d["mode"]["choice"] == "container"
    assert d["mode"]["reason"] == f"the policy's default mode ({las.home / 'policy.yaml'})"


def test_no_gpu_here_names_what_the_probes_said(las: Las, tmp_path: Path) -> None:
    gpus, notes = detect_gpus()
    if gpus:
        pytest.skip("this machine has a GPU")
    path = manifest(tmp_path, "gpuhere", modes=["native"], resources={"gpus": 1})
    data = yaml.safe_load(path.read_text())
    data["hardware"] = {"gpu": {"vram_min": "1GiB", "optional": True}}
    path.write_text(yaml.safe_dump(data))
    root_policy(las, "gpuhere")
    d = decisions(las.ok("plan", str(path), "--json").json())
    why = "; ".join(f"{n.source}: {n.detail}" for n in notes)
    assert d["gpus"]["reason"] == (
        f"this machine has none that las found ({why}) (hardware.gpu.optional allows "
        "running without one)"
    )
