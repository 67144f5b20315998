"""The HTTP client (ops/remote.py) at the wire, against a real stand-in server
(tests/programs/fakeservice.py, a subprocess on a unix socket or a TCP port) that answers
canned problem bodies, warnings, log chunks and event streams that break off."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import PROFILES, PROGRAMS, Las, wait_until, workload
from tests.service.conftest import Service, start_service

from localaistack import errors
from localaistack.ops import problems
from localaistack.ops.api import PlanRequestBody, RunRequest
from localaistack.ops.remote import RemoteOperations, parse_host, sse_events

PROBLEM = {"Content-Type": problems.MEDIA_TYPE}


@dataclass
class Fake:
    """A running fakeservice.py: what to answer (``route``) and what it was asked."""

    proc: subprocess.Popen[bytes]
    url: str
    dir: Path

    def route(self, method: str, path: str, **answer: Any) -> None:
        table_file = self.dir / "routes.json"
        table = json.loads(table_file.read_text()) if table_file.exists() else {}
        table[f"{method} {path}"] = answer
        tmp = self.dir / "routes.json.tmp"
        tmp.write_text(json.dumps(table))
        tmp.replace(table_file)  # the server never reads half a table

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        record = self.dir / "record.jsonl"
        lines = record.read_text().splitlines() if record.exists() else []
        found = [json.loads(line) for line in lines]
        return [r for r in found if path is None or r["path"] == path]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def start_fake(kind: str = "unix") -> Fake:
    # a short directory of its own: a unix socket's path is at most 107 bytes
    where = Path(tempfile.mkdtemp(prefix="las-fake-"))
    ready = where / "ready"
    place = ["unix", str(where / "las.sock")] if kind == "unix" else ["tcp", "127.0.0.1", "0"]
    with open(where / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(PROGRAMS / "fakeservice.py"),
                *place,
                str(where / "routes.json"),
                str(where / "record.jsonl"),
                str(ready),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_until(lambda: ready.exists() or proc.poll() is not None, 15, message="fakeservice")
    if proc.poll() is not None:
        raise AssertionError((where / "server.log").read_text())
    address = ready.read_text()
    url = f"unix://{address}" if kind == "unix" else f"http://127.0.0.1:{address}"
    return Fake(proc, url, where)


@pytest.fixture
def fake() -> Iterator[Fake]:
    srv = start_fake("unix")
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)


@pytest.fixture
def fake_tcp() -> Iterator[Fake]:
    srv = start_fake("tcp")
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_las_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAS_TOKEN", raising=False)


def event(n: int) -> dict[str, Any]:
    return {
        "id": n,
        "at": f"2026-12-02T10:00:{n:02d}.00Z",
        "instance": "web",
        "run_id": f"r{n}",
        "type": "state",
        "message": f"event {n}",
    }


# --- errors: the same class, words, hint and exit code as in process -------------------------

SAME_ERRORS: list[errors.LasError] = [
    errors.UsageError("--set: 'x' is not NAME=VALUE", hint="e.g. --set port=8080"),
    errors.ManifestError("2 manifests are invalid", "fix them", ["a.yaml: bad", "b.yaml: worse"]),
    errors.PolicyError("policy.yaml: not a mapping"),
    errors.HardwareProfileError("hw.json is not a profile", hint="save one with las hw --save"),
    errors.PolicyViolation("the policy forbids native mode", hint="allow it in policy.yaml"),
    errors.NoCompatibleMode("no mode fits", hint="see `las plan --explain`"),
    errors.RequirementUnmet("needs 24 GiB of GPU memory, 8 GiB free"),
    errors.AdmissionRefused("GPU 0 is held by web2", hint="`las stop web2` frees it"),
    errors.InstanceNotFound("no instance named 'web'", hint="`las ps --all` lists them"),
    errors.InstanceConflict("web is running", hint="`las stop web` first"),
    errors.StartFailed("web: exited 3 before healthy", hint="`las logs web` shows why"),
    errors.RecoveryFailed("run r1 cannot be reattached"),
    errors.NotSupported("podman cannot pause"),
    errors.StoreError("LAS_HOME is on a full disk", hint="free some space", cause="full"),
]


@pytest.mark.parametrize("err", SAME_ERRORS, ids=lambda e: type(e).__name__)
def test_a_problem_is_rebuilt_as_the_same_error(fake: Fake, err: errors.LasError) -> None:
    status, body = problems.problem_of(err)
    fake.route("GET", "/v1/instances/web", status=status, headers=PROBLEM, json=body)
    with RemoteOperations(fake.url) as ops, pytest.raises(errors.LasError) as got:
        ops.inspect("web")
    assert type(got.value) is type(err)
    assert (got.value.message, got.value.hint, got.value.exit_code) == (
        err.message,
        err.hint,
        err.exit_code,
    )
    assert getattr(got.value, "problems", None) == getattr(err, "problems", None)
    assert getattr(got.value, "cause", None) == getattr(err, "cause", None)


def test_a_problem_with_no_error_class_is_a_usage_error(fake: Fake) -> None:
    body = problems.plain_problem(
        401, "Unauthenticated", "a bearer token is needed", hint="set LAS_TOKEN"
    )
    fake.route("GET", "/v1/instances", status=401, headers=PROBLEM, json=body)
    with RemoteOperations(fake.url) as ops, pytest.raises(errors.UsageError) as got:
        ops.ps()
    assert (got.value.message, got.value.hint, got.value.exit_code) == (
        "a bearer token is needed",
        "set LAS_TOKEN",
        2,
    )


@pytest.mark.parametrize(
    ("status", "headers", "answer"),
    [
        (502, {"Content-Type": "text/html"}, {"text": "<html><b>Bad gateway</b></html>"}),
        (500, {}, {"text": ""}),
        (422, {}, {"json": {"detail": [{"loc": ["body", "x"], "msg": "field required"}]}}),
        (404, {}, {"json": ["not", "a", "problem"]}),
        (404, {}, {"json": {"detail": "Not Found"}}),  # FastAPI's own, not a problem
    ],
)
def test_an_answer_that_is_not_a_problem_is_an_error_saying_so(
    fake: Fake, status: int, headers: dict[str, str], answer: dict[str, Any]
) -> None:
    fake.route("GET", "/v1/instances", status=status, headers=headers, **answer)
    with RemoteOperations(fake.url) as ops, pytest.raises(errors.LasError) as got:
        ops.ps()
    assert type(got.value) is errors.LasError
    assert got.value.exit_code == 1
    assert f"HTTP {status}" in got.value.message
    assert "no problem details" in got.value.message
    assert fake.url in got.value.message
    if answer.get("text"):
        assert "Bad gateway" in got.value.message


def test_a_body_las_does_not_understand_is_an_error_saying_so(fake: Fake) -> None:
    fake.route("GET", "/v1/instances/web", json={"name": "web", "surprise": 1})
    fake.route("GET", "/v1/instances", text="not json")
    with RemoteOperations(fake.url) as ops:
        with pytest.raises(errors.LasError, match="does not understand") as got:
            ops.inspect("web")
        assert got.value.hint is not None and "versions" in got.value.hint
        with pytest.raises(errors.LasError, match="not JSON"):
            ops.ps()


# --- warnings ------------------------------------------------------------------------------


def test_las_warnings_are_appended_to_warnings(fake: Fake) -> None:
    said = ["state of web not recorded (disk full)", "caf\u00e9: ünïcode"]
    fake.route(
        "GET", "/v1/instances", json=[], headers={"Las-Warnings": json.dumps(said)}
    )  # json.dumps: ASCII, as the service sends it
    status, body = problems.problem_of(errors.InstanceNotFound("no instance named 'x'"))
    fake.route(
        "GET",
        "/v1/instances/x",
        status=status,
        json=body,
        headers={**PROBLEM, "Las-Warnings": json.dumps(["lost home"])},
    )
    with RemoteOperations(fake.url) as ops:
        assert ops.ps() == []
        assert ops.warnings == said
        with pytest.raises(errors.InstanceNotFound):
            ops.inspect("x")
        assert ops.warnings == [*said, "lost home"]  # an error's warnings too


# --- paths, tokens -------------------------------------------------------------------------


def test_names_in_paths_are_url_encoded(fake: Fake) -> None:
    stopped = {"name": "?abc", "message": "stopped pid 12"}
    fake.route("POST", "/v1/instances/%3Fabc/stop", json=stopped)
    fake.route("DELETE", "/v1/instances/a%2Fb%20c", json={"name": "a/b c", "message": None})
    fake.route("GET", "/v1/instances/%3Fabc/logs", chunks=["x\n"], gate="/")
    with RemoteOperations(fake.url) as ops:
        assert ops.stop("?abc", 2.5).message == "stopped pid 12"
        assert ops.remove("a/b c", force=True).name == "a/b c"
        assert b"".join(ops.logs("?abc", run_id="?r1", tail=3)) == b"x\n"
    stop, remove, logs = fake.requests()
    assert stop["target"] == "/v1/instances/%3Fabc/stop"
    assert json.loads(stop["body"]) == {"timeout": 2.5}
    assert remove["target"] == "/v1/instances/a%2Fb%20c?purge=false&force=true"
    assert logs["path"] == "/v1/instances/%3Fabc/logs"
    assert logs["query"] == {"follow": "false", "timestamps": "false", "tail": "3", "run": "?r1"}


def test_the_token_goes_over_tcp_only(fake: Fake, fake_tcp: Fake) -> None:
    for srv in (fake, fake_tcp):
        srv.route("GET", "/v1/instances", json=[])
        with RemoteOperations(srv.url, token="t0k-en_1") as ops:
            ops.ps()
    (over_unix,) = fake.requests()
    (over_tcp,) = fake_tcp.requests()
    assert "authorization" not in over_unix["headers"]
    assert over_tcp["headers"]["authorization"] == "Bearer t0k-en_1"


def test_the_token_comes_from_the_argument_then_las_token_then_the_home(
    fake_tcp: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_tcp.route("GET", "/v1/instances", json=[])
    home = tmp_path / "svc-home"
    home.mkdir()
    (home / "api-token").write_text("from-file\n")

    def sent(**kw: Any) -> str | None:
        with RemoteOperations(fake_tcp.url, **kw) as ops:
            ops.ps()
        return fake_tcp.requests()[-1]["headers"].get("authorization")  # type: ignore[no-any-return]

    assert sent() is None  # nothing to send: the service answers 401 itself
    assert sent(home=home) == "Bearer from-file"
    monkeypatch.setenv("LAS_TOKEN", "from-env")
    assert sent(home=home) == "Bearer from-env"
    assert sent(home=home, token="given") == "Bearer given"
    (home / "api-token").chmod(0o000)
    monkeypatch.delenv("LAS_TOKEN")
    if os.geteuid() != 0:  # root reads it anyway
        assert sent(home=home) is None  # unreadable: not sent, no error


def test_a_token_unfit_for_a_header_is_refused_without_showing_it(
    fake_tcp: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAS_TOKEN", "two words")
    with pytest.raises(errors.UsageError) as got:
        RemoteOperations(fake_tcp.url)
    assert "LAS_TOKEN" in got.value.message
    assert "two words" not in got.value.message + str(got.value.hint)


# --- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "",
        " unix:///x.sock",
        "/run/las.sock",
        "127.0.0.1:8080",
        "unix://relative/las.sock",
        "unix://",
        "unix:///run/",
        "ftp://127.0.0.1:21",
        "http://",
        "http://127.0.0.1:notaport",
        "http://127.0.0.1:0",
        "http://127.0.0.1:70000",
        "http://user:pw@127.0.0.1:8080",
        "http://127.0.0.1:8080/v1",
        "http://127.0.0.1:8080?x=1",
    ],
)
def test_a_bad_host_is_a_usage_error_naming_the_accepted_forms(host: str) -> None:
    with pytest.raises(errors.UsageError) as got:
        RemoteOperations(host)
    assert repr(host) in got.value.message
    assert got.value.hint is not None
    assert "unix:///" in got.value.hint and "http://HOST:PORT" in got.value.hint
    assert got.value.exit_code == 2


def test_good_hosts_parse() -> None:
    assert parse_host("unix:///run/las/las.sock").socket == "/run/las/las.sock"
    assert parse_host("http://127.0.0.1:8080").base_url == "http://127.0.0.1:8080"
    assert parse_host("https://[::1]:8443/").base_url == "https://[::1]:8443"
    assert parse_host("HTTP://localhost").kind == "tcp"


def test_a_missing_socket_is_service_unavailable(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/nothing.sock"
    with RemoteOperations(url) as ops, pytest.raises(errors.ServiceUnavailable) as got:
        ops.ps()
    assert got.value.exit_code == 6
    assert url in got.value.message
    assert "no such file" in got.value.message.lower()
    assert got.value.hint is not None
    assert "las serve" in got.value.hint and "LAS_HOST" in got.value.hint


def test_a_refused_port_is_service_unavailable() -> None:
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        with RemoteOperations(url) as ops, pytest.raises(errors.ServiceUnavailable) as got:
            ops.modules()
    assert got.value.exit_code == 6
    assert url in got.value.message and "refused" in got.value.message
    assert got.value.hint is not None and "las serve" in got.value.hint


def test_a_socket_nobody_serves_is_service_unavailable(fake: Fake) -> None:
    fake.stop()  # killed: its socket file stays, nothing accepts on it
    assert fake.url.startswith("unix://") and Path(fake.url[7:]).exists()
    with RemoteOperations(fake.url) as ops, pytest.raises(errors.ServiceUnavailable) as got:
        ops.hardware()
    assert "refused" in got.value.message


def test_a_socket_that_accepts_no_more_is_service_unavailable() -> None:
    where = Path(tempfile.mkdtemp(prefix="las-full-"))
    path = where / "las.sock"
    try:
        with socket.socket(socket.AF_UNIX) as srv, socket.socket(socket.AF_UNIX) as queued:
            srv.bind(str(path))
            srv.listen(0)  # one connection may wait; nobody accepts it
            queued.connect(str(path))
            ops = RemoteOperations(f"unix://{path}")
            with ops, pytest.raises(errors.ServiceUnavailable, match="overloaded or stuck"):
                ops.ps()
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_no_answer_in_time_and_a_connection_closed_are_service_unavailable(fake: Fake) -> None:
    fake.route("GET", "/v1/instances", hang=True)
    fake.route("GET", "/v1/modules", close=True)
    with RemoteOperations(fake.url, timeout=0.5) as ops:
        began = time.monotonic()
        with pytest.raises(errors.ServiceUnavailable, match=r"did not answer in 0\.5 s"):
            ops.ps()
        assert time.monotonic() - began < 10
        with pytest.raises(errors.ServiceUnavailable, match="broke off"):
            ops.modules()


def test_run_waits_past_the_bounded_timeout(fake: Fake) -> None:
    outcome = {
        "name": "web",
        "run_id": "r1",
        "state": "healthy",
        "pid": 42,
        "reason": None,
        "log_path": "/x/web.log",
        "what": "pid 42",
        "ports": ["http: 127.0.0.1:8080"],
    }
    fake.route("POST", "/v1/instances", status=201, json=outcome, delay=1.5)
    fake.route("POST", "/v1/instances/web/start", json=outcome, delay=1.5)
    fake.route("GET", "/v1/instances", json=[], delay=1.5)
    with RemoteOperations(fake.url, timeout=0.5) as ops:
        assert ops.run(RunRequest(module="web", set={"port": "8080"})).model_dump() == outcome
        assert ops.start("web", detach=True).state == "healthy"
        with pytest.raises(errors.ServiceUnavailable):
            ops.ps()
    run, start, _ = fake.requests()
    assert json.loads(run["body"])["set"] == {"port": "8080"}
    assert json.loads(start["body"]) == {"detach": True}


# --- plan ----------------------------------------------------------------------------------


def test_a_policy_file_is_refused_before_asking(fake: Fake, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    with RemoteOperations(fake.url) as ops:
        with pytest.raises(errors.UsageError, match="its own policy"):
            ops.plan(PlanRequestBody(module="web"), policy_file=policy)
        with pytest.raises(errors.UsageError, match="its own policy"):
            ops.run(RunRequest(module="web"), policy_file=policy)
    assert fake.requests() == []


def test_plan_sends_the_hardware_profile_and_rebuilds_the_plan(
    fake: Fake, las: Las, module_factory: Callable[..., Path]
) -> None:
    mod = module_factory(
        "sec",
        workload(),
        parameters={"api_key": {"type": "string", "secret": True, "description": "a key"}},
    )
    shown = las.ok("plan", str(mod), "--set", "api_key=s3cr3t", "--json").json()
    assert "s3cr3t" not in json.dumps(shown)
    fake.route("POST", "/v1/plans", json=shown)
    profile = json.loads((PROFILES / "2x24gib.json").read_text())
    req = PlanRequestBody(module=str(mod), set={"api_key": "s3cr3t"}, hardware=profile)
    with RemoteOperations(fake.url) as ops:
        plan = ops.plan(req)
    assert plan.plan_id == shown["plan_id"]  # the plan `las plan` showed, id and all
    assert plan.module.name == "sec"
    assert ops.warnings == []
    fake.route("POST", "/v1/plans", json={**shown, "plan_id": "0123456789abcdef"})
    with RemoteOperations(fake.url) as ops:
        assert ops.plan(req).plan_id == shown["plan_id"]
    assert ops.warnings == [
        f"the plan's id is {plan.plan_id} here, 0123456789abcdef in the service: "
        "the client and the service may be different versions of las"
    ]
    asked = fake.requests()[0]
    assert json.loads(asked["body"]) == {
        "module": str(mod),
        "mode": None,
        "set": {"api_key": "s3cr3t"},
        "hardware": profile,
    }


# --- Ctrl-C while run() waits ----------------------------------------------------------------

WAITER = """
import json, sys
from localaistack.errors import LasError
from localaistack.ops.api import RunRequest
from localaistack.ops.remote import RemoteOperations
try:
    RemoteOperations(sys.argv[1]).run(RunRequest(module="web", detach=False))
