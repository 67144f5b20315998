"""`las serve` keeps one supervisor spawned ahead (runtime/supervision.py ``SparePool``):
the next start uses it, another takes its place, and none outlives the service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import (
    Las,
    _supervisors_of,
    pid_alive,
    run_supervisors_of,
    wait_until,
    workload,
)
from tests.service.conftest import Service


def _spares(home: Path) -> set[int]:
    return set(_supervisors_of(home)) - set(run_supervisors_of(home))


def test_a_start_takes_the_spare_and_another_is_spawned(
    las: Las, service: Service, module_factory: Callable[..., Path]
) -> None:
    (spare,) = wait_until(lambda: _spares(las.home), message="a spare supervisor")
    path = module_factory("svc", workload())
    with service.client() as c:
        r = c.post("/v1/instances", json={"module": str(path), "detach": True})
        assert r.status_code == 201 and r.json()["state"] == "running", r.text
        run = c.get("/v1/instances/svc").json()["runs"][0]
    assert run_supervisors_of(las.home) == [spare]  # the run's supervisor is the spare
    (next_spare,) = wait_until(lambda: _spares(las.home), message="a new spare")
    assert next_spare != spare
    # a start of an existing instance takes it too
    with service.client() as c:
        assert c.post("/v1/instances/svc/stop", json={}).status_code == 200
        r = c.post("/v1/instances/svc/start", json={"detach": True})
        assert r.status_code == 200 and r.json()["state"] == "running", r.text
    assert next_spare in run_supervisors_of(las.home)
    assert run["run_id"] != r.json()["run_id"]


def test_the_spare_ends_with_the_service(las: Las, service: Service) -> None:
    (spare,) = wait_until(lambda: _spares(las.home), message="a spare supervisor")
    service.stop()
    wait_until(lambda: not pid_alive(spare), message="the spare gone")
    assert not _supervisors_of(las.home)
    runs = las.home / "runs"
    wait_until(
        lambda: not runs.exists() or not any(runs.iterdir()), message="its run directory gone"
    )


def test_a_refused_run_leaves_a_spare(las: Las, service: Service) -> None:
    (spare,) = wait_until(lambda: _spares(las.home), message="a spare supervisor")
    with service.client() as c:
        r = c.post("/v1/instances", json={"module": "no-such-module"})
        assert r.status_code == 400 and "unknown module" in r.json()["detail"], r.text
    wait_until(lambda: not pid_alive(spare), message="the spare taken and let go")
    wait_until(lambda: _spares(las.home), message="a new spare")
