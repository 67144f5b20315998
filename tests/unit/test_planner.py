"""The planner: mode selection matrix, requirements, GPUs, ports, parameters, executables.

Every test calls ``make_plan`` with a saved hardware profile, a parsed policy, a
deterministic port allocator and an injected ``which``: nothing here depends on this machine.
"""

from __future__ import annotations

import itertools
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from localaistack.control.hardware import GpuInfo, HardwareProfile, load_profile
from localaistack.control.manifest import LoadedManifest, load_manifest_file, parse_manifest
from localaistack.control.planner import PlanRequest, make_plan
from localaistack.control.policy import Policy, default_policy, parse_policy
from localaistack.errors import (
    LasError,
    NoCompatibleMode,
    PlanningError,
    PolicyViolation,
    RequirementUnmet,
    UsageError,
)
from localaistack.plan import ExecutionPlan

DATA = Path(__file__).resolve().parent.parent / "data"
PROFILES = DATA / "profiles"
MANIFESTS = DATA / "manifests"
GIB = 1 << 30
ENVIRON = {
    "PATH": "/usr/local/bin:/usr/bin",
    "HOME": "/home/user",
    "LANG": "C.UTF-8",
    "SECRET_THING": "do-not-pass",
    "CUDA_VISIBLE_DEVICES": "0",
}


def port_of(host: str, name: str) -> int:
    """Deterministic fake port allocator."""
    return 40000 + zlib.crc32(f"{host}/{name}".encode()) % 20000


def which(cmd: str, path: str | None) -> str | None:
    return f"/usr/bin/{cmd}"


def profile(name: str) -> HardwareProfile:
    return load_profile(PROFILES / f"{name}.json")


def manifest(
    name: str = "svc",
    modes: tuple[str, ...] = ("native", "container"),
    preferred: str | None = None,
    *,
    runtime: dict[str, Any] | None = None,
    **top: Any,
) -> LoadedManifest:
    rt: dict[str, Any] = {"modes": list(modes)}
    if preferred:
        rt["preferred"] = preferred
    if "native" in modes:
        rt["native"] = {"command": ["svc-server", "--host", "${host}", "--port", "${ports.http}"]}
    if "container" in modes:
        rt["container"] = {"image": "localhost/svc:1", "command": ["--port", "${ports.http}"]}
    rt["ports"] = [{"name": "http", "port": 8080}]
    rt.update(runtime or {})
    data = {"name": name, "version": "1.2.3", "runtime": rt, **top}
    return parse_manifest(yaml.safe_dump(data), Path(f"/manifests/{name}.yaml"))


def policy(**fields: Any) -> Policy:
    return parse_policy(yaml.safe_dump(fields), "test-policy.yaml")


def plan(
    loaded: LoadedManifest,
    hw: HardwareProfile | str = "cpu-only",
    pol: Policy | None = None,
    mode: str | None = None,
    sets: dict[str, str] | None = None,
    **kwargs: Any,
) -> ExecutionPlan:
    kwargs.setdefault("which", which)
    kwargs.setdefault("environ", ENVIRON)
    kwargs.setdefault(
        "euid", 1000
    )  # the same plans as root or not (tests/unit/test_planner_user.py)
    return make_plan(
        loaded,
        profile(hw) if isinstance(hw, str) else hw,
        pol or policy(trusted_native=[loaded.manifest.name]),
        PlanRequest(mode=mode, sets=sets),
        port_of,
        **kwargs,
    )


def decision(p: ExecutionPlan, topic: str) -> Any:
    found = [d for d in p.decisions if d.topic == topic]
    assert len(found) == 1, f"no single {topic!r} decision in {[d.topic for d in p.decisions]}"
    return found[0]


def env_of(p: ExecutionPlan) -> dict[str, str]:
    assert p.native is not None
    return {v.name: v.value for v in p.native.env}


# --- the mode selection matrix -------------------------------------------------------------

DECLARED = [
    (("native",), None),
    (("container",), None),
    (("native", "container"), "native"),
    (("native", "container"), "container"),
    (("native", "container"), None),
    (("container", "native"), None),
]
ENGINES = ["no-engine", "cpu-only"]  # cpu-only has a usable podman
POLICIES = [
    (("container", "native"), "container"),
    (("container", "native"), "native"),
    (("container",), "container"),
    (("native",), "native"),
]
TRUSTED = [True, False]
REQUESTED = [None, "native", "container"]


