"""The container part of a plan: least privilege unless the manifest asks and policy allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import PROFILES

from localaistack.control.hardware import load_profile
from localaistack.control.manifest import LoadedManifest, parse_manifest
from localaistack.control.planner import PlanRequest, make_plan
from localaistack.control.policy import parse_policy
from localaistack.errors import NoCompatibleMode, PolicyViolation
from localaistack.plan import ExecutionPlan


def manifest(**container: Any) -> LoadedManifest:
    data = {
        "name": "box",
        "runtime": {
            "modes": ["container"],
            "container": {"image": "localhost/las-busybox:latest", **container},
            "ports": [{"name": "http", "port": 8080}],
        },
    }
    return parse_manifest(yaml.safe_dump(data), Path("/m/box.yaml"))


def plan(loaded: LoadedManifest, profile: str = "cpu-only", **policy: Any) -> ExecutionPlan:
    return make_plan(
        loaded,
        load_profile(PROFILES / f"{profile}.json"),
        parse_policy(yaml.safe_dump(policy), "p.yaml"),
        PlanRequest(mode="container"),
        lambda host, name: 41000,
    )


def test_secure_defaults() -> None:
    p = plan(manifest())
    assert p.container is not None
    c = p.container
    assert c.user == "65534:65534" and c.cap_add == () and c.read_only_root
    assert c.pids_limit > 0
    assert p.ports[0].host_ip == "127.0.0.1" and p.ports[0].container_port == 8080
    user = next(d for d in p.decisions if d.topic == "container user")
    assert "non-root user by default" in user.reason


@pytest.mark.parametrize(
    ("container", "allowance", "phrase"),
    [
        ({"user": "0:0"}, {"allow_root": ["box"]}, "allow_root"),
        ({"user": "root"}, {"allow_root": ["box"]}, "allow_root"),
        ({"writable_root": True}, {"allow_writable_root": ["box"]}, "allow_writable_root"),
        (
            {"cap_add": ["NET_BIND_SERVICE"]},
            {"allow_capabilities": {"box": ["CAP_NET_BIND_SERVICE"]}},
            "allow_capabilities",
        ),
    ],
)
def test_extra_privileges_need_the_policy(
    container: dict[str, Any], allowance: dict[str, Any], phrase: str
) -> None:
    loaded = manifest(**container)
    with pytest.raises(PolicyViolation) as exc:
        plan(loaded)
    assert phrase in exc.value.message
    p = plan(loaded, containers=allowance)
    assert p.container is not None
    if "user" in container:
        assert p.container.user == container["user"]
    if "writable_root" in container:
        assert p.container.read_only_root is False
    if "cap_add" in container:
        assert p.container.cap_add == ("NET_BIND_SERVICE",)


def test_refused_privileges_make_container_mode_unavailable_not_silently_dropped() -> None:
    data = {
        "name": "box",
        "runtime": {
            "modes": ["container", "native"],
            "container": {"image": "x", "cap_add": ["SYS_ADMIN"]},
            "native": {"command": ["/bin/true"]},
        },
    }
    loaded = parse_manifest(yaml.safe_dump(data), Path("/m/box.yaml"))
    hw = load_profile(PROFILES / "cpu-only.json")
    p = make_plan(
        loaded,
        hw,
        parse_policy("trusted_native: [box]", "p.yaml"),
        PlanRequest(),
        lambda h, n: 41000,
    )
    assert p.mode == "native"
    mode = next(d for d in p.decisions if d.topic == "mode")
    assert any("SYS_ADMIN" in r.reason for r in mode.rejected)
    with pytest.raises(NoCompatibleMode):
        make_plan(
            loaded,
            hw,
            parse_policy("trusted_native: []", "p.yaml"),
            PlanRequest(),
            lambda h, n: 41000,
        )


def test_bad_capability_name_is_a_manifest_error() -> None:
    from localaistack.errors import ManifestError

    with pytest.raises(ManifestError) as exc:
        manifest(cap_add=["ALL"])
    assert "cap_add" in "\n".join(exc.value.problems)
