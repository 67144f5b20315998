"""Policy: the built-in default, las's own format, LocalAIStack's tiered format, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from localaistack.control.hardware import load_profile
from localaistack.control.policy import (
    DEFAULT_POLICY_YAML,
    Policy,
    default_policy,
    load_policy,
    parse_policy,
)
from localaistack.errors import PolicyError

PROFILES = Path(__file__).resolve().parent.parent / "data" / "profiles"
GIB, MIB = 1 << 30, 1 << 20
SHA = "ab" * 32


def test_default_policy_values() -> None:
    p = default_policy()
    assert p.allowed_modes == ["container", "native"]
    assert p.default_mode == "container"
    assert p.container_engine == "auto"
    assert [t.module for t in p.trusted_native] == ["echo-http", "llama.cpp", "vllm"]
    assert all(t.sha256 is None for t in p.trusted_native)
    assert p.network.host == "127.0.0.1"
    assert p.network.expose == {}
    assert p.overcommit == "deny"
    assert p.reserve.memory == 1 * GIB
    assert p.reserve.vram == 512 * MIB
    assert p.policies == []
    assert p.source == "built-in default"
    assert p.trust_for("echo-http") is not None
    assert p.trust_for("gpu-svc") is None
    assert p.host_for("echo-http") == ("127.0.0.1", "policy network.host (built-in default)")


def test_load_policy_without_a_file_is_the_default(tmp_path: Path) -> None:
    assert load_policy(None, tmp_path) == default_policy()


def test_load_policy_reads_las_home_policy(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("allowed_modes: [container]\n")
    p = load_policy(None, tmp_path)
    assert p.allowed_modes == ["container"]
    assert p.source == str(tmp_path / "policy.yaml")


def test_explicit_policy_file_wins_over_las_home(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("allowed_modes: [container]\n")
    other = tmp_path / "other.yaml"
    other.write_text("allowed_modes: [native]\ndefault_mode: native\n")
    assert load_policy(other, tmp_path).allowed_modes == ["native"]


def test_load_policy_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"policy file .*nope\.yaml: no such file"):
        load_policy(tmp_path / "nope.yaml", tmp_path)


def test_own_format() -> None:
    p = parse_policy(
        f"""
allowed_modes: [native, container]
default_mode: native
container_engine: docker
trusted_native: [llama.cpp, {{module: vllm, sha256: "{SHA.upper()}"}}]
network: {{host: 10.0.0.5, expose: {{open-webui: 0.0.0.0, api: "::"}}}}
overcommit: allow
reserve: {{memory: 2GiB, vram: 512MiB}}
""",
        "mine.yaml",
    )
    assert p.allowed_modes == ["native", "container"]
    assert p.default_mode == "native"
    assert p.container_engine == "docker"
    assert [(t.module, t.sha256) for t in p.trusted_native] == [("llama.cpp", None), ("vllm", SHA)]
    assert p.network.host == "10.0.0.5"
    assert p.host_for("open-webui") == ("0.0.0.0", "policy network.expose allows open-webui")
    assert p.host_for("api") == ("::", "policy network.expose allows api")
    assert p.host_for("other") == ("10.0.0.5", "policy network.host (mine.yaml)")
    assert p.overcommit == "allow"
    assert (p.reserve.memory, p.reserve.vram) == (2 * GIB, 512 * MIB)
    assert p.source == "mine.yaml"


def test_empty_policy_file_is_the_model_defaults() -> None:
    p = parse_policy("", "empty.yaml")
    assert p == Policy(source="empty.yaml")
    # A file replaces the built-in default: nothing is trusted for native execution.
    assert p.trusted_native == []


def test_default_policy_yaml_parses_to_default_policy() -> None:
    assert parse_policy(DEFAULT_POLICY_YAML, "built-in default") == default_policy()


TIERED = """
trusted_native: [gpu-svc]
network: {host: 127.0.0.1}
policies:
  - name: nvlink-cluster
    conditions: {nvlink: true}
    allow: {runtimes: [native]}
  - name: datacenter
    conditions: {gpu_vram_min: 40GiB, gpu_count_min: 2}
    allow: {runtimes: [native, container], max_model_size: 70B}
  - name: workstation
    conditions: {gpu_vram_min: 16GB, ram_min: 64GB}
    allow: {runtimes: [container, native]}
    deny: [huge-model]
  - name: small-gpu
    conditions: {gpu_vram_min: 4GiB, gpu_vram_max: 12GiB}
    allow: {runtimes: [container]}
  - name: cpu
    conditions: {gpu_vram_max: 0}
    allow: {runtimes: [container], features: [cpu-inference]}