def expected_mode(
    declared: tuple[str, ...],
    preferred: str | None,
    engine_ok: bool,
    allowed: tuple[str, ...],
    default_mode: str,
    trusted: bool,
    requested: str | None,
) -> str | type[LasError]:
    """An independent oracle of the selection rules."""

    def usable(mode: str) -> bool:
        return (
            mode in allowed and (mode != "native" or trusted) and (mode != "container" or engine_ok)
        )

    if requested is not None:
        if requested not in declared:
            return NoCompatibleMode
        if usable(requested):
            return requested
        policy_forbids = requested not in allowed or (requested == "native" and not trusted)
        return PolicyViolation if policy_forbids else NoCompatibleMode
    if preferred is not None and usable(preferred):
        return preferred
    if default_mode in declared and usable(default_mode):
        return default_mode
    for mode in declared:
        if usable(mode):
            return mode
    return NoCompatibleMode


@pytest.mark.parametrize(
    ("declared", "engines", "pol", "trusted", "requested"),
    list(itertools.product(DECLARED, ENGINES, POLICIES, TRUSTED, REQUESTED)),
)
def test_mode_selection_matrix(
    declared: tuple[tuple[str, ...], str | None],
    engines: str,
    pol: tuple[tuple[str, ...], str],
    trusted: bool,
    requested: str | None,
) -> None:
    modes, preferred = declared
    allowed, default_mode = pol
    loaded = manifest("svc", modes, preferred)
    the_policy = policy(
        allowed_modes=list(allowed),
        default_mode=default_mode,
        trusted_native=["svc"] if trusted else ["someone-else"],
    )
    want = expected_mode(
        modes, preferred, engines == "cpu-only", allowed, default_mode, trusted, requested
    )
    if isinstance(want, str):
        p = plan(loaded, engines, the_policy, mode=requested)
        assert p.mode == want
        d = decision(p, "mode")
        assert d.choice == want
        assert d.reason
        assert (p.native is not None) == (want == "native")
        assert (p.container is not None) == (want == "container")
        if requested:
            assert d.reason == "requested with --mode"
        # Every declared mode that was not taken is listed with the reason why not.
        assert {r.option for r in d.rejected} == set(modes) - {want}
        assert all(r.reason for r in d.rejected)
    else:
        with pytest.raises(want) as exc:
            plan(loaded, engines, the_policy, mode=requested)
        assert type(exc.value) is want
        assert exc.value.exit_code == 3
        assert exc.value.hint


def test_fallback_reason_names_the_unavailable_preferred_mode() -> None:
    loaded = manifest("svc", ("native", "container"), "container")
    p = plan(loaded, "no-engine")
    d = decision(p, "mode")
    assert d.choice == "native"
    assert "prefers container, which is unavailable" in d.reason
    assert "no usable container engine" in d.reason
    assert "podman: not found on PATH" in d.reason


def test_policy_default_mode_reason() -> None:
    loaded = manifest("svc", ("native", "container"))
    p = plan(loaded, "cpu-only", policy(trusted_native=["svc"], default_mode="native"))
    assert p.mode == "native"
    assert decision(p, "mode").reason == "the policy's default mode (test-policy.yaml)"
    rejected = {r.option: r.reason for r in decision(p, "mode").rejected}
    assert rejected == {"container": "lower in preference"}


def test_requested_untrusted_native_names_trusted_native() -> None:
    loaded = manifest("svc", ("native", "container"))
    with pytest.raises(PolicyViolation, match="trusted_native") as exc:
        plan(loaded, "cpu-only", policy(trusted_native=[]), mode="native")
    assert "--mode native is not possible" in exc.value.message
    assert "trusted_native" in (exc.value.hint or "")


def test_requested_container_without_engine_names_the_engines() -> None:
    loaded = manifest("svc", ("native", "container"))
    with pytest.raises(NoCompatibleMode) as exc:
        plan(loaded, "no-engine", mode="container")
    assert "no usable container engine" in exc.value.message
    assert "podman: not found on PATH" in exc.value.message
    assert "docker: not found on PATH" in exc.value.message


def test_requested_undeclared_mode() -> None:
    with pytest.raises(NoCompatibleMode, match="does not declare mode 'container'"):
        plan(manifest("svc", ("native",)), mode="container")