except LasError as e:
    print(json.dumps([type(e).__name__, e.message, e.hint, e.exit_code]))
"""


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_run_waits_says_the_service_goes_on(
    fake: Fake, las_env: dict[str, str]
) -> None:
    fake.route("POST", "/v1/instances", hang=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITER, fake.url],
        env=las_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,  # noqa: PLW1509 (no threads here)
    )
    try:
        wait_until(lambda: fake.requests("/v1/instances"), 20, message="the run request")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err, err
    name, message, hint, code = json.loads(out)
    assert (name, code) == ("Interrupted", 130)
    assert "web goes on starting in the service" in message
    assert "`las stop web`" in hint


# --- logs ----------------------------------------------------------------------------------


def test_logs_stream_the_bytes_as_they_arrive(fake: Fake) -> None:
    gate = fake.dir / "gate"
    fake.route(
        "GET",
        "/v1/instances/web/logs",
        chunks=["line 1\n", "line 2\n", "li\u00e9 3\n"],
        gate=str(gate),
    )
    with RemoteOperations(fake.url) as ops:
        chunks = ops.logs("web", follow=True, timestamps=True)
        assert next(chunks) == b"line 1\n"  # before the server sends the rest
        gate.touch()
        assert b"".join(chunks) == "line 2\nli\u00e9 3\n".encode()
    (asked,) = fake.requests()
    assert asked["query"] == {"follow": "true", "timestamps": "true"}


def test_logs_of_an_unknown_instance_raise_before_the_first_byte(fake: Fake) -> None:
    status, body = problems.problem_of(errors.InstanceNotFound("no instance named 'nope'"))
    fake.route("GET", "/v1/instances/nope/logs", status=status, headers=PROBLEM, json=body)
    with RemoteOperations(fake.url) as ops, pytest.raises(errors.InstanceNotFound):
        ops.logs("nope", follow=True)  # not iterated: the call itself raises


# --- events --------------------------------------------------------------------------------


def test_events_without_follow_are_a_list(fake: Fake) -> None:
    fake.route("GET", "/v1/events", json=[event(4), event(5)])
    with RemoteOperations(fake.url) as ops:
        assert [e.id for e in ops.events(after=3, tail=2)] == [4, 5]
    (asked,) = fake.requests()
    assert asked["query"] == {"after": "3", "tail": "2"}


@pytest.mark.parametrize(
    "spec",
    [
        {"per_connection": 3, "cut": "chunked"},
        {"per_connection": 3, "cut": "chunked", "partial": True},
        {"per_connection": 2, "cut": "close", "partial": True},
        {"per_connection": 3, "cut": "chunked", "resend": 1},
    ],
    ids=["chunked", "chunked-partial", "close-partial", "server-resends"],
)
def test_a_followed_event_stream_resumes_with_no_gap_and_no_duplicate(
    fake: Fake, spec: dict[str, Any]
) -> None:
    fake.route("GET", "/v1/events/stream", sse={"events": [event(n) for n in range(1, 9)], **spec})
    with RemoteOperations(fake.url) as ops:
        stream = ops.events(after=1, follow=True)
        got = [e.id for e in itertools.islice(stream, 7)]
        stream.close()  # type: ignore[attr-defined]
    assert got == [2, 3, 4, 5, 6, 7, 8]
    asked = fake.requests("/v1/events/stream")
    assert "last-event-id" not in asked[0]["headers"]
    assert asked[0]["query"] == {"after": "1"}
    per, resend = spec["per_connection"], spec.get("resend", 0)
    resumed = [int(r["headers"]["last-event-id"]) for r in asked[1:]]
    step = per - resend  # new events per connection
    assert resumed == list(range(1 + per, 8, step))  # each time: the last id yielded


def test_follow_with_tail_lists_then_streams_from_the_last(fake: Fake) -> None:
    fake.route("GET", "/v1/events", json=[event(5), event(6)])
    fake.route("GET", "/v1/events/stream", sse={"events": [event(n) for n in range(1, 9)]})
    with RemoteOperations(fake.url) as ops:
        stream = ops.events(tail=2, follow=True)
        assert [e.id for e in itertools.islice(stream, 4)] == [5, 6, 7, 8]
        stream.close()  # type: ignore[attr-defined]
    listed, streamed = fake.requests()
    assert listed["query"] == {"after": "0", "tail": "2"}
    assert streamed["query"] == {"after": "6"}


def test_an_event_stream_that_cannot_be_reopened_is_service_unavailable(fake: Fake) -> None:
    fake.route(
        "GET",
        "/v1/events/stream",
        sse={"events": [event(n) for n in range(1, 5)], "per_connection": 2},
    )
    with RemoteOperations(fake.url, timeout=1) as ops:
        stream = ops.events(follow=True)
        assert [e.id for e in itertools.islice(stream, 2)] == [1, 2]
        fake.stop()  # the service is gone when the stream breaks off
        began = time.monotonic()
        with pytest.raises(errors.ServiceUnavailable, match="could not be reopened in 1 s"):
            next(stream)
        assert time.monotonic() - began < 10


def test_following_events_of_an_unreachable_service_raises_at_once(tmp_path: Path) -> None:
    ops = RemoteOperations(f"unix://{tmp_path}/none.sock")
    with ops, pytest.raises(errors.ServiceUnavailable):
        ops.events(follow=True)


def test_sse_parsing() -> None:
    lines = [
        ": ping",
        "",
        "id: 7",
        "event: state",
        "data: {",
        'data:"a": 1}',
        "retry: 100",
        "",
        "id: 8",  # no data: not an event
        "",
        "data: x",
        "",
        "id: 9",
        "data: cut off",  # no blank line: never dispatched
    ]
    assert list(sse_events(iter(lines))) == [("7", '{\n"a": 1}'), (None, "x")]


# --- the CLI through the client ----------------------------------------------------------------


def test_the_cli_with_las_host_reports_the_service_errors_and_warnings(
    las: Las, fake: Fake, tmp_path: Path
) -> None:
    status, body = problems.problem_of(
        errors.InstanceNotFound("no instance named 'web'", hint="instances: db")
    )
    fake.route(
        "GET",
        "/v1/instances/web",
        status=status,
        json=body,
        headers={**PROBLEM, "Las-Warnings": json.dumps(["state of db not recorded"])},
    )
    remote = Las(las.home, {**las.env, "LAS_HOST": fake.url})
    res = remote("inspect", "web")
    assert res.code == 4
    assert res.err.splitlines() == [
        "warning: state of db not recorded",
        "error: no instance named 'web'",
        "hint: instances: db",
    ]
    gone = Las(las.home, {**las.env, "LAS_HOST": f"unix://{tmp_path}/none.sock"})("ps")
    assert gone.code == 6 and "error: cannot reach the service at unix://" in gone.err
    bad = Las(las.home, {**las.env, "LAS_HOST": "localhost:8080"})("ps")
    assert bad.code == 2 and "--host / LAS_HOST 'localhost:8080'" in bad.err
    flag = las("--host", fake.url, "inspect", "web")  # --host as LAS_HOST
    assert flag.code == 4 and "no instance named 'web'" in flag.err


# --- against a real `las serve`: the same answers as in process --------------------------------


def healthsrv(module_factory: Callable[..., Path], tmp_path: Path, name: str = "web") -> Path:
    """A native module: an HTTP server with a health probe."""
    command = [sys.executable, str(PROGRAMS / "healthsrv.py"), "${host}", "${ports.http}"]
    return module_factory(
        name,
        [*command, str(tmp_path / f"{name}.control")],
        ports=[{"name": "http", "port": 8080}],
        health={
            "http": {"port": "http", "path": "/health"},
            "start_timeout": "20s",
            "interval": "300ms",
            "timeout": "500ms",
        },
    )


def same_error(remote: Callable[[], object], local: Callable[[], object]) -> errors.LasError:
    """Both raise: the same class, words, hint and exit code."""
    with pytest.raises(errors.LasError) as r:
        remote()
    with pytest.raises(errors.LasError) as lo:
        local()
    got, want = r.value, lo.value
    assert (type(got), got.message, got.hint, got.exit_code) == (
        type(want),
        want.message,
        want.hint,
        want.exit_code,
    )
    return got


def _named(modules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**m, "path": Path(m["path"]).name} if m["source"] == "builtin" else m for m in modules]


def test_a_real_service_answers_as_in_process(
    las: Las, service: Service, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    from localaistack.ops.local import LocalOperations

    path = healthsrv(module_factory, tmp_path)
    with RemoteOperations(service.url) as ops, LocalOperations(las.home) as local:
        assert ops.hardware().keys() == local.hardware().keys()
        # (The built-in manifests' paths: this test's own process may import the installed
        # package while the service runs the checkout's, as in CI.)
        assert _named(ops.modules()) == _named(local.modules())
        assert (
            ops.plan(PlanRequestBody(module=str(path))).module
            == local.plan(PlanRequestBody(module=str(path))).module
        )  # not the whole plan: each picks a free port of its own
        same_error(
            lambda: ops.plan(PlanRequestBody(module=str(path), mode="container")),
            lambda: local.plan(PlanRequestBody(module=str(path), mode="container")),
        )

        started = ops.run(RunRequest(module=str(path)))
        assert (started.name, started.state) == ("web", "healthy")
        assert ops.ps() == local.ps()
        assert ops.inspect("web") == local.inspect("web")
        conflict = same_error(
            lambda: ops.run(RunRequest(module=str(path))),
            lambda: local.run(RunRequest(module=str(path))),
        )
        assert isinstance(conflict, errors.InstanceConflict)
        for name in ("?nope", "caf\u00e9", "a b"):  # (a "/": Starlette routes it decoded)
            same_error(lambda n=name: ops.inspect(n), lambda n=name: local.inspect(n))  # type: ignore[misc]
        same_error(lambda: ops.logs("nope"), lambda: local.logs("nope"))
        wait_until(lambda: b"healthy" in b"".join(local.logs("web")), 20, message="log line")
        assert b"".join(ops.logs("web", timestamps=True)) == b"".join(
            local.logs("web", timestamps=True)
        )
        assert list(ops.events()) == list(local.events())
        assert list(ops.events(after=1, tail=2)) == list(local.events(after=1, tail=2))

        stopped = ops.stop("web", 5)
        assert stopped.state == "stopped"
        assert ops.restart("web", 5).state == "healthy"
        ops.stop("web", 5)
        assert ops.remove("web").name == "web"
        assert ops.ps(all_=True) == local.ps(all_=True) == []
        assert ops.warnings == []


def test_a_real_service_over_tcp_takes_the_token_of_its_home(
    las: Las, las_env: dict[str, str]
) -> None:
    svc = start_service(las_env, las.home, "--listen", "127.0.0.1:0")
    try:
        found = wait_until(
            lambda: re.search(r"listening on (http://\S+)", svc.log_text()), 20, message="TCP"
        )
        url = found.group(1)
        with RemoteOperations(url, home=las.home) as ops:
            assert ops.ps() == []
        for token in (None, "wrong"):
            with RemoteOperations(url, token=token) as ops, pytest.raises(errors.UsageError) as e:
                ops.ps()
            assert e.value.exit_code == 2 and "token" in e.value.message
            assert "wrong" not in e.value.message + str(e.value.hint)
    finally:
        svc.stop()


def test_a_followed_stream_resumes_across_a_service_restart(
    las: Las, service: Service, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    from localaistack.ops.local import LocalOperations

    path = healthsrv(module_factory, tmp_path)
    with RemoteOperations(service.url) as ops:
        ops.run(RunRequest(module=str(path), detach=True))
        seen = list(ops.events())
        stream = ops.events(after=seen[-1].id, follow=True)
        service.stop()
        las.ok("stop", "web")  # its events are committed while no service runs
        again = start_service(service.env, las.home)
        try:
            with LocalOperations(las.home) as local:
                want = list(local.events(after=seen[-1].id))
            assert [e.type for e in want][-2:] == ["stopping", "stopped"]
            assert list(itertools.islice(stream, len(want))) == want  # no gap, no duplicate
            stream.close()  # type: ignore[attr-defined]
        finally:
            again.stop()
