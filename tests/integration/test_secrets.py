"""Secrets never show: a secret parameter and ``*_TOKEN`` env values are grepped for in every
output of las and every file it writes under ``$LAS_HOME`` (issue #7).

The workload gets the real values (it records them to a file outside ``$LAS_HOME``); las
shows ``***`` everywhere, and keeps the values only in the instance's 0600 secrets file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import PROGRAMS, TEST_IMAGE, Las, Result, usable_engine, wait_until

from localaistack.runtime.engines import Engine

RECORDER = str(PROGRAMS / "recorder.py")


def secret_values() -> dict[str, str]:
    tag = uuid.uuid4().hex
    return {
        "api_key": f"apikey-{tag}",  # declared secret: true
        "access_token": f"access-{tag}",  # secret by its name (*_TOKEN)
        "static": f"static-{tag}",  # a manifest literal in an env var named *_TOKEN
    }


class Seen:
    """Every output las gave, checked for the secrets as it comes."""

    def __init__(self, las: Las, secrets: dict[str, str]) -> None:
        self.las = las
        self.secrets = secrets
        self.outputs = 0

    def __call__(self, *args: str, ok: bool = True) -> Result:
        res = self.las.ok(*args) if ok else self.las(*args)
        self.outputs += 1
        for what, value in self.secrets.items():
            assert value not in res.out + res.err, f"{what} shown by `las {' '.join(args)}`"
        return res

    def everything(self, name: str, *, logs: bool = True) -> None:
        """Every read-only command, human and --json (``las logs`` unless ``logs`` is False)."""
        for args in (
            ("ps",),
            ("ps", "--all"),
            ("ps", "--all", "--json"),
            ("inspect", name),
            ("inspect", name, "--json"),
            ("logs", name),
            ("logs", name, "--timestamps"),
            ("events",),
            ("events", "--json"),
        ):
            if logs or args[0] != "logs":
                self(*args)


def grep_home(home: Path, secrets: dict[str, str]) -> int:
    """Assert no file under LAS_HOME holds a secret (except the 0600 secrets store)."""
    checked = 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for root, _dirs, files in os.walk(home):
        for f in files:
            path = Path(root, f)
            if path.parent == home / "secrets":
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
                continue
            if not path.is_file():
                continue
            data = path.read_bytes()
            checked += 1
            for what, value in secrets.items():
                assert value.encode() not in data, f"{what} found in {path}"
    return checked


def sets(secrets: dict[str, str]) -> list[str]:
    return [
        "--set",
        f"api_key={secrets['api_key']}",
        "--set",
        f"access_token={secrets['access_token']}",
    ]


PARAMS = {
    "api_key": {"type": "string", "secret": True, "description": "a key"},
    "access_token": {"type": "string", "description": "secret by its name"},
}


def test_native_secrets_reach_the_workload_and_nothing_else(
    las: Las, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    s = secret_values()
    rec = tmp_path / "record.json"
    mod = module_factory(
        "sec",
        [sys.executable, RECORDER, str(rec), "--api-key", "${api_key}", "--tok=${access_token}"],
        env={
            "ACCESS_TOKEN": "${access_token}",
            "SERVICE_TOKEN": s["static"],
            "PLAIN": "visible",
            "RECORDER_MODE": "sleep",
        },
        parameters=PARAMS,
        stop={"timeout": "3s"},
    )
    seen = Seen(las, s)
    plan = seen("plan", str(mod), *sets(s), "--json").json()
    assert plan["native"]["argv"][-3:] == ["--api-key", "***", "--tok=***"]
    env = {v["name"]: v for v in plan["native"]["env"]}
    assert env["ACCESS_TOKEN"]["value"] == env["SERVICE_TOKEN"]["value"] == "***"
    assert env["PLAIN"]["value"] == "visible"
    seen("plan", str(mod), *sets(s))

    seen("run", str(mod), *sets(s), "--name", "sec")
    record = wait_until(lambda: rec.exists() and json.loads(rec.read_text()), message="record")
    # The workload got the real values, each as one argument.
    assert record["argv"] == ["--api-key", s["api_key"], f"--tok={s['access_token']}"]
    assert record["env"]["ACCESS_TOKEN"] == s["access_token"]
    assert record["env"]["SERVICE_TOKEN"] == s["static"]
    secrets_file = las.home / "secrets" / "sec.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secrets_file.parent.stat().st_mode) == 0o700

    seen.everything("sec")
    assert seen("inspect", "sec", "--json").json()["plan"]["native"]["argv"][-1] == "--tok=***"
    # The plan id is a hash of the masked plan: `las plan` and `las inspect` agree, and it
    # does not depend on the secret values (so it tells nothing about them).
    assert f"Plan {plan['plan_id']} " in seen("inspect", "sec").out
    other = secret_values()
    assert (
        Seen(las, other)("plan", str(mod), *sets(other), "--json").json()["plan_id"]
        == (plan["plan_id"])
    )
    seen("restart", "sec")  # a new run reads the secrets again
    wait_until(lambda: las.state("sec") == "running", message="running again")
    seen("stop", "sec")
    seen.everything("sec")
    assert grep_home(las.home, s) >= 4  # state.db (+ WAL), the run logs, supervisor logs

    seen("rm", "sec")
    assert not secrets_file.exists()  # forgotten with the instance
    seen("events", "--json")
    grep_home(las.home, s)


def test_a_failure_reason_quoting_the_workload_masks_the_secret(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    # This workload prints its secret in an error line: its own log has it (its business),
    # but the reason las records and shows from that line does not.
    s = secret_values()
    code = "import sys; print('ERROR: bad key ' + sys.argv[1], file=sys.stderr); sys.exit(3)"
    mod = module_factory("leaky", [sys.executable, "-c", code, "${api_key}"], parameters=PARAMS)
    seen = Seen(las, s)
    seen("run", str(mod), *sets(s), "--name", "leaky", ok=False)  # running, or failed at once
    wait_until(lambda: las.state("leaky") == "failed", message="failed")
    seen.everything("leaky", logs=False)
    assert "bad key ***" in seen("inspect", "leaky", "--json").json()["reason"]
    assert any("bad key ***" in x for x in las.inspect("leaky")["last_log_lines"])
    assert s["api_key"] in las.ok("logs", "leaky").out  # las logs shows the workload's output
    for path in (las.home / "runs").rglob("*"):
        if path.is_file():
            assert s["api_key"].encode() not in path.read_bytes(), path
    db = b"".join(p.read_bytes() for p in las.home.glob("state.db*"))
    assert s["api_key"].encode() not in db


def test_a_secret_is_not_quoted_by_a_usage_error(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    s = secret_values()
    mod = module_factory(
        "typed",
        [sys.executable, RECORDER, "/dev/null"],
        parameters={"pin_code": {"type": "int", "secret": True}},
    )
    res = Seen(las, s)("plan", str(mod), "--set", f"pin_code={s['api_key']}", ok=False)
    assert res.code == 2 and "must be int; got ***" in res.err


# --- a container engine --------------------------------------------------------------------


@pytest.fixture(params=[pytest.param("podman", marks=pytest.mark.podman)])
def engine(request: pytest.FixtureRequest, las_env: dict[str, str]) -> Iterator[Engine]:
    yield usable_engine(request.param)


def test_container_secrets_reach_the_workload_and_nothing_else(
    las: Las, engine: Engine, tmp_path: Path
) -> None:
    from localaistack.store.db import home_label

    s = secret_values()
    home = las.home
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "policy.yaml").write_text(yaml.safe_dump({"container_engine": engine.name}))
    # The literal token is checked by its digest: written into argv as it is, it would be
    # shown there (a literal, not a substituted secret parameter: masking is structural).
    script = (
        'test "$ACCESS_TOKEN" = "$1" && '
        'test "$(printf %s "$SERVICE_TOKEN" | sha256sum | cut -d" " -f1)" = "$2" && '
        "echo env-ok; exec sleep 1000"
    )
    digest = hashlib.sha256(s["static"].encode()).hexdigest()
    manifest: dict[str, Any] = {
        "name": "csec",
        "parameters": PARAMS,
        "runtime": {
            "modes": ["container"],
            "stop": {"timeout": "3s"},
            "container": {
                "image": TEST_IMAGE,
                "command": ["sh", "-c", script, "sh", "${access_token}", digest],
                "env": {"ACCESS_TOKEN": "${access_token}", "SERVICE_TOKEN": s["static"]},
            },
        },
    }
    mod = tmp_path / "csec.yaml"
    mod.write_text(yaml.safe_dump(manifest))
    seen = Seen(las, s)
    try:
        seen("plan", str(mod), *sets(s), "--json")
        seen("run", str(mod), *sets(s), "--name", "csec")
        wait_until(lambda: "env-ok" in las.ok("logs", "csec").out, message="env checked")
        seen.everything("csec")
        seen("stop", "csec")
        seen.everything("csec")
        grep_home(home, s)
        seen("rm", "csec")
        assert not (home / "secrets" / "csec.json").exists()
    finally:
        for st in engine.list_labelled("las.home", home_label(home / "state.db")):
            engine.remove(st.id)