def test_unknown_requested_mode_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown mode 'warp'"):
        plan(manifest(), mode="warp")


def test_nothing_usable_names_every_reason() -> None:
    loaded = manifest("svc", ("container", "native"))
    with pytest.raises(NoCompatibleMode) as exc:
        plan(loaded, "no-engine", policy(trusted_native=[]))
    msg = exc.value.message
    assert "container: no usable container engine" in msg
    assert "native: module 'svc' is not in policy trusted_native" in msg


def test_container_engine_policy() -> None:
    loaded = manifest("svc", ("container",))
    with pytest.raises(NoCompatibleMode) as exc:
        plan(loaded, "cpu-only", policy(container_engine="docker"))
    assert "podman: policy container_engine is 'docker'" in exc.value.message
    assert "docker: not found on PATH" in exc.value.message
    p = plan(loaded, "2x24gib", policy(container_engine="docker"))
    assert p.container is not None and p.container.engine == "docker"
    engine = decision(p, "container engine")
    docker = profile("2x24gib").engine("docker")
    assert docker is not None
    assert engine.reason == f"docker {docker.version}: policy container_engine"
    assert [r.option for r in engine.rejected] == ["podman"]


# --- trust pinned to the resolved executable's sha256 --------------------------------------


def _executable(tmp_path: Path, body: bytes = b"#!/bin/sh\nexit 0\n") -> tuple[str, str]:
    import hashlib

    exe = tmp_path / "svc-server"
    exe.write_bytes(body)
    exe.chmod(0o755)
    return str(exe), hashlib.sha256(body).hexdigest()


def test_trust_pinned_to_the_executable_hash(tmp_path: Path) -> None:
    exe, digest = _executable(tmp_path)
    loaded = manifest("svc", ("native", "container"), "native")
    pinned = policy(trusted_native=[{"module": "svc", "sha256": digest}])
    p = plan(loaded, "cpu-only", pinned, which=lambda cmd, path: exe)
    assert p.mode == "native"
    assert decision(p, "trust").choice == f"executable {exe}: sha256 {digest}"
    assert decision(p, "trust").reason.startswith("matches the pin of the executable in")
    assert p.native is not None and [(f.path, f.sha256) for f in p.native.pinned] == [(exe, digest)]


def test_pinned_hash_mismatch_refuses_and_names_both_hashes(tmp_path: Path) -> None:
    exe, digest = _executable(tmp_path)
    loaded = manifest("svc", ("native", "container"), "native")
    pinned = policy(trusted_native=[{"module": "svc", "sha256": "0" * 64}])
    # No silent fallback to the container: a replaced executable is refused outright.
    with pytest.raises(PolicyViolation) as exc:
        plan(loaded, "cpu-only", pinned, which=lambda cmd, path: exe)
    assert "0" * 64 in exc.value.message and digest in exc.value.message
    either = policy(
        trusted_native=[{"module": "svc", "sha256": "0" * 64}, {"module": "svc", "sha256": digest}]
    )
    assert plan(loaded, "cpu-only", either, which=lambda cmd, path: exe).mode == "native"


def test_unreadable_pinned_executable_is_a_planning_error(tmp_path: Path) -> None:
    loaded = manifest("svc", ("native",), "native")
    pinned = policy(trusted_native=[{"module": "svc", "sha256": "0" * 64}])
    missing = str(tmp_path / "gone")
    with pytest.raises(PlanningError, match="cannot verify the trust pin"):
        plan(loaded, "cpu-only", pinned, which=lambda cmd, path: missing)


# --- policy tiers ----------------------------------------------------------------------------

TIERS = [
    {"name": "gpu", "conditions": {"gpu_count_min": 1}, "allow": {"runtimes": ["native"]}},
    {"name": "cpu", "allow": {"runtimes": ["container"]}, "deny": ["forbidden"]},
]


def test_tier_narrows_modes_and_is_recorded() -> None:
    loaded = manifest("svc", ("native", "container"), "native")
    pol = policy(trusted_native=["svc"], policies=TIERS)
    p = plan(loaded, "cpu-only", pol)
    assert p.mode == "container"
    assert decision(p, "policy tier").choice == "cpu"
    assert "tier 'cpu' allows runtimes ['container']" in decision(p, "mode").reason
    with pytest.raises(PolicyViolation, match="tier 'cpu'"):
        plan(loaded, "cpu-only", pol, mode="native")
    p = plan(loaded, "2x24gib", pol)
    assert p.mode == "native"
    assert decision(p, "policy tier").choice == "gpu"


