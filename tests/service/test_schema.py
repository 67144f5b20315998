"""Property-based tests of a real `las serve` against its own OpenAPI document
(schemathesis): every operation, with generated valid and invalid inputs, is answered
without a 5xx, with a documented status and content type, a body that matches the
documented schema, and every 4xx as a problem body (RFC 9457).

The service listens on 127.0.0.1 (port 0: the kernel's) with its bearer token; the
document is the one it serves at /openapi.json. Its home has one finished instance (so
that the lists are not empty) and a policy under which nothing generated can run: native
only, and no trusted module but that one (a random ``module`` is a name the catalog does
not have, or a catalog module the policy refuses natively). Deterministic: a fixed seed,
derandomized; bounded: a few examples per operation.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.conftest import REPO, Las, end_home, wait_until, workload
from tests.service.conftest import Service, start_service

PROBLEM = "application/problem+json"
SEED = 19
MAX_EXAMPLES = 25  # per operation and generation mode: the file runs in well under 90 s
STREAM_SECONDS = 0.5  # an event stream never ends: read it this long


@dataclass
class Api:
    svc: Service
    url: str
    token: str
    las: Las

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _env(home: Path, tmp: Path) -> dict[str, str]:
    """The environment of the `las_env` fixture, for a home shared by the module."""
    env = dict(os.environ)
    env.update(
        LAS_HOME=str(home),
        XDG_STATE_HOME=str(tmp / "xdg-state"),
        XDG_CONFIG_HOME=str(tmp / "xdg-config"),
    )
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("schema")
    home = tmp / "home"
    home.mkdir(mode=0o700)
    manifest = {
        "name": "finished",
        "version": "1.0.0",
        "category": "service",
        "runtime": {
            "modes": ["native"],
            "native": {"command": workload("--lines", "2", "--exit-after-lines")},
        },
    }
    path = tmp / "finished.yaml"
    path.write_text(yaml.safe_dump(manifest))
    policy = {
        "allowed_modes": ["native"],
        "default_mode": "native",
        "trusted_native": ["finished"],
        "native_allow_root": ["finished"],
    }
    (home / "policy.yaml").write_text(yaml.safe_dump(policy))
    las = Las(home, _env(home, tmp))
    las.ok("run", str(path), "-d")
    wait_until(lambda: las.state("finished") == "stopped", timeout=30, message="its end")

    svc = start_service(las.env, home, "--listen", "127.0.0.1:0")
    try:
        found = wait_until(
            lambda: re.search(r"listening on (http://\S+)", svc.log_text()),
            timeout=20,
            message="the TCP listener's log line",
        )
        token = (home / "api-token").read_text().strip()
        yield Api(svc, found.group(1), token, las)
    finally:
        svc.stop()
        end_home(las)


@pytest.fixture(scope="module")
def api_schema(api: Api) -> Any:
    with httpx.Client(base_url=api.url, headers=api.auth, timeout=30) as c:
        res = c.get("/openapi.json")
    assert res.status_code == 200, res.text
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": api.url,
            "headers": api.auth,
            "request-timeout": 30,
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
        }
    )
    return schemathesis.openapi.from_dict(res.json(), config=config)


def problem_conformance(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx or 5xx answer is a problem body (RFC 9457) of its status, without a
    traceback: the OpenAPI document gives no schema for it (``application/problem+json:
    {}``), so schemathesis' own checks cannot see its shape."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith(PROBLEM), f"{response.status_code} as {content_type!r}"
    body = json.loads(response.content)
    assert body["status"] == response.status_code, body
    assert body["type"].startswith("urn:localaistack:problem:"), body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert "Traceback" not in response.text
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    problem_conformance,
]

# Every operation of the document (test_the_document_is_all_here fails when one is added
# and not here), and whether it has an input that can be made invalid (no parameter but a
# free string: there is no negative case to generate).
OPERATIONS = [
    ("GET", "/v1/health", False),
    ("GET", "/v1/hardware", False),
    ("GET", "/v1/modules", False),
    ("POST", "/v1/plans", True),
    ("GET", "/v1/instances", True),
    ("POST", "/v1/instances", True),
    ("GET", "/v1/instances/{name}", False),
    ("DELETE", "/v1/instances/{name}", True),
    ("POST", "/v1/instances/{name}/start", True),
    ("POST", "/v1/instances/{name}/stop", True),
    ("POST", "/v1/instances/{name}/restart", True),
    ("GET", "/v1/instances/{name}/logs", True),
    ("GET", "/v1/events", True),
    ("GET", "/v1/events/stream", True),
    ("GET", "/metrics", False),
]
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path, negative in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if negative or mode is GenerationMode.POSITIVE
]


def test_the_document_is_all_here(api_schema: Any) -> None:
    paths = api_schema.raw_schema["paths"]
    listed = {(m.upper(), p) for p, ops in paths.items() for m in ops}
    assert listed == {(method, path) for method, path, _ in OPERATIONS}


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_every_operation(
    api: Api, api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    timeout = STREAM_SECONDS if path == "/v1/events/stream" else 30
    seen: list[int] = []

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure shows as found
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call(timeout=timeout)
        seen.append(response.status_code)
        case.validate_response(response, checks=CHECKS, headers=api.auth)

    check()
    assert seen, "no request was made"


def test_integers_past_sqlite_are_422(api: Api) -> None:
    """Found by the generated cases: an ``after`` or ``tail`` beyond SQLite's integers
    was an OverflowError, a 500; it is a 422 naming the parameter."""
    huge = str(2**63)
    with httpx.Client(base_url=api.url, headers=api.auth, timeout=30) as c:
        for route, param in [
            ("/v1/events", "after"),
            ("/v1/events", "tail"),
            ("/v1/instances/finished/logs", "tail"),
        ]:
            res = c.get(route, params={param: huge})
            assert res.status_code == 422, (route, param, res.text)
            assert res.headers["content-type"] == PROBLEM
            assert param in res.json()["detail"]
        res = c.get("/v1/events", params={"after": str(2**63 - 1), "tail": str(2**63 - 1)})
        assert res.status_code == 200 and res.json() == []


def test_nothing_generated_ran(api: Api) -> None:
    """After the generated requests (this file's tests run in order): the one instance,
    still finished; the service alive, its log without a traceback or a 5xx."""
    assert set(api.las.ps()) <= {"finished"}
    assert api.svc.proc.poll() is None
    log = api.svc.log_text()
    assert "Traceback" not in log
    assert not re.search(r" 5\d\d \d+ms", log), log
