"""The CLI both ways: in process (on $LAS_HOME directly) and as a client of `las serve`
(``LAS_HOST``). The lifecycle tests run through each; the views and the errors are
compared byte for byte on one home."""

from __future__ import annotations

import json
import re
import select
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import Las, Result, wait_until, workload

ModuleFactory = Callable[..., Path]


@pytest.fixture(params=["in-process", "through-service"])
def cli(request: pytest.FixtureRequest, las: Las) -> Las:
    """The CLI, in process or as a client of a real `las serve` on the same home."""
    if request.param == "in-process":
        return las
    return request.getfixturevalue("remote_las")  # type: ignore[no-any-return]


def test_lifecycle(cli: Las, module_factory: ModuleFactory) -> None:
    path = module_factory("svc", workload("--lines", "3"), stop={"timeout": "2s"})
    out = cli.ok("run", "-d", str(path)).out
    assert re.fullmatch(r"svc  run [0-9a-f]{12}  running  pid \d+\n", out), out
    first = out.split()[2]
    assert cli.ps()["svc"]["state"] == "running"
    wait_until(lambda: "ready" in cli.ok("logs", "svc").out, message="its lines logged")
    lines = cli.ok("logs", "svc").out.splitlines()
    assert [line[:11] for line in lines] == [f"line {i:06d}" for i in range(3)] + ["ready"]

    stopped = cli.ok("stop", "svc").out
    assert stopped.startswith("svc: stopped (")
    assert cli.inspect("svc")["state"] == "stopped"

    again = cli.ok("start", "-d", "svc").out.split()[2]
    assert again != first
    third = cli.ok("restart", "-d", "svc").out.split()[2]
    assert third not in (first, again)
    assert [r["run_id"] for r in cli.inspect("svc")["runs"]] == [first, again, third]

    assert cli.ok("rm", "-f", "svc").out == "svc\n"
    assert "svc" not in cli.ps()


def test_errors(cli: Las, module_factory: ModuleFactory, tmp_path: Path) -> None:
    missing = cli("inspect", "nope")
    assert missing.code == 4
    assert missing.err.startswith("error: no instance named 'nope'")

    untrusted = tmp_path / "untrusted.yaml"
    untrusted.write_text(
        "name: untrusted\nruntime:\n  modes: [native]\n  native: {command: [/bin/true]}\n"
    )
    refused = cli("run", str(untrusted), "--mode", "native")
    assert refused.code == 3, refused.err
    assert "is not in policy trusted_native" in refused.err

    bad_set = cli("run", str(untrusted), "--set", "novalue")
    assert bad_set.code == 2 and "is not NAME=VALUE" in bad_set.err

    bad_timeout = cli("stop", "nope", "--timeout", "5000")
    assert bad_timeout.code == 2 and "--timeout 5000 is not a number" in bad_timeout.err


def test_logs_follow_until_the_run_ends(cli: Las, module_factory: ModuleFactory) -> None:
    path = module_factory(
        "talker",
        workload("--lines", "50", "--exit-after-lines"),
        restart={"policy": "never"},
    )
    cli.ok("run", "-d", str(path))
    followed = cli.ok("logs", "-f", "talker", timeout=60).out  # returns when the run ends
    assert cli.state("talker") in ("stopped", "failed")
    assert followed == cli.ok("logs", "talker").out
    lines = followed.splitlines()
    assert [line[:11] for line in lines[:-1]] == [f"line {i:06d}" for i in range(50)]
    assert lines[-1].startswith("las: exited")  # las's own note of the end


def test_events_follow(cli: Las, module_factory: ModuleFactory) -> None:
    path = module_factory("quick", workload("--exit", "0"), restart={"policy": "never"})
    proc = cli.popen("events", "-f", "--json")
    try:
        cli.ok("run", "-d", str(path))
        seen: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                seen.append(json.loads(line))
                if any(e["instance"] == "quick" and e["type"] == "stopped" for e in seen):
                    break
        types = [e["type"] for e in seen if e["instance"] == "quick"]
        assert "created" in types and "stopped" in types, seen
        ids = [e["id"] for e in seen]
        assert ids == sorted(set(ids)), "events in order, none twice"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # (closes its pipes)


def test_policy_file_needs_the_service_own(remote_las: Las, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("{}\n")
    res = remote_las("plan", "anything", "--policy", str(policy))
    assert res.code == 2
    assert "own policy" in res.err


def _same(a: Result, b: Result, what: list[str]) -> None:
    def norm(text: str) -> str:
        return re.sub(r"\b\d+[smhd] ago\b", "AGO", text)  # `ps`'s since column moves on

    assert (a.code, norm(a.out), norm(a.err)) == (b.code, norm(b.out), norm(b.err)), what


def test_the_same_output_both_ways(
    las: Las, remote_las: Las, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    """ps, inspect, logs, events, plan, modules and the errors: byte for byte the same
    through the service as in process, on one home."""
    path = module_factory("svc", workload("--lines", "5", "--stderr", "warm"))
    failing = module_factory("bad", workload("--exit", "3"), restart={"policy": "never"})
    las.ok("run", "-d", str(path))
    las("run", str(failing))  # fails: its inspect shows the last lines
    wait_until(lambda: "ready" in las.ok("logs", "svc").out, message="svc's lines")
    untrusted = tmp_path / "untrusted.yaml"
    untrusted.write_text(
        "name: untrusted\nruntime:\n  modes: [native]\n  native: {command: [/bin/true]}\n"
    )
    commands = [
        ["ps"],
        ["ps", "--all"],
        ["ps", "--all", "--json"],
        ["inspect", "svc"],
        ["inspect", "svc", "--json"],
        ["inspect", "bad"],
        ["logs", "svc"],
        ["logs", "svc", "-t"],
        ["logs", "svc", "-n", "2"],
        ["logs", "bad"],
        ["events"],
        ["events", "--json", "-n", "3"],
        ["modules"],
        ["modules", "--json"],
        ["plan", str(failing)],
        ["plan", str(failing), "--json"],
        ["inspect", "nope"],
        ["logs", "nope"],
        ["logs", "svc", "--run", "zzz"],
        ["stop", "nope"],
        ["rm", "svc"],
        ["start", "svc"],
        ["run", str(untrusted), "--mode", "native"],
        ["run", "no-such-module"],
    ]
    for command in commands:
        _same(las(*command), remote_las(*command), command)


def test_an_unreachable_service_is_a_clear_error(las: Las, tmp_path: Path) -> None:
    res = las("--host", f"unix://{tmp_path / 'none.sock'}", "ps")
    assert res.code == 6
    assert res.err.startswith("error: ")
    assert "las serve" in res.err
    bad = las("--host", "ftp://x", "ps")
    assert bad.code == 2