def test_tier_deny_list() -> None:
    pol = policy(policies=TIERS)
    with pytest.raises(PolicyViolation, match="policy tier 'cpu' denies module 'forbidden'"):
        plan(manifest("forbidden", ("container",)), "cpu-only", pol)


def test_no_matching_tier() -> None:
    pol = policy(policies=[{"name": "big", "conditions": {"gpu_count_min": 8}}])
    with pytest.raises(PolicyViolation, match="no policy tier matches"):
        plan(manifest("svc", ("container",)), "cpu-only", pol)


# --- hardware requirements ------------------------------------------------------------------


def test_cores_min_unmet() -> None:
    loaded = manifest("svc", ("container",), hardware={"cpu": {"cores_min": 999}})
    with pytest.raises(RequirementUnmet) as exc:
        plan(loaded, "cpu-only")
    assert "hardware.cpu.cores_min is 999; this machine has 16 core(s)" in exc.value.message
    assert "cpu-only-box" in exc.value.message
    assert exc.value.exit_code == 3


def test_every_unmet_requirement_is_listed() -> None:
    loaded = manifest(
        "svc",
        ("container",),
        hardware={
            "cpu": {"cores_min": 999},
            "memory": {"ram_min": "1TiB"},
            "gpu": {"vram_min": "8GiB"},
        },
    )
    with pytest.raises(RequirementUnmet) as exc:
        plan(loaded, "cpu-only")
    msg = exc.value.message
    assert "hardware.cpu.cores_min" in msg
    assert "hardware.memory.ram_min is 1.0TiB; this machine has 64.0GiB" in msg
    assert "requires a GPU with 8.0GiB of VRAM; this machine has none" in msg


def test_legacy_ram_min_gb_is_a_requirement() -> None:
    loaded = manifest("svc", ("container",), hardware={"memory": {"ram_min_gb": 100}})
    with pytest.raises(RequirementUnmet, match=r"hardware.memory.ram_min is 100.0GiB"):
        plan(loaded, "cpu-only")
    assert plan(loaded, "2x24gib").mode == "container"


def test_vram_min_larger_than_one_gpu_without_multi_gpu() -> None:
    loaded = manifest("svc", ("container",), hardware={"gpu": {"vram_min": "40GiB"}})
    with pytest.raises(RequirementUnmet, match=r"largest GPU has 24.0GiB \(multi_gpu is false\)"):
        plan(loaded, "2x24gib")


def test_gpu_count_needs_multi_gpu() -> None:
    loaded = manifest("svc", ("container",), runtime={"resources": {"gpus": 2}})
    with pytest.raises(RequirementUnmet, match=r"hardware\.gpu\.multi_gpu is false"):
        plan(loaded, "2x24gib")
    with pytest.raises(RequirementUnmet, match="needs 2 GPU"):
        plan(loaded, "1x8gib")


def test_install_variants_only() -> None:
    loaded = load_manifest_file(MANIFESTS / "legacy" / "llama-cpp.yaml")
    with pytest.raises(
        NoCompatibleMode, match=r"declares only install variants \(binary, source\)"
    ):
        plan(loaded, "4x80gib", default_policy())


# --- GPUs ------------------------------------------------------------------------------------


def gpu_svc() -> LoadedManifest:
    return load_manifest_file(MANIFESTS / "good" / "gpu-svc.yaml")


def test_gpu_assigned_on_a_gpu_machine() -> None:
    hw = profile("2x24gib")
    p = plan(gpu_svc(), hw, mode="native")
    assert len(p.gpus) == 1
    gpu = p.gpus[0]
    assert gpu.uuid in {g.uuid for g in hw.gpus}
    assert gpu.vram == 16 * GIB
    d = decision(p, "gpus")
    assert f"GPU {gpu.index} (NVIDIA GeForce RTX 4090" in d.choice
    assert "best fit for 16.0GiB" in d.reason
    assert len(d.rejected) == 1
    env = env_of(p)
    assert env["CUDA_VISIBLE_DEVICES"] == gpu.uuid
    assert env["HIP_VISIBLE_DEVICES"] == ""
    assert p.resources.gpus == 1
    assert p.resources.vram == 16 * GIB


