"""`las plan` end to end: the real CLI, saved hardware profiles and this machine's own.

Native plans resolve their executable on PATH: the test modules' programs are stub scripts
in a directory put on the CLI's PATH. Policies go into the test's LAS_HOME or --policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from localaistack.control.hardware import detect_hardware

DATA = Path(__file__).resolve().parent.parent / "data"
PROFILES = DATA / "profiles"
GOOD = DATA / "manifests" / "good"
GPU_SVC = str(GOOD / "gpu-svc.yaml")
CONTAINER_FIRST = str(GOOD / "container-first.yaml")
GIB = 1 << 30


@pytest.fixture
def las_path(las, open_dir: Path):
    """`las` with stub executables of the test modules first on PATH (in a directory that
    the native user may enter: as root, the plan checks that it can execute them)."""
    bindir = open_dir / "bin"
    bindir.mkdir()
    for name in ("gpu-svc-server", "cf-server"):
        stub = bindir / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    las.env["PATH"] = f"{bindir}:{las.env.get('PATH', '/usr/bin:/bin')}"
    las.bindir = bindir
    return las


def write_policy(las, **policy: Any) -> Path:
    las.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = las.home / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def decisions(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["topic"]: d for d in plan["decisions"]}


def native_env(plan: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["value"] for v in plan["native"]["env"]}


# --- one module, two machines -----------------------------------------------------------------


def test_gpu_module_on_a_gpu_profile_and_on_this_machine(las_path) -> None:
    las = las_path
    write_policy(las, trusted_native=["gpu-svc"])

    saved = las.ok("plan", GPU_SVC, "--hardware", str(PROFILES / "2x24gib.json"), "--json").json()
    assert saved["mode"] == "native"
    assert len(saved["gpus"]) == 1
    gpu = saved["gpus"][0]
    profile_uuids = {
        "GPU-84fd1cc3-ad96-5d92-b133-bf6af7eab327",
        "GPU-1e048dd5-81cd-563a-8a3f-a734061c8ae0",
    }
    assert gpu["uuid"] in profile_uuids
    d = decisions(saved)
    assert f"GPU {gpu['index']} (NVIDIA GeForce RTX 4090" in d["gpus"]["choice"]
    assert "best fit for 16.0GiB" in d["gpus"]["reason"]
    assert native_env(saved)["CUDA_VISIBLE_DEVICES"] == gpu["uuid"]
    # A plan for another machine leaves argv[0] as the manifest names it: paths there are
    # unknown here.
    assert saved["native"]["argv"][0] == "gpu-svc-server"
    exe = [d for d in saved["decisions"] if d["topic"] == "executable"]
    assert exe and exe[0]["reason"].startswith("not resolved: this plan is for another machine")
    assert "ws-2x4090" in d["requirements"]["reason"]

    here = las.ok("plan", GPU_SVC, "--json").json()
    assert here["mode"] == "native"
    h = decisions(here)
    assert "(detected)" in h["requirements"]["reason"]
    assert h["gpus"] != d["gpus"]
    assert h["gpus"]["reason"]
    hw = detect_hardware(probe_engines=False)
    fitting = [g for g in hw.gpus if g.memory_free >= 16 * GIB]
    if not hw.gpus:
        assert here["gpus"] == []
        assert h["gpus"]["choice"] == "none"
        assert "this machine has none that las found (" in h["gpus"]["reason"]
        assert native_env(here)["CUDA_VISIBLE_DEVICES"] == ""
    elif not fitting:
        assert here["gpus"] == []
        assert "no GPU has 16.0GiB free" in h["gpus"]["reason"]
        assert native_env(here)["CUDA_VISIBLE_DEVICES"] == ""
    else:
        (mine,) = here["gpus"]
        assert mine["uuid"] in {g.uuid for g in fitting}
        assert mine["uuid"] not in profile_uuids
        nvidia = mine["vendor"] == "nvidia"
        assert native_env(here)["CUDA_VISIBLE_DEVICES"] == (mine["uuid"] if nvidia else "")


def test_plan_text_output_explains_decisions(las_path) -> None:
    write_policy(las_path, trusted_native=["gpu-svc"])
    out = las_path.ok("plan", GPU_SVC, "--hardware", str(PROFILES / "2x24gib.json")).out
    assert out.startswith("Plan ")
    assert "Decisions:" in out
    assert "because best fit for 16.0GiB of VRAM per GPU" in out
    assert "Execution:" in out


# --- policy and engines decide the mode --------------------------------------------------------


def test_native_mode_on_an_untrusted_module(las_path) -> None:
    res = las_path(
        "plan", GPU_SVC, "--mode", "native", "--hardware", str(PROFILES / "2x24gib.json")
    )
    assert res.code == 3
    assert "--mode native is not possible" in res.err
    assert "module 'gpu-svc' is not in policy trusted_native (built-in default)" in res.err
    assert "hint: add gpu-svc to trusted_native" in res.err
    assert res.out == ""


def test_preferred_container_falls_back_to_trusted_native(las_path) -> None:
    write_policy(las_path, trusted_native=["container-first"])
    hw = str(PROFILES / "no-engine.json")
    plan = las_path.ok("plan", CONTAINER_FIRST, "--hardware", hw, "--set", "token=t0k", "--json")
    plan = plan.json()
    assert plan["mode"] == "native"
    reason = decisions(plan)["mode"]["reason"]
    assert "the manifest prefers container, which is unavailable" in reason
    engines = "podman: not found on PATH; docker: not found on PATH"
    assert f"no usable container engine ({engines})" in reason
    rejected = decisions(plan)["mode"]["rejected"]
    assert [r["option"] for r in rejected] == ["container"]
    assert plan["native"]["argv"][0] == "cf-server"  # --hardware: another machine
    # The secret parameter is masked in what las prints.
    assert (
        "t0k"
        not in las_path.ok(
            "plan", CONTAINER_FIRST, "--hardware", hw, "--set", "token=t0k", "--json"
        ).out
    )


def test_preferred_container_untrusted_and_no_engine_names_both(las_path) -> None:
    res = las_path(
        "plan", CONTAINER_FIRST, "--hardware", str(PROFILES / "no-engine.json"), "--set", "token=x"
    )
    assert res.code == 3
    assert "module 'container-first' cannot run here" in res.err
    assert "container: no usable container engine" in res.err
    assert "native: module 'container-first' is not in policy trusted_native" in res.err


def test_preferred_container_with_an_engine(las_path) -> None:
    plan = las_path.ok(
        "plan",
        CONTAINER_FIRST,
        "--hardware",
        str(PROFILES / "cpu-only.json"),
        "--set",
        "token=x",
        "--json",
    ).json()
    assert plan["mode"] == "container"
    assert decisions(plan)["mode"]["reason"] == "the manifest's preferred mode"
    assert plan["container"]["engine"] == "podman"


def test_container_mode_without_engine(las_path) -> None:
    res = las_path(
        "plan", GPU_SVC, "--mode", "container", "--hardware", str(PROFILES / "no-engine.json")
    )
    assert res.code == 3
    assert "--mode container is not possible: no usable container engine" in res.err
    assert "podman: not found on PATH" in res.err
    assert "hint: install and start Podman or Docker" in res.err


# --- echo-http, ports and the host address ----------------------------------------------------


def test_echo_http_json_on_this_machine(las) -> None:
    # The system's python3 first: as root the plan checks that the native user can run it
    # (a venv's interpreter may live under /root).
    las.env["PATH"] = f"/usr/bin:{las.env.get('PATH', '/bin')}"
    plan = las.ok("plan", "echo-http", "--json").json()
    assert plan["module"]["name"] == "echo-http"
    assert plan["module"]["source"] == "builtin"
    assert plan["mode"] in ("native", "container")
    assert len(plan["plan_id"]) == 16
    assert plan["decisions"]
    for d in plan["decisions"]:
        assert d["topic"] and d["choice"] and d["reason"]
        assert all(r["reason"] for r in d["rejected"])
    topics = decisions(plan)
    for topic in ("requirements", "mode", "parameters", "host address", "port http", "gpus"):
        assert topic in topics
    assert [p["host_ip"] for p in plan["ports"]] == ["127.0.0.1"]
    assert topics["host address"]["reason"] == "policy network.host (built-in default)"


def test_expose_binds_all_addresses_and_says_why(las) -> None:
    write_policy(las, trusted_native=["echo-http"], network={"expose": {"echo-http": "0.0.0.0"}})
    plan = las.ok("plan", "echo-http", "--hardware", str(PROFILES / "cpu-only.json"), "--json")
    plan = plan.json()
    assert plan["mode"] == "native"
    assert [p["host_ip"] for p in plan["ports"]] == ["0.0.0.0"]
    host = decisions(plan)["host address"]
    assert host["choice"] == "0.0.0.0"
    assert host["reason"] == "policy network.expose allows echo-http"
    # The service itself is told to listen on that address.
    assert plan["native"]["argv"][-3:-1] == ["0.0.0.0", str(plan["ports"][0]["host_port"])]


def test_expose_via_policy_option(las, tmp_path: Path) -> None:
    pol = tmp_path / "open.yaml"
    pol.write_text("trusted_native: [echo-http]\nnetwork: {expose: {other: 0.0.0.0}}\n")
    plan = las.ok(
        "plan",
        "echo-http",
        "--policy",
        str(pol),
        "--hardware",
        str(PROFILES / "cpu-only.json"),
        "--json",
    ).json()
    assert [p["host_ip"] for p in plan["ports"]] == ["127.0.0.1"]
    assert decisions(plan)["host address"]["reason"] == f"policy network.host ({pol})"


# --- parameters --------------------------------------------------------------------------------


def test_unknown_parameter_exits_2_naming_it(las) -> None:
    res = las(
        "plan", "echo-http", "--set", "mesage=hi", "--hardware", str(PROFILES / "cpu-only.json")
    )
    assert res.code == 2
    assert "unknown parameter(s) for echo-http: mesage" in res.err
    assert "hint: parameters of echo-http: message" in res.err


def test_missing_required_parameter_exits_2_with_hint(las_path) -> None:
    write_policy(las_path, trusted_native=["container-first"])
    res = las_path("plan", CONTAINER_FIRST, "--hardware", str(PROFILES / "cpu-only.json"))
    assert res.code == 2
    assert "missing required parameter 'token' for container-first (API token)" in res.err
    assert "hint: pass --set token=VALUE" in res.err


def test_set_without_equals_sign(las) -> None:
    res = las(
        "plan", "echo-http", "--set", "message", "--hardware", str(PROFILES / "cpu-only.json")
    )
    assert res.code == 2
    assert "--set 'message' is not NAME=VALUE" in res.err


# --- inputs that do not exist -----------------------------------------------------------------


def test_unknown_module_name(las) -> None:
    res = las("plan", "no-such-module")
    assert res.code == 2
    assert "unknown module 'no-such-module'" in res.err
    assert "echo-http" in res.err


def test_invalid_manifest_path(las) -> None:
    res = las("plan", str(DATA / "manifests" / "bad" / "unknown-mode.yaml"))
    assert res.code == 1
    assert "unknown mode 'warp'" in res.err


def test_missing_hardware_profile(las, tmp_path: Path) -> None:
    res = las("plan", "echo-http", "--hardware", str(tmp_path / "nope.json"))
    assert res.code == 1
    assert "does not exist" in res.err
    assert "las hw --save" in res.err


def test_hardware_requirements_unmet(las, tmp_path: Path) -> None:
    manifest = tmp_path / "greedy.yaml"
    manifest.write_text(
        "name: greedy\nhardware: {cpu: {cores_min: 999}}\n"
        "runtime: {modes: [container], container: {image: localhost/x:1}}\n"
    )
    res = las("plan", str(manifest), "--hardware", str(PROFILES / "cpu-only.json"))
    assert res.code == 3
    assert "greedy cannot run on cpu-only-box: hardware.cpu.cores_min is 999" in res.err
