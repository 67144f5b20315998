"""`las run` starts its supervisor before anything else; when the run does not happen, the
supervisor exits and leaves nothing behind (no process, no run directory, no record)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import Las, _supervisors_of, wait_until, workload


def runs_dirs(las: Las) -> set[str]:
    d = las.home / "runs"
    return {p.name for p in d.iterdir()} if d.exists() else set()


@pytest.mark.parametrize(
    "args",
    [
        ("run", "--help"),
        ("run", "--no-such-flag", "x"),
        ("run", "/nonexistent/module.yaml"),
        ("run", "no-such-module"),
    ],
)
def test_a_run_that_does_not_happen_leaves_nothing(las: Las, args: tuple[str, ...]) -> None:
    las.ok("ps")  # the store exists: `las run` spawns its supervisor first
    res = las(*args)
    assert (res.code == 0) == (args[1] == "--help"), res.err
    wait_until(lambda: not _supervisors_of(las.home), message="no supervisor left")
    wait_until(lambda: not runs_dirs(las), message="no run directory left")
    assert las.ok("events", "--json").out.count('"starting"') == 0


def test_a_refused_run_leaves_the_running_one_alone(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    path = module_factory("once", workload())
    las.ok("run", "-d", str(path))
    (first,) = runs_dirs(las)
    (sup,) = _supervisors_of(las.home)
    res = las("run", "-d", str(path))  # the name is taken
    assert res.code != 0 and "already running" in res.err
    wait_until(lambda: _supervisors_of(las.home) == [sup], message="only the first supervisor")
    wait_until(lambda: runs_dirs(las) == {first}, message="only the first run's directory")
    assert las.state("once") == "running"