def test_no_gpu_on_a_cpu_machine_is_explained_and_hidden() -> None:
    p = plan(gpu_svc(), "cpu-only", mode="native")
    assert p.gpus == ()
    d = decision(p, "gpus")
    assert d.choice == "none"
    assert "this machine has none, according to the hardware profile" in d.reason
    assert env_of(p)["CUDA_VISIBLE_DEVICES"] == ""
    assert p.resources.gpus == 0 and p.resources.vram == 0


def test_optional_gpu_too_small() -> None:
    p = plan(gpu_svc(), "1x8gib", mode="native")
    assert p.gpus == ()
    assert "no GPU has 16.0GiB free" in decision(p, "gpus").reason
    assert env_of(p)["CUDA_VISIBLE_DEVICES"] == ""


def test_module_without_gpu_gets_empty_gpu_variables() -> None:
    p = plan(manifest("svc", ("native",)), "4x80gib")
    assert p.gpus == ()
    assert "asks for no GPU" in decision(p, "gpus").reason
    env = env_of(p)
    for var in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
        assert env[var] == ""


def test_best_fit_leaves_the_larger_gpu_free() -> None:
    hw = profile("2x24gib")
    big, small = hw.gpus
    gpus = (
        big.model_copy(update={"memory_free": 23 * GIB}),
        small.model_copy(update={"memory_free": 17 * GIB}),
    )
    p = plan(gpu_svc(), hw.model_copy(update={"gpus": gpus}), mode="native")
    assert [g.index for g in p.gpus] == [small.index]
    (rejected,) = decision(p, "gpus").rejected
    assert rejected.reason == "23.0GiB free, a larger fit"


def test_multi_gpu_vram_is_spread_over_as_few_gpus_as_hold_it() -> None:
    loaded = manifest(
        "svc", ("native",), hardware={"gpu": {"vram_min": "40GiB", "multi_gpu": True}}
    )
    hw = profile("2x24gib")
    p = plan(loaded, hw)
    assert sorted(g.uuid for g in p.gpus) == sorted(g.uuid for g in hw.gpus)
    assert all(g.vram == 20 * GIB for g in p.gpus)
    assert set(env_of(p)["CUDA_VISIBLE_DEVICES"].split(",")) == {g.uuid for g in hw.gpus}
    # One 80 GiB GPU holds it alone.
    assert len(plan(loaded, "4x80gib").gpus) == 1


def test_explicit_gpu_count() -> None:
    loaded = manifest(
        "svc",
        ("native",),
        hardware={"gpu": {"multi_gpu": True}},
        runtime={"resources": {"gpus": 3, "vram": "30GiB"}},
    )
    p = plan(loaded, "4x80gib")
    assert len(p.gpus) == 3
    assert len({g.uuid for g in p.gpus}) == 3
    assert all(g.vram == 10 * GIB for g in p.gpus)


def test_gpus_in_use_are_assigned_and_left_to_admission() -> None:
    # Large enough but busy now: admission refuses it, naming who holds the memory.
    hw = profile("2x24gib")
    busy = (
        hw.gpus[0].model_copy(update={"memory_free": 1 * GIB}),
        hw.gpus[1].model_copy(update={"memory_free": 2 * GIB}),
    )
    loaded = manifest("svc", ("native",), hardware={"gpu": {"vram_min": "16GiB"}})
    p = plan(loaded, hw.model_copy(update={"gpus": busy}))
    assert [g.index for g in p.gpus] == [1]  # the one with the most free
    gpus = next(d for d in p.decisions if d.topic == "gpus")
    assert "in use now: admission decides" in gpus.reason


def test_gpus_too_small_are_a_requirement_unmet() -> None:
    loaded = manifest(
        "svc",
        ("native",),
        hardware={"gpu": {"vram_min": "16GiB"}},
        runtime={"resources": {"vram": "30GiB"}},
    )
    with pytest.raises(RequirementUnmet, match=r"this machine's GPUs are too small"):
        plan(loaded, "2x24gib")


