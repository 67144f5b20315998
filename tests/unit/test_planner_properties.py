"""Property-based tests of the planner: whatever the manifest, policy, hardware and request,

* a plan never uses a mode the manifest does not declare or the policy forbids;
* every port binds the policy's host address, unless network.expose names this module;
* planning returns a plan or raises a PlanningError or UsageError (both LasErrors), never
  any other exception.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from localaistack.control.hardware import HardwareProfile, load_profile
from localaistack.control.manifest import LoadedManifest, parse_manifest
from localaistack.control.planner import PlanRequest, make_plan
from localaistack.control.policy import Policy, parse_policy
from localaistack.errors import LasError, PlanningError, UsageError
from localaistack.plan import ExecutionPlan

PROFILES = Path(__file__).resolve().parent.parent / "data" / "profiles"
HARDWARE = {p.stem: load_profile(p) for p in sorted(PROFILES.glob("*.json"))}
NAME = "prop-svc"
ENVIRON = {"PATH": "/usr/bin:/bin", "HOME": "/home/prop"}

port_names = st.from_regex(r"[a-z][a-z0-9_-]{0,6}", fullmatch=True)
param_names = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda n: n not in ("host", "ports")
)
addresses = st.sampled_from(["127.0.0.1", "0.0.0.0", "10.0.0.7", "::1", "::"])


@st.composite
def manifests(draw: st.DrawFn) -> LoadedManifest:
    # Choices are weighted towards what plans, so that the invariants of plans are tested
    # often; the rarer choices exercise the refusals.
    pool = draw(st.permutations(["native", "container", "binary"]))
    modes = pool[: draw(st.integers(1, 3))]
    if modes == ["binary"] and draw(st.integers(0, 3)):
        modes = ["binary", draw(st.sampled_from(["native", "container"]))]
    preferred = draw(st.none() | st.sampled_from(modes))
    ports = draw(st.lists(port_names, max_size=3, unique=True))
    params: dict[str, dict[str, Any]] = {}
    for name in draw(st.lists(param_names, max_size=3, unique=True)):
        spec: dict[str, Any] = {"type": draw(st.sampled_from(["string", "int", "bool"]))}
        if draw(st.integers(0, 4)) == 0:
            spec["required"] = True
        if draw(st.booleans()):
            spec["default"] = draw(st.sampled_from(["1", 1, True, "1", 1, True, "x y"]))
        params[name] = spec
    refs = ["${host}"] + [f"${{ports.{p}}}" for p in ports] + [f"${{{p}}}" for p in params]
    rt: dict[str, Any] = {
        "modes": modes,
        "ports": [{"name": p, "port": draw(st.integers(1, 65535))} for p in ports],
    }
    if preferred is not None:
        rt["preferred"] = preferred
    if "native" in modes:
        rt["native"] = {"command": ["prop-server", *refs], "env": {"LISTEN": " ".join(refs)}}
    if "container" in modes:
        rt["container"] = {"image": "localhost/prop:1", "command": refs}
    if ports and draw(st.booleans()):
        rt["health"] = {"tcp": {"port": draw(st.sampled_from(ports))}}
    rt["resources"] = {
        "gpus": draw(st.sampled_from([0, 0, 0, 1, 2])),
        "vram": draw(st.sampled_from([0, 0, "4GiB"])),
    }
    optional = draw(st.sampled_from([True, True, False]))
    hardware = {"gpu": {"optional": optional, "multi_gpu": draw(st.booleans())}}
    data = {"name": NAME, "runtime": rt, "parameters": params, "hardware": hardware}
    return parse_manifest(yaml.safe_dump(data), Path(f"/m/{NAME}.yaml"))


@st.composite
def policies(draw: st.DrawFn, digest: str) -> Policy:
    allowed = draw(st.permutations(["native", "container"]))[: draw(st.sampled_from([1, 2, 2]))]
    trust = draw(
        st.sampled_from(
            [
                [],
                [NAME],
                [NAME],
                [NAME],
                ["other"],
                [{"module": NAME, "sha256": digest}],
                [{"module": NAME, "sha256": "f" * 64}],
            ]
        )
    )
    expose = draw(st.dictionaries(st.sampled_from([NAME, "other"]), addresses, max_size=2))
    data: dict[str, Any] = {
        "allowed_modes": allowed,
        "default_mode": draw(st.sampled_from(allowed)),
        "container_engine": draw(st.sampled_from(["auto", "auto", "podman", "docker"])),
        "trusted_native": trust,
        "network": {"host": draw(addresses), "expose": expose},
    }
    if draw(st.integers(0, 3)) == 0:
        data["policies"] = [
            {
                "name": "gpu",
                "conditions": {"gpu_count_min": 1},
                "allow": {"runtimes": draw(st.sampled_from([["native"], ["container"]]))},
            },
            {"name": "rest", "deny": draw(st.sampled_from([[], [NAME]]))},
        ]
    return parse_policy(yaml.safe_dump(data), "prop-policy.yaml")


def _trusted(policy: Policy, digest: str) -> bool:
    # A pinned entry can only be satisfied by the real executable's hash; the executables
    # here are fake paths, so only an unpinned entry can lead to a native plan.
    del digest
    return any(t.module == NAME and t.sha256 is None for t in policy.trusted_native)


@st.composite
def cases(draw: st.DrawFn) -> tuple[LoadedManifest, Policy, HardwareProfile, PlanRequest, bool]:
    loaded = draw(manifests())
    policy = draw(policies(loaded.digest))
    hw = HARDWARE[draw(st.sampled_from(sorted(HARDWARE)))]
    names = sorted(loaded.manifest.parameters)
    required = [n for n in names if loaded.manifest.parameters[n].required]
    set_names = set(draw(st.lists(st.sampled_from([*names, "bogus"]), max_size=3)))
    if draw(st.integers(0, 4)):
        set_names = (set_names - {"bogus"}) | set(required)
    values = st.sampled_from(["1", "true", "1", "true", "abc", "", "a\x00b"])
    sets = {n: draw(values) for n in sorted(set_names)}
    request = PlanRequest(
        mode=draw(st.sampled_from([None, None, "native", "container"])), sets=sets
    )
    return loaded, policy, hw, request, draw(st.sampled_from([True, True, True, False]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_planner_invariants(
    case: tuple[LoadedManifest, Policy, HardwareProfile, PlanRequest, bool],
) -> None:
    loaded, policy, hw, request, on_path = case
    m = loaded.manifest
    try:
        plan = make_plan(
            loaded,
            hw,
            policy,
            request,
            lambda host, name: 40000 + zlib.crc32(name.encode()) % 20000,
            environ=ENVIRON,
            which=lambda cmd, path: f"/usr/bin/{cmd}" if on_path else None,
        )
    except LasError as exc:
        assert isinstance(exc, PlanningError | UsageError), repr(exc)
        assert exc.message
        event(f"refused: {type(exc).__name__}")
        return
    event(f"planned: {plan.mode}")

    # The mode: declared, allowed, trusted when native, an engine when container.
    assert plan.mode in m.runtime.executable_modes
    assert plan.mode in policy.allowed_modes
    if request.mode is not None:
        assert plan.mode == request.mode
    tier = policy.tier_for(hw) if policy.policies else None
    if tier is not None and tier.allow.runtimes is not None:
        assert plan.mode in tier.allow.runtimes
    if plan.mode == "native":
        assert _trusted(policy, loaded.digest)
        assert plan.native is not None and plan.container is None
        env = {v.name: v.value for v in plan.native.env}
        nvidia = ",".join(g.uuid for g in plan.gpus if g.vendor == "nvidia")
        assert env["CUDA_VISIBLE_DEVICES"] == nvidia
    else:
        assert plan.container is not None and plan.native is None
        assert plan.container.engine in hw.usable_engines
        assert policy.container_engine in ("auto", plan.container.engine)

    # Ports: the policy's host unless network.expose names this module.
    want_host = policy.network.expose.get(m.name, policy.network.host)
    assert [p.name for p in plan.ports] == [p.name for p in m.runtime.ports]
    assert all(p.host_ip == want_host for p in plan.ports)

    # GPUs are distinct GPUs of this machine.
    uuids = [g.uuid for g in plan.gpus]
    assert len(set(uuids)) == len(uuids)
    assert set(uuids) <= {g.uuid for g in hw.gpus}

    assert all(d.reason for d in plan.decisions)
    assert ExecutionPlan.model_validate_json(plan.model_dump_json()) == plan
