"""A `las run` that does not happen (``--help``, a usage error, a refusal) leaves nothing
behind: no supervisor, no run directory, no record; one that does happen, however many at
once, each gets its own instance and supervisor."""

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
    las.ok("ps")  # the store exists
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


def test_concurrent_runs_each_start(las: Las, module_factory: Callable[..., Path]) -> None:
    path = module_factory("many", workload())
    las.ok("ps")
    procs = [las.popen("run", "-d", str(path), "--name", f"c{i}") for i in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "running" in out
    ps = las.ps()
    assert all(ps[f"c{i}"]["state"] == "running" for i in range(4))
    assert len(_supervisors_of(las.home)) == 4
    assert len(runs_dirs(las)) == 4