def test_gpu_choice_counts_what_the_ledger_holds() -> None:
    # GPU 0 is the best fit by free memory, but another instance holds most of it already
    # (admitted, still loading): the choice is GPU 1.
    hw = profile("2x24gib")
    loaded = manifest("svc", ("native",), hardware={"gpu": {"vram_min": "16GiB"}})
    held = {hw.gpus[0].uuid: 20 * GIB}
    pol = policy(trusted_native=["svc"])
    p = make_plan(
        loaded, hw, pol, PlanRequest(gpu_held=held), port_of, which=which, environ=ENVIRON
    )
    assert [g.index for g in p.gpus] == [1]
    gpus = next(d for d in p.decisions if d.topic == "gpus")
    assert "after what other instances hold" in gpus.reason


def test_amd_gpu_variables() -> None:
    hw = profile("cpu-only")
    amd = GpuInfo(
        vendor="amd",
        index=1,
        uuid="amd-1",
        name="Radeon",
        memory_total=32 * GIB,
        memory_free=30 * GIB,
    )
    p = plan(gpu_svc(), hw.model_copy(update={"gpus": (amd,)}), mode="native")
    env = env_of(p)
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["HIP_VISIBLE_DEVICES"] == "1"
    assert env["ROCR_VISIBLE_DEVICES"] == "1"


# --- ports and the host address -------------------------------------------------------------


def test_ports_bind_loopback_by_default() -> None:
    p = plan(manifest("svc", ("native",)))
    (port,) = p.ports
    assert port.host_ip == "127.0.0.1"
    assert port.host_port == port_of("127.0.0.1", "http")
    assert port.container_port == 8080
    assert decision(p, "host address").choice == "127.0.0.1"
    assert "network.host" in decision(p, "host address").reason
    assert decision(p, "port http").choice == f"127.0.0.1:{port.host_port}"
    assert p.native is not None
    assert p.native.argv[1:] == ("--host", "127.0.0.1", "--port", str(port.host_port))


def test_policy_expose_binds_all_addresses_and_says_why() -> None:
    pol = policy(trusted_native=["svc"], network={"expose": {"svc": "0.0.0.0"}})
    p = plan(manifest("svc", ("native",)), pol=pol)
    assert all(b.host_ip == "0.0.0.0" for b in p.ports)
    d = decision(p, "host address")
    assert d.choice == "0.0.0.0"
    assert d.reason == "policy network.expose allows svc"
    assert p.native is not None and "0.0.0.0" in p.native.argv


def test_expose_of_another_module_does_not_apply() -> None:
    pol = policy(trusted_native=["svc"], network={"host": "10.1.2.3", "expose": {"x": "0.0.0.0"}})
    p = plan(manifest("svc", ("native",)), pol=pol)
    assert [b.host_ip for b in p.ports] == ["10.1.2.3"]


def test_container_plan_uses_container_ports_inside() -> None:
    loaded = manifest(
        "svc",
        ("container",),
        runtime={
            "container": {
                "image": "localhost/svc:1",
                "command": ["${host}", "${ports.http}"],
                "env": {"API_TOKEN": "t", "LISTEN": "${host}:${ports.http}"},
                "volumes": [{"source": "/srv/${ports.http}", "target": "/data"}],
            },
            "health": {"http": {"port": "http", "path": "/ready"}},
        },
    )
    p = plan(loaded, "cpu-only")
    assert p.container is not None
    assert p.container.engine == "podman"
    assert p.container.argv == ("0.0.0.0", "8080")
    env = {v.name: v for v in p.container.env}
    assert env["LISTEN"].value == "0.0.0.0:8080"
    assert env["API_TOKEN"].secret is True
    assert p.container.volumes[0].source == "/srv/8080"
    (port,) = p.ports
    assert decision(p, "port http").choice == f"127.0.0.1:{port.host_port} (container port 8080)"
    assert p.health is not None
    assert (p.health.kind, p.health.port, p.health.path) == ("http", "http", "/ready")
    assert p.health.host_port == port.host_port
    assert "podman 4.9.3" in decision(p, "container engine").reason


# --- parameters ------------------------------------------------------------------------------


