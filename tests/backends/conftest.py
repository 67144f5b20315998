"""The conformance suite's fixtures: one ``backend`` parameter, every backend in BACKENDS.

A new backend joins the suite by one entry in BACKENDS (and, if it needs one, a branch in
``module`` that writes a module for it). A container backend is skipped only when its
engine is unusable here (tests/conftest.py's ``usable_engine``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import TEST_IMAGE, Las, usable_engine

BACKENDS = [
    pytest.param("native"),
    pytest.param("podman", marks=pytest.mark.podman),
    pytest.param("docker", marks=pytest.mark.docker),
]

ModuleMaker = Callable[..., Path]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, las_env: dict[str, str]) -> str:
    name = str(request.param)
    if name != "native":
        usable_engine(name)
    return name


@pytest.fixture
def module(
    backend: str, module_factory: ModuleMaker, tmp_path: Path, las: Las
) -> Iterator[ModuleMaker]:
    """``module(name, script, **runtime)``: a module that runs ``sh -c script`` on the
    test's backend (busybox's sh in a container), with a 2 s stop timeout by default."""

    def make(name: str, script: str, **runtime: Any) -> Path:
        runtime.setdefault("stop", {"timeout": "2s"})
        if backend == "native":
            return module_factory(name, ["sh", "-c", script], **runtime)
        home = tmp_path / "home"
        home.mkdir(mode=0o700, exist_ok=True)
        (home / "policy.yaml").write_text(yaml.safe_dump({"container_engine": backend}))
        container = {"image": TEST_IMAGE, "command": ["sh", "-c", script]}
        manifest = {"name": name, "runtime": {"modes": ["container"], "container": container,
                                              **runtime}}  # fmt: skip
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        return path

    yield make
    if backend != "native":  # nothing may outlive the test
        from localaistack.store.db import home_label

        engine = usable_engine(backend)
        for st in engine.list_labelled("las.home", home_label(las.home / "state.db")):
            engine.remove(st.id)
