"""`las run` and `las plan` keep the hardware probe while nothing it was probed from
changed (control/probecache.py), and plan every time: a changed manifest, policy or
environment is planned afresh."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from tests.conftest import Las, workload


def kept(las: Las) -> Path:
    return las.home / "cache" / "hardware.json"


FAKE_PODMAN = """#!/bin/sh
echo "$@" >> {log}
case "$1" in
  version) echo '{{"Client": {{"Version": "9.9.9"}}}}' ;;
  image) exit 1 ;;
esac
"""


@pytest.fixture
def fake_podman(las: Las, tmp_path: Path) -> Path:
    """A podman first on PATH that answers the probe and notes each call in a log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "podman.log"
    (bindir / "podman").write_text(FAKE_PODMAN.format(log=log))
    (bindir / "podman").chmod(0o755)
    las.env["PATH"] = f"{bindir}:{las.env['PATH']}"
    las.home.mkdir(mode=0o700)  # `las plan` keeps the probe in a home, never makes one
    return log


def container_module(tmp_path: Path) -> Path:
    path = tmp_path / "boxed.yaml"
    container = {"image": "localhost/las-test-busybox:1", "command": ["true"]}
    manifest = {"name": "boxed", "runtime": {"modes": ["container"], "container": container}}
    path.write_text(yaml.safe_dump(manifest))
    return path


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def plan_of(las: Las, name: str) -> dict[str, object]:
    plan: dict[str, object] = las.inspect(name)["plan"]
    return plan