def param_manifest() -> LoadedManifest:
    return manifest(
        "svc",
        ("native",),
        runtime={
            "native": {
                "command": [
                    "svc-server",
                    "${model}",
                    "${threads}",
                    "${verbose}",
                    "${token}",
                    "${extra}",
                    "${size}",
                    "${dir}",
                ]
            }
        },
        parameters={
            "model": {"required": True, "description": "the model file"},
            "threads": {"type": "int", "default": 4},
            "verbose": {"type": "bool", "default": False},
            "token": {"secret": True, "default": "s3cret"},
            "extra": {},
            "size": {"choices": ["small", "big"], "default": "small"},
            "dir": {"type": "path", "default": "/tmp/x/../y"},
        },
    )


def test_parameters_resolved_from_set_and_defaults() -> None:
    p = plan(param_manifest(), sets={"model": "m.gguf", "threads": "08", "verbose": "yes"})
    got = {x.name: (x.value, x.source) for x in p.parameters}
    assert got == {
        "model": ("m.gguf", "set"),
        "threads": ("8", "set"),
        "verbose": ("true", "set"),
        "token": ("s3cret", "default"),
        "extra": (None, "unset"),
        "size": ("small", "default"),
        "dir": ("/tmp/x/../y", "default"),
    }
    assert p.native is not None
    assert p.native.argv[1:] == ("m.gguf", "8", "true", "s3cret", "", "small", "/tmp/x/../y")
    shown = decision(p, "parameters").choice
    assert "token=***" in shown
    assert "s3cret" not in shown
    assert next(x for x in p.parameters if x.name == "token").secret


def test_unknown_parameter_is_a_usage_error_naming_it() -> None:
    with pytest.raises(UsageError) as exc:
        plan(param_manifest(), sets={"model": "m", "modle": "x"})
    assert "unknown parameter(s) for svc: modle" in exc.value.message
    assert "model" in (exc.value.hint or "")
    assert exc.value.exit_code == 2


def test_missing_required_parameter() -> None:
    with pytest.raises(UsageError) as exc:
        plan(param_manifest())
    assert "missing required parameter 'model'" in exc.value.message
    assert "the model file" in exc.value.message
    assert exc.value.hint == "pass --set model=VALUE"
    assert exc.value.exit_code == 2


@pytest.mark.parametrize(
    ("sets", "phrase"),
    [
        ({"threads": "four"}, "'threads' must be int"),
        ({"verbose": "maybe"}, "'verbose' must be bool"),
        ({"size": "huge"}, "'size' must be one of small, big"),
        ({"extra": "a\x00b"}, "NUL"),
    ],
)
def test_bad_parameter_values(sets: dict[str, str], phrase: str) -> None:
    with pytest.raises(UsageError, match=phrase):
        plan(param_manifest(), sets={"model": "m", **sets})


# --- native: executable, environment, workdir ------------------------------------------------


def test_native_environment_is_only_what_is_declared() -> None:
    loaded = manifest(
        "svc",
        ("native",),
        runtime={
            "native": {
                "command": ["svc-server"],
                "env": {"HF_TOKEN": "abc", "PORT": "${ports.http}"},
            }
        },
    )
    p = plan(loaded)
    env = env_of(p)
    assert env["PATH"] == ENVIRON["PATH"]
    assert env["HOME"] == "/home/user"
    assert "SECRET_THING" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # the caller's 0 is not passed on
    assert env["PORT"] == str(p.ports[0].host_port)
    assert p.native is not None
    assert next(v for v in p.native.env if v.name == "HF_TOKEN").secret


def test_executable_is_resolved_on_the_workloads_path() -> None:
    seen: list[tuple[str, str | None]] = []

    def spy(cmd: str, path: str | None) -> str | None:
        seen.append((cmd, path))
        return "/opt/svc/bin/svc-server"

    p = plan(manifest("svc", ("native",)), which=spy)
    assert seen == [("svc-server", ENVIRON["PATH"])]
    assert p.native is not None and p.native.argv[0] == "/opt/svc/bin/svc-server"
    assert decision(p, "executable").reason == "found 'svc-server' on PATH"


def test_executable_not_found() -> None:
    with pytest.raises(PlanningError, match="'svc-server' not found on PATH"):
        plan(manifest("svc", ("native",)), which=lambda cmd, path: None)


