"""The conformance suite's fixtures: one ``backend`` parameter, every backend in BACKENDS.

A new backend joins the suite by one entry in BACKENDS: its name and the mode its modules
run in (a new mode also needs a writer in WRITERS). A container backend is skipped only
when its engine is unusable here (tests/conftest.py's ``usable_engine``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import TEST_IMAGE, Las, usable_engine

from localaistack.runtime import backends

# (backend, mode): every backend the suite runs against.
BACKENDS = [
    pytest.param(("native", "native"), id="native"),
    pytest.param(("podman", "container"), id="podman", marks=pytest.mark.podman),
    pytest.param(("docker", "container"), id="docker", marks=pytest.mark.docker),
]

ModuleMaker = Callable[..., Path]


def native_module(
    backend: str, factory: ModuleMaker, tmp_path: Path, name: str, script: str, **runtime: Any
) -> Path:
    return factory(name, ["sh", "-c", script], **runtime)


def container_module(
    backend: str, factory: ModuleMaker, tmp_path: Path, name: str, script: str, **runtime: Any
) -> Path:
    """A module of the test image run by engine ``backend`` (the home's policy picks it)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "policy.yaml").write_text(yaml.safe_dump({"container_engine": backend}))
    container = {"image": TEST_IMAGE, "command": ["sh", "-c", script]}
    runtime = {"modes": ["container"], "container": container, **runtime}
    manifest = {"name": name, "runtime": runtime}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


# mode -> the writer of a module that runs ``sh -c SCRIPT`` in it
WRITERS: dict[str, Callable[..., Path]] = {"native": native_module, "container": container_module}


@pytest.fixture(params=BACKENDS)
def backend_mode(request: pytest.FixtureRequest, las_env: dict[str, str]) -> tuple[str, str]:
    name, mode = request.param
    if mode == "container":
        usable_engine(name)
    return str(name), str(mode)


@pytest.fixture
def backend(backend_mode: tuple[str, str]) -> str:
    return backend_mode[0]


@pytest.fixture
def module(
    backend_mode: tuple[str, str], module_factory: ModuleMaker, tmp_path: Path, las: Las
) -> Iterator[ModuleMaker]:
    """``module(name, script, **runtime)``: a module that runs ``sh -c script`` on the
    test's backend (busybox's sh in a container), with a 2 s stop timeout by default."""
    name, mode = backend_mode

    def make(module_name: str, script: str, **runtime: Any) -> Path:
        runtime.setdefault("stop", {"timeout": "2s"})
        return WRITERS[mode](name, module_factory, tmp_path, module_name, script, **runtime)

    yield make
    # Nothing may outlive the test: what the backend finds of this home, ended through it.
    from localaistack.store.db import home_label

    cls, label = backends.get(name), home_label(las.home / "state.db")
    for u in cls.unrecorded(label, set(), thorough=True):
        cls.end_unrecorded(label, u.run_id, 0.0, thorough=True)
    cls.sweep_orphans(label, set(), grace=0.0)
