"""Restart policies always and unless-stopped (Docker's semantics), beside never and
on-failure: which ends of a run start the next one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import Las, _supervisors_of, wait_until, workload

ModuleFactory = Callable[..., Path]


def _settled(las: Las) -> None:
    """Wait until no supervisor of the home is left: no restart can still come."""
    wait_until(lambda: not _supervisors_of(las.home), timeout=30, message="supervisors gone")


@pytest.mark.parametrize("policy", ["always", "unless-stopped"])
def test_a_clean_exit_is_restarted(las: Las, module_factory: ModuleFactory, policy: str) -> None:
    path = module_factory(
        "clean",
        workload("--exit", "0"),
        restart={"policy": policy, "max_restarts": 2, "backoff": "100ms"},
    )
    las("run", str(path))
    wait_until(
        lambda: (las.ps()["clean"]["reason"] or "").startswith("restart budget exhausted"),
        timeout=30,
        message="restarted until the budget ran out",
    )
    runs = las.inspect("clean")["runs"]
    assert len(runs) == 3  # the first run and two restarts
    assert all(r["exit_code"] == 0 for r in runs)


def test_on_failure_does_not_restart_a_clean_exit(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory(
        "once",
        workload("--exit", "0"),
        restart={"policy": "on-failure", "max_restarts": 2, "backoff": "100ms"},
    )
    las("run", str(path))
    _settled(las)
    assert len(las.inspect("once")["runs"]) == 1


@pytest.mark.parametrize("policy", ["always", "unless-stopped"])
def test_las_stop_is_never_restarted(las: Las, module_factory: ModuleFactory, policy: str) -> None:
    path = module_factory(
        "svc", workload(), restart={"policy": policy, "max_restarts": 3, "backoff": "100ms"}
    )
    las.ok("run", str(path), "-d")
    las.ok("stop", "svc")
    _settled(las)
    data = las.inspect("svc")
    assert data["state"] == "stopped"
    assert len(data["runs"]) == 1


def test_las_run_restart_overrides_the_manifest(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory(
        "once",
        workload("--exit", "0"),
        restart={"policy": "never", "max_restarts": 2, "backoff": "100ms"},
    )
    las("run", str(path), "--restart", "always")
    wait_until(
        lambda: (las.ps()["once"]["reason"] or "").startswith("restart budget exhausted"),
        timeout=30,
        message="restarted under the policy asked for",
    )
    data = las.inspect("once")
    assert len(data["runs"]) == 3
    assert data["plan"]["restart"]["policy"] == "always"
    bad = las("run", str(path), "--name", "other", "--restart", "sometimes")
    assert bad.code == 2 and "--restart" in bad.err