def test_a_second_run_uses_the_profile_probed_for_the_first(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    path = module_factory("cached", workload())
    las.ok("run", "-d", str(path), "--name", "one")
    assert stat.S_IMODE(kept(las).stat().st_mode) == 0o600
    before = kept(las).stat().st_mtime_ns
    las.ok("run", "-d", str(path), "--name", "two")
    assert kept(las).stat().st_mtime_ns == before  # used, not probed again
    assert {las.state("one"), las.state("two")} == {"running"}
    # Every directory las made (cache/, logs/, runs/ and below) is private.
    dirs = [las.home, *(p for p in las.home.rglob("*") if p.is_dir())]
    assert {str(d): stat.S_IMODE(d.stat().st_mode) for d in dirs} == {str(d): 0o700 for d in dirs}


def test_the_engines_are_asked_once_and_again_when_one_is_replaced(
    las: Las, tmp_path: Path, fake_podman: Path
) -> None:
    module = container_module(tmp_path)
    plan = las.ok("plan", str(module), "--json").json()
    assert plan["container"]["engine"] in ("podman", "docker")
    asked = calls(fake_podman)
    assert [c.split()[0] for c in asked] == ["version", "image"]
    las.ok("plan", str(module), "--json")
    assert calls(fake_podman) == asked  # the kept profile
    podman = Path(las.env["PATH"].split(":")[0]) / "podman"
    new = podman.with_name("podman.new")
    new.write_text(podman.read_text())
    new.chmod(0o755)
    new.replace(podman)  # another binary: asked again
    las.ok("plan", str(module), "--json")
    assert len(calls(fake_podman)) == 2 * len(asked)


def test_a_native_plan_does_not_ask_the_engines_and_a_container_plan_then_does(
    las: Las, tmp_path: Path, fake_podman: Path, module_factory: Callable[..., Path]
) -> None:
    native = module_factory("onlynative", workload())
    las.ok("plan", str(native))
    assert calls(fake_podman) == []
    las.ok("plan", str(container_module(tmp_path)))
    assert len(calls(fake_podman)) == 2


def test_a_changed_manifest_is_planned_again(las: Las, module_factory: Callable[..., Path]) -> None:
    path = module_factory("edited", workload())
    las.ok("run", "-d", str(path), "--name", "before")
    module_factory("edited", workload("--lines", "2"))  # same file, new argv
    las.ok("run", "-d", str(path), "--name", "after")
    argv = plan_of(las, "after")["native"]["argv"]  # type: ignore[index]
    assert argv[-2:] == ["--lines", "2"]


def test_a_policy_that_no_longer_trusts_the_module_refuses_it(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    path = module_factory("trusted", workload())
    las.ok("run", "-d", str(path), "--name", "first")
    (las.home / "policy.yaml").write_text(yaml.safe_dump({"trusted_native": []}))
    res = las("run", "-d", str(path), "--name", "second")
    assert res.code == 3 and "is not in policy trusted_native" in res.err
    assert "second" not in las.ps()


def test_a_changed_environment_variable_is_planned_again(las: Las, tmp_path: Path) -> None:
    exe = tmp_path / "server.sh"
    exe.write_text("#!/bin/sh\nexec sleep 1000\n")
    exe.chmod(0o755)
    manifest = tmp_path / "envexe.yaml"
    native = {"command": ["server-bin"], "executable_env": "TEST_SERVER_BIN"}
    data = {"name": "envexe", "runtime": {"modes": ["native"], "native": native}}
    manifest.write_text(yaml.safe_dump(data))
    las.home.mkdir(mode=0o700, exist_ok=True)
    # as root it may run as root: the executable lies in pytest's private tmp dir
    (las.home / "policy.yaml").write_text("trusted_native: [envexe]\nnative_allow_root: [envexe]\n")
    las.env["TEST_SERVER_BIN"] = str(exe)
    las.ok("run", "-d", str(manifest), "--name", "a")
    other = tmp_path / "other.sh"
    other.write_text("#!/bin/sh\nexec sleep 999\n")
    other.chmod(0o755)
    las.env["TEST_SERVER_BIN"] = str(other)
    las.ok("run", "-d", str(manifest), "--name", "b")
    assert plan_of(las, "b")["native"]["argv"] == [str(other)]  # type: ignore[index]


def test_two_instances_of_a_module_get_their_own_ports(las: Las) -> None:
    las.home.mkdir(mode=0o700, exist_ok=True)
    # as root it may run as root: this Python may lie where las-workload cannot reach
    (las.home / "policy.yaml").write_text(
        "trusted_native: [echo-http]\nnative_allow_root: [echo-http]\n"
    )
    las.ok("run", "-d", "echo-http", "--name", "web1")
    las.ok("run", "-d", "echo-http", "--name", "web2")
    ports = {n: las.ps()[n]["ports"] for n in ("web1", "web2")}
    assert ports["web1"] != ports["web2"]  # ["127.0.0.1:PORT->http"]
    assert {las.state("web1"), las.state("web2")} == {"running"}


def test_the_cache_can_be_turned_off(las: Las, tmp_path: Path, fake_podman: Path) -> None:
    module = container_module(tmp_path)
    las.env["LAS_PROBE_CACHE"] = "0"
    las.ok("plan", str(module))
    las.ok("plan", str(module))
    assert len(calls(fake_podman)) == 4  # probed each time
    assert not (las.home / "cache").exists()


def test_a_damaged_cache_file_is_probed_again(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    path = module_factory("damaged", workload())
    las.ok("run", "-d", str(path), "--name", "c1")
    kept(las).write_text("{not json")
    las.ok("run", "-d", str(path), "--name", "c2")
    assert las.state("c2") == "running"
    assert json.loads(kept(las).read_text())["profile"]["schema_version"] == 1


def test_a_workdir_gone_since_is_refused(
    las: Las, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    workdir = tmp_path / "wd"
    workdir.mkdir()
    path = module_factory("inwd", workload(), workdir=str(workdir))
    las.ok("run", "-d", str(path), "--name", "w1")
    las.ok("rm", "-f", "w1")
    workdir.rmdir()
    res = las("run", "-d", str(path), "--name", "w2")
    assert res.code == 3 and "workdir" in res.err and str(workdir) in res.err
    assert "w2" not in las.ps()


def test_a_plan_without_a_home_makes_none(las: Las, tmp_path: Path) -> None:
    las("plan", str(container_module(tmp_path)))  # planned or not: the engines were asked
    assert not las.home.exists()
