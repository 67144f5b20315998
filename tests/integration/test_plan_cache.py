"""`las run` uses a plan again only when everything it was made from is unchanged."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from tests.conftest import Las, workload


def entries(las: Las) -> dict[str, int]:
    """The cache's entries and their mtimes (a hit rewrites nothing)."""
    d = las.home / "cache" / "plans"
    return {p.name: p.stat().st_mtime_ns for p in d.glob("*.json")} if d.exists() else {}


def plan_of(las: Las, name: str) -> dict[str, object]:
    plan: dict[str, object] = las.inspect(name)["plan"]
    return plan


def test_a_second_run_uses_the_plan_made_for_the_first(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    path = module_factory("cached", workload())
    las.ok("run", "-d", str(path), "--name", "one")
    made = entries(las)
    assert len(made) == 1
    mode = next(iter(las.home.joinpath("cache", "plans").glob("*.json"))).stat().st_mode
    assert mode & 0o777 == 0o600
    las.ok("run", "-d", str(path), "--name", "two")
    assert entries(las) == made  # used, not made again
    assert plan_of(las, "two") == plan_of(las, "one")
    assert {las.state("one"), las.state("two")} == {"running"}
    # Every directory las made (cache/, logs/, runs/ and below) is private.
    dirs = [las.home, *(p for p in las.home.rglob("*") if p.is_dir())]
    assert {str(d): stat.S_IMODE(d.stat().st_mode) for d in dirs} == {str(d): 0o700 for d in dirs}


def test_a_changed_manifest_is_planned_again(las: Las, module_factory: Callable[..., Path]) -> None:
    path = module_factory("edited", workload())
    las.ok("run", "-d", str(path), "--name", "before")
    module_factory("edited", workload("--lines", "2"))  # same file, new argv
    las.ok("run", "-d", str(path), "--name", "after")
    argv = plan_of(las, "after")["native"]["argv"]  # type: ignore[index]
    assert argv[-2:] == ["--lines", "2"]
    assert len(entries(las)) == 2


def test_a_policy_that_no_longer_trusts_the_module_refuses_it(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    path = module_factory("trusted", workload())
    las.ok("run", "-d", str(path), "--name", "first")
    (las.home / "policy.yaml").write_text(yaml.safe_dump({"trusted_native": []}))
    res = las("run", "-d", str(path), "--name", "second")
    assert res.code == 3 and "is not in policy trusted_native" in res.err
    assert "second" not in las.ps()


def test_an_environment_variable_the_planner_read_is_part_of_the_key(
    las: Las, tmp_path: Path
) -> None:
    exe = tmp_path / "server.sh"
    exe.write_text("#!/bin/sh\nexec sleep 1000\n")
    exe.chmod(0o755)
    manifest = tmp_path / "envexe.yaml"
    manifest.write_text(yaml.safe_dump({"name": "envexe", "runtime": {"modes": ["native"],
        "native": {"command": ["server-bin"], "executable_env": "TEST_SERVER_BIN"}}}))  # fmt: skip
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


def test_ports_promised_to_a_running_instance_get_a_new_plan(las: Las) -> None:
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


def test_a_plan_with_a_secret_is_never_kept(las: Las, module_factory: Callable[..., Path]) -> None:
    path = module_factory(
        "withkey",
        workload(),
        env={"SERVICE_TOKEN": "${token}"},
        parameters={"token": {"type": "string", "secret": True, "required": True}},
    )
    las.ok("run", "-d", str(path), "--set", "token=s3cr3t-value")
    assert entries(las) == {}


def test_the_cache_can_be_turned_off(las: Las, module_factory: Callable[..., Path]) -> None:
    path = module_factory("nocache", workload())
    las.env["LAS_PLAN_CACHE"] = "0"
    las.ok("run", "-d", str(path))
    assert not (las.home / "cache").exists()


def test_a_corrupt_entry_is_planned_again(las: Las, module_factory: Callable[..., Path]) -> None:
    path = module_factory("corrupt", workload())
    las.ok("run", "-d", str(path), "--name", "c1")
    (entry,) = (las.home / "cache" / "plans").glob("*.json")
    data = json.loads(entry.read_text())
    data["plan"] = data["plan"].replace('"mode":"native"', '"mode":"bogus"')
    entry.write_text(json.dumps(data))
    las.ok("run", "-d", str(path), "--name", "c2")
    assert plan_of(las, "c2")["mode"] == "native"
    assert os.path.exists(entry)  # planned again, and kept again


def test_a_workdir_gone_since_is_refused_as_without_the_cache(
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


def test_a_kept_plan_starts_without_the_planning_models(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    # The point of keeping plans: the start path imports neither pydantic nor the planner.
    path = module_factory("light", workload())
    las.ok("run", "-d", str(path), "--name", "l1")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "localaistack", "run", "-d", str(path),
         "--name", "l2"],
        env=las.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "imported package" not in line
    }
    assert "localaistack.plan" in imported  # importtime reports what it should
    heavy = {"localaistack.control.planner", "localaistack.control.hardware"}
    # ...nor click: the plain forms of `las run` skip it (cli/launch.py).
    assert {m for m in imported if m.split(".")[0] in ("pydantic", "click") or m in heavy} == set()
    assert las.state("l2") == "running"


def test_the_agents_warm_up_reads_a_kept_plan_and_writes_nothing(
    las: Las, module_factory: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from localaistack.control import plancache

    path = module_factory("warm", workload())
    las.ok("run", "-d", str(path), "--name", "w")
    (entry,) = (las.home / "cache" / "plans").glob("*.json")
    kept = json.loads(entry.read_text())["plan"]

    def files() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in las.home.rglob("*")}

    before = files()
    parsed: list[str] = []
    real = plancache.ExecutionPlan.from_json
    monkeypatch.setattr(
        plancache.ExecutionPlan, "from_json", lambda text: parsed.append(text) or real(text)
    )
    plancache.warm_up(las.home)
    assert parsed == [kept]  # read as a hit reads it
    assert files() == before  # nothing written, nothing dropped
    entry.write_text("{not json")  # a broken entry is the hit path's to drop
    plancache.warm_up(las.home)
    assert entry.read_text() == "{not json"
