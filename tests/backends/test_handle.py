"""The versioned run handle (runtime/backend.py, serialised by store/db.py)."""

from __future__ import annotations

import json

import pytest

from localaistack.errors import RecoveryFailed
from localaistack.runtime import backends
from localaistack.runtime.backend import HANDLE_VERSION, Handle
from localaistack.store.db import handle_state

# Handles as the releases before the versioned one stored them (runs.handle).
NATIVE_V0 = json.dumps(
    {
        "cgroup": {"unified": "/sys/fs/cgroup/las/run-0123abcd4567"},
        "limits": {"memory": "cgroup v2 memory.max 64MiB", "cpus": "none requested"},
        "descendants": [[4242, 123456]],
    }
)
CONTAINER_V0 = json.dumps(
    {"container": "f" * 64, "container_name": "las-web-0123abcd4567", "engine": "podman"}
)


def test_todays_stored_forms_still_load() -> None:
    native = Handle.load(NATIVE_V0, "native")
    assert native.backend == "native" and native.version == HANDLE_VERSION
    assert native.state == json.loads(NATIVE_V0)
    container = Handle.load(CONTAINER_V0, "podman")
    assert (container.backend, container.state["container"]) == ("podman", "f" * 64)
    # Converted once, they are stored in the versioned form and read back the same.
    again = Handle.load(container.to_json(), "podman")
    assert again == container
    assert json.loads(container.to_json())["version"] == HANDLE_VERSION
    assert handle_state(CONTAINER_V0) == handle_state(container.to_json())


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (json.dumps({"backend": "podman", "version": 99, "state": {}}), "version 99"),
        (json.dumps({"backend": "podman", "version": "1", "state": {}}), "malformed"),
        (json.dumps({"backend": "docker", "version": 1, "state": {}}), "a docker handle"),
        ("[1, 2]", "cannot be read"),
        ("not json", "cannot be read"),
        (None, "no stored"),
        ("", "no stored"),
    ],
)
def test_a_handle_that_cannot_be_used_is_recovery_failed(text: str | None, why: str) -> None:
    with pytest.raises(RecoveryFailed, match=why):
        Handle.load(text, "podman")


def test_every_backend_is_registered_with_its_capabilities() -> None:
    for name in backends.REGISTRY:
        cls = backends.get(name)
        assert cls.name == name
        assert cls.capabilities.output in ("pipes", "engine-logs")
    assert backends.name_for({"mode": "native"}) == "native"
    assert backends.name_for({"mode": "container", "container": {"engine": "docker"}}) == "docker"