"""


@pytest.mark.parametrize(
    ("profile", "tier"),
    [
        ("4x80gib", "datacenter"),
        ("2x24gib", "workstation"),
        ("1x8gib", "small-gpu"),
        ("cpu-only", "cpu"),
        ("no-engine", "cpu"),
    ],
)
def test_tiered_format_selects_first_matching_tier(profile: str, tier: str) -> None:
    p = parse_policy(TIERED, "tiers.yaml")
    hw = load_profile(PROFILES / f"{profile}.json")
    chosen = p.tier_for(hw)
    assert chosen is not None
    assert chosen.name == tier
    # Top-level own keys apply whichever tier is chosen.
    assert p.trust_for("gpu-svc") is not None
    assert p.allowed_modes == ["container", "native"]


def test_tier_matches_names_the_failing_condition() -> None:
    p = parse_policy(TIERED, "tiers.yaml")
    by_name = {t.name: t for t in p.policies}
    hw = load_profile(PROFILES / "2x24gib.json")
    assert by_name["nvlink-cluster"].matches(hw) == (False, "nvlink")
    assert by_name["datacenter"].matches(hw) == (False, "gpu_vram_min")
    assert by_name["workstation"].matches(hw) == (True, "")
    assert by_name["small-gpu"].matches(hw) == (False, "gpu_vram_max")
    assert by_name["workstation"].deny == ["huge-model"]
    assert by_name["cpu"].allow.features == ["cpu-inference"]
    assert by_name["datacenter"].allow.max_model_size == "70B"
    assert by_name["workstation"].conditions.ram_min == 64 * GIB


def test_no_tier_matches() -> None:
    p = parse_policy("policies: [{name: big, conditions: {gpu_count_min: 8}}]", "t.yaml")
    assert p.tier_for(load_profile(PROFILES / "4x80gib.json")) is None


def test_tier_without_conditions_always_matches() -> None:
    p = parse_policy("policies: [{name: any}]", "t.yaml")
    assert p.tier_for(load_profile(PROFILES / "no-engine.json")) is not None


@pytest.mark.parametrize(
    ("text", "field", "phrase"),
    [
        ("network: {host: 999.1.1.1}", "network.host", "'999.1.1.1' is not an IP address"),
        ("network: {host: localhost}", "network.host", "not an IP address"),
        ("network: {expose: {x: everywhere}}", "network.expose", "'everywhere' is not an IP"),
        ("allowed_modes: [container]\ndefault_mode: native", "default_mode", "allowed_modes"),
        ("allowed_modes: [warp]", "allowed_modes", "'native' or 'container'"),
        ("default_mode: binary", "default_mode", "'native' or 'container'"),
        ("container_engine: lxc", "container_engine", "'auto', 'podman' or 'docker'"),
        ("bogus: 1", "bogus", "Extra inputs are not permitted"),
        ("network: {host: 127.0.0.1, port: 1}", "network.port", "Extra inputs"),
        ("trusted_native: [{module: a, sha256: abc}]", "trusted_native.0.sha256", "64 hex"),
        (f"trusted_native: [{{module: a, sha256: {'g' * 64}}}]", "trusted_native.0.sha256", "64"),
        ("trusted_native: [{sha256: abc}]", "trusted_native.0.module", "Field required"),
        ("overcommit: maybe", "overcommit", "'deny' or 'allow'"),
        ("reserve: {memory: -1GiB}", "reserve.memory", "negative"),
        ("reserve: {vram: lots}", "reserve.vram", "invalid size 'lots'"),
        ("reserve: {memory: .inf}", "reserve.memory", "finite"),
        ("policies: [{conditions: {}}]", "policies.0.name", "Field required"),
        ("policies: [{name: a, wat: 1}]", "policies.0.wat", "Extra inputs"),
        ("policies: [{name: a, conditions: {vram: 1}}]", "policies.0.conditions.vram", "Extra"),
        ("policies: [{name: a, conditions: {ram_min: lots}}]", "conditions.ram_min", "lots"),
        ("- a\n- b", "", "a policy is a YAML mapping, found list"),
        ("allowed_modes: [", "", "YAML syntax error"),
    ],
)
def test_invalid_policy_names_the_field(text: str, field: str, phrase: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, "bad.yaml")
    msg = exc.value.message
    assert msg.startswith("bad.yaml")
    assert field in msg
    assert phrase in msg


def test_policy_error_has_exit_code_1() -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy("bogus: 1", "bad.yaml")
    assert exc.value.exit_code == 1
    assert exc.value.hint


def test_plan_with_bad_policy_file_exits_with_the_message(las, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: {host: 300.0.0.1}\n")
    res = las(
        "plan", "echo-http", "--policy", str(bad), "--hardware", str(PROFILES / "cpu-only.json")
    )
    assert res.code == 1
    assert res.out == ""
    assert (
        f"error: {bad}: invalid policy: network.host: '300.0.0.1' is not an IP address" in res.err
    )
    assert "hint:" in res.err


def test_plan_with_bad_las_home_policy(las) -> None:
    las.home.mkdir(parents=True, exist_ok=True)
    (las.home / "policy.yaml").write_text("allowed_modes: [native]\n")  # default_mode container
    res = las("plan", "echo-http", "--hardware", str(PROFILES / "cpu-only.json"))
    assert res.code == 1
    assert "default_mode 'container' is not in allowed_modes ['native']" in res.err
    assert str(las.home / "policy.yaml") in res.err


def test_plan_with_missing_policy_file(las, tmp_path: Path) -> None:
    res = las("plan", "echo-http", "--policy", str(tmp_path / "missing.yaml"))
    assert res.code == 1
    assert "no such file" in res.err
