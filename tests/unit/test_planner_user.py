"""The native workload's user (las as root) and its bwrap sandbox, as the planner decides them.

The look-ups are injected (``euid``, ``getpwnam``, ``which``, ``dev_glob``): nothing here
depends on who runs the tests or what this machine has.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.unit.test_planner import ENVIRON, decision, manifest, plan, policy

from localaistack.control.policy import parse_policy
from localaistack.errors import PlanningError, PolicyError, PolicyViolation
from localaistack.plan import ExecutionPlan

USER = SimpleNamespace(pw_uid=64999, pw_gid=64998, pw_dir="/nonexistent")


def getpwnam(name: str) -> Any:
    if name != "las-workload":
        raise KeyError(name)
    return USER


def as_root(loaded: Any = None, pol: Any = None, **kwargs: Any) -> ExecutionPlan:
    kwargs.setdefault("getpwnam", getpwnam)
    return plan(loaded or manifest(modes=("native",)), pol=pol, euid=0, **kwargs)


def env_of(p: ExecutionPlan) -> dict[str, str]:
    assert p.native is not None
    return {v.name: v.value for v in p.native.env}


def test_not_root_runs_as_the_invoking_user() -> None:
    p = plan(manifest(modes=("native",)), euid=1000, getpwnam=getpwnam)
    assert p.native is not None and p.native.uid is None and p.native.user is None
    d = decision(p, "native user")
    assert d.choice == "uid 1000" and "does not run as root" in d.reason
    assert env_of(p)["HOME"] == ENVIRON["HOME"]


def test_root_runs_as_the_policy_user_with_its_identity() -> None:
    p = as_root()
    assert p.native is not None
    assert (p.native.user, p.native.uid, p.native.gid) == ("las-workload", 64999, 64998)
    d = decision(p, "native user")
    assert d.choice == "las-workload (uid 64999, gid 64998)"
    assert [r.option for r in d.rejected] == ["root"]
    env = env_of(p)
    assert env["HOME"] == "/nonexistent"  # not root's


def test_root_refuses_when_the_user_does_not_exist() -> None:
    pol = policy(trusted_native=["svc"], native_user="las-nobody-here")
    with pytest.raises(PolicyViolation) as info:
        as_root(pol=pol)
    err = info.value
    assert err.exit_code == 3  # as every policy refusal
    assert "'las-nobody-here'" in err.message and "does not exist" in err.message
    assert err.hint is not None and "scripts/setup-user" in err.hint


def test_policy_may_allow_root_for_a_module() -> None:
    pol = policy(trusted_native=["svc"], native_allow_root=["svc"], native_user="las-nobody")
    p = as_root(pol=pol)  # the user need not exist: it is not used
    assert p.native is not None and p.native.uid is None
    d = decision(p, "native user")
    assert d.choice == "root" and "native_allow_root lists svc" in d.reason


def test_refuses_an_executable_the_user_cannot_reach(open_dir: Path) -> None:
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    exe = private / "svc-server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    with pytest.raises(PlanningError) as info:
        as_root(which=lambda cmd, _p: str(exe))
    assert f"cannot execute {exe}" in info.value.message
    assert f"{private} is 0700" in info.value.message
    assert info.value.hint is not None and "native_allow_root" in info.value.hint


def test_refuses_a_path_argument_the_user_cannot_read(open_dir: Path) -> None:
    model = open_dir / "model.gguf"
    model.write_bytes(b"GGUF")
    model.chmod(0o600)
    loaded = manifest(
        modes=("native",), runtime={"native": {"command": ["svc-server", "-m", str(model)]}}
    )
    with pytest.raises(PlanningError, match=r"cannot read .*model\.gguf: .* is 0600"):
        as_root(loaded)


def test_plan_for_another_machine_names_the_user_unresolved() -> None:
    p = as_root(resolve_executables=False)
    assert p.native is not None and p.native.uid is None
    d = decision(p, "native user")
    assert d.choice == "las-workload" and "another machine" in d.reason


def test_policy_rejects_bad_native_keys() -> None:
    for text, field in (
        ("native_user: root", "native_user"),
        ("native_user: 'a b'", "native_user"),
        ("native_sandbox: firejail", "native_sandbox"),
    ):
        with pytest.raises(PolicyError, match=field):
            parse_policy(text, "p.yaml")


# --------------------------------------------------------------------------- sandbox


def sandboxed(**kwargs: Any) -> ExecutionPlan:
    kwargs.setdefault("pol", policy(trusted_native=["svc"], native_sandbox="bwrap"))
    kwargs.setdefault("dev_glob", lambda pattern: [])
    loaded = kwargs.pop("loaded", manifest(modes=("native",)))
    return plan(loaded, euid=1000, **kwargs)


def test_no_sandbox_by_default() -> None:
    p = plan(manifest(modes=("native",)))
    assert p.native is not None and p.native.sandbox == ()
    assert decision(p, "sandbox").choice == "none"


def test_bwrap_with_ports_shares_the_network() -> None:
    p = sandboxed()
    assert p.native is not None
    sb = p.native.sandbox
    assert sb[0] == "/usr/bin/bwrap" and sb[-1] == "--"
    joined = " ".join(sb)
    for part in ("--ro-bind / /", "--dev /dev", "--proc /proc", "--tmpfs /tmp"):
        assert part in joined
    assert "--die-with-parent" in sb and "--unshare-net" not in sb and "--dev-bind" not in sb
    assert p.native.argv[0] == "/usr/bin/svc-server"  # the workload's argv is unchanged
    d = decision(p, "sandbox")
    assert d.choice == "bwrap" and "the host's network" in d.reason


def test_bwrap_without_ports_has_no_network() -> None:
    loaded = manifest(
        modes=("native",), runtime={"ports": [], "native": {"command": ["svc-server"]}}
    )
    p = sandboxed(loaded=loaded)
    assert p.native is not None and "--unshare-net" in p.native.sandbox
    assert "no network (only lo)" in decision(p, "sandbox").reason


def test_bwrap_binds_gpu_nodes_only_with_a_gpu() -> None:
    nodes = {"/dev/nvidia*": ["/dev/nvidiactl", "/dev/nvidia0"], "/dev/dri": ["/dev/dri"]}
    loaded = manifest(modes=("native",), runtime={"resources": {"gpus": 1}})
    p = sandboxed(loaded=loaded, hw="1x8gib", dev_glob=lambda pat: nodes.get(pat, []))
    assert p.native is not None and p.gpus
    joined = " ".join(p.native.sandbox)
    assert "--dev-bind /dev/nvidia0 /dev/nvidia0" in joined
    assert "--dev-bind /dev/nvidiactl /dev/nvidiactl" in joined
    assert "/dev/dri" not in joined  # an AMD node: no AMD GPU is assigned
    cpu = sandboxed(dev_glob=lambda pat: nodes.get(pat, []))
    assert cpu.native is not None and "--dev-bind" not in cpu.native.sandbox


def test_bwrap_missing_is_a_refusal_not_a_fallback() -> None:
    with pytest.raises(PlanningError) as info:
        sandboxed(which=lambda cmd, _p: None if cmd == "bwrap" else f"/usr/bin/{cmd}")
    assert info.value.exit_code == 3
    assert "bwrap is not installed" in info.value.message
    assert info.value.hint is not None and "apt-get install bubblewrap" in info.value.hint


def test_bwrap_refuses_paths_its_private_tmp_would_hide() -> None:
    loaded = manifest(
        modes=("native",),
        runtime={
            "native": {"command": ["svc-server", "-m", "/tmp/models/m.gguf", "${ports.http}"]}
        },
    )
    with pytest.raises(PlanningError, match=r"private /tmp hides /tmp/models/m\.gguf"):
        sandboxed(loaded=loaded)