def test_executable_given_as_a_path(tmp_path: Path) -> None:
    def run(argv0: str) -> ExecutionPlan:
        return plan(manifest("svc", ("native",), runtime={"native": {"command": [argv0]}}))

    p = run(sys.executable)
    assert p.native is not None and p.native.argv[0] == str(Path(sys.executable).absolute())
    with pytest.raises(PlanningError, match="does not exist"):
        run(str(tmp_path / "missing"))
    not_exec = tmp_path / "data.txt"
    not_exec.write_text("x")
    with pytest.raises(PlanningError, match="not an executable file"):
        run(str(not_exec))
    with pytest.raises(PlanningError, match="not an executable file"):
        run(str(tmp_path))


def test_workdir_must_exist(tmp_path: Path) -> None:
    ok = manifest(
        "svc", ("native",), runtime={"native": {"command": ["x"], "workdir": str(tmp_path)}}
    )
    p = plan(ok)
    assert p.native is not None and p.native.workdir == str(tmp_path)
    bad = manifest(
        "svc", ("native",), runtime={"native": {"command": ["x"], "workdir": str(tmp_path / "no")}}
    )
    with pytest.raises(PlanningError, match=r"workdir .* does not exist"):
        plan(bad)


# --- the plan as a whole ---------------------------------------------------------------------


def test_plan_is_deterministic_and_round_trips_json() -> None:
    first = plan(gpu_svc(), "2x24gib", mode="native")
    second = plan(gpu_svc(), "2x24gib", mode="native")
    assert first == second
    assert first.plan_id == second.plan_id
    assert ExecutionPlan.model_validate_json(first.model_dump_json()) == first


def test_every_decision_has_a_reason() -> None:
    p = plan(gpu_svc(), "2x24gib", mode="native")
    topics = [d.topic for d in p.decisions]
    for topic in (
        "requirements",
        "mode",
        "parameters",
        "host address",
        "port api",
        "port metrics",
        "gpus",
        "executable",
    ):
        assert topic in topics
    assert all(d.reason for d in p.decisions)
    assert all(r.reason for d in p.decisions for r in d.rejected)


def test_plan_carries_the_manifest_settings() -> None:
    loaded = gpu_svc()
    p = plan(loaded, "2x24gib", mode="native")
    assert p.module.name == "gpu-svc"
    assert p.module.version == "2.1.0"
    assert p.module.digest == loaded.digest
    assert p.module.source == str(MANIFESTS / "good" / "gpu-svc.yaml")
    assert p.resources.memory == 8 * GIB and p.resources.cpus == 2
    assert (p.restart.policy, p.restart.max_restarts, p.restart.backoff) == ("on-failure", 2, 2.0)
    assert (p.stop.signal, p.stop.timeout) == ("SIGINT", 30.0)
    assert p.health is not None
    assert (p.health.start_timeout, p.health.interval) == (120.0, 0.5)


def test_preferred_install_variant_next_to_an_executable_mode() -> None:
    """A legacy preference (``preferred: binary``) does not break selection among the rest."""
    loaded = manifest("svc", ("binary", "container"), "binary")
    assert loaded.manifest.runtime.executable_modes == ("container",)
    p = plan(loaded, "cpu-only")
    assert p.mode == "container"
    assert decision(p, "mode").reason == "the policy's default mode (test-policy.yaml)"


def _restart_plan(asked: str | None, in_manifest: str, **pol: Any) -> ExecutionPlan:
    loaded = manifest(runtime={"restart": {"policy": in_manifest}})
    return make_plan(
        loaded,
        profile("cpu-only"),
        policy(trusted_native=[loaded.manifest.name], **pol),
        PlanRequest(restart=asked),
        port_of,
        which=which,
        environ=ENVIRON,
        euid=1000,
    )


def test_the_users_restart_policy_overrides_the_manifests() -> None:
    p = _restart_plan("always", "never")
    assert p.restart.policy == "always"
    d = decision(p, "restart")
    assert d.choice == "always"
    assert "--restart" in d.reason
    assert [r.option for r in d.rejected] == ["never"]


def test_the_manifests_restart_policy_is_the_default() -> None:
    p = _restart_plan(None, "unless-stopped")
    assert p.restart.policy == "unless-stopped"
    assert "the manifest" in decision(p, "restart").reason


def test_restarts_deny_wins_over_the_users_policy() -> None:
    p = _restart_plan("always", "never", restarts="deny")
    assert p.restart.policy == "never"
    assert "restarts: deny" in decision(p, "restart").reason


def test_an_unknown_restart_policy_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown restart policy 'sometimes'"):
        _restart_plan("sometimes", "never")
