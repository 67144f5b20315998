"""Secrets: masking never changes anything but the secret (issue #17, item 3).

Each case runs the same native module twice through the real CLI: once with secret
parameters set to adversarial values (1-3 characters, common words, regex metacharacters,
values that occur elsewhere in the plan), once (the baseline, in a home of its own) with
each secret set to ``***`` itself, which no masking changes. Every output of las -- `plan`
text and --json, `run`, `ps`, `inspect`, `events`, las's notes in `logs`, `restart`, `stop`,
a start failure -- must be byte-identical between the two once what differs between any
two runs is normalised (ids, pids, times, ports, the test's directory): so the secret is
shown as ``***`` exactly where it sits, and nothing else changed. The workload records its
argv and environment: it gets the real values.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import (
    PROGRAMS,
    REPO,
    Las,
    end_home,
    usable_engine,
    wait_until,
    workload,
)

from localaistack.plan import ExecutionPlan

RECORDER = str(PROGRAMS / "recorder.py")
KEYS = ("k0", "k1", "k2", "k3")
# Four secret values a case sets at once (k0..k3; k3 also names the workdir).
CASES = {
    "short": ("e", "1", "in", "las"),
    "words": ("default", "native", "true", "stopped"),
    "regex": (".*", "a|b", "\\d", "*"),
    # the module's (and instance's) name, its port, part of the executable's path, the host
    "elsewhere": ("masq", "8123", "bin", "127.0.0.1"),
}
DEADLINE = 60.0  # generous: the machine is shared


def write_module(root: Path, *, port: bool = True) -> Path:
    """The module (and a policy that trusts it) under ``root``: the same bytes, but for
    ``root``, for the case and its baseline. Without ``port``, nothing in its plan is
    allocated afresh by each `las plan`."""
    home = root / "home"
    home.mkdir(parents=True, mode=0o700, exist_ok=True)
    (home / "policy.yaml").write_text(
        yaml.safe_dump({"trusted_native": ["masq"], "native_allow_root": ["masq"]})
    )
    manifest: dict[str, Any] = {
        "name": "masq",
        "version": "1.0.0",
        "category": "service",
        "parameters": {
            **{k: {"type": "string", "secret": True} for k in KEYS},
            # no secret, and its value a common word (and its source "default")
            "level": {"type": "string", "default": "default"},
        },
        "runtime": {
            "modes": ["native"],
            "ports": [{"name": "http", "port": 8123}] if port else [],
            "stop": {"timeout": "5s"},
            "native": {
                "command": [
                    sys.executable,
                    RECORDER,
                    str(root / "record.json"),
                    "--k0",
                    "${k0}",
                    "--k1=${k1}",
                    "${k0}${k1}",
                    "--level",
                    "${level}",
                    "native",
                    "true",
                    "stopped",
                    "8123",
                    *(["--port", "${ports.http}"] if port else []),
                    "--host",
                    "${host}",
                ],
                "env": {
                    "RECORDER_MODE": "sleep",
                    "PLAIN": "native true default stopped 8123 masq",
                    "PAIR": "${k2}-${k3}",  # secret: it uses a secret parameter
                    "K2": "${k2}",
                },
                "workdir": str(root / "wd-${k3}"),
            },
            "health": {
                # healthy only if the probe gets the real value in argv (as in its env)
                "command": ["/bin/sh", "-c", 'test "$1" = "$K2"', "probe", "${k2}"],
                "interval": "60s",  # one probe: nothing differs between runs by timing
                "start_timeout": "30s",
            },
        },
    }
    path = root / "masq.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def normalise(text: str, root: Path) -> str:
    """What differs between any two runs replaced: the test's directory, ids, digests,
    times, numbers (pids, ports, latencies); runs of blanks (table widths) as one."""
    text = text.replace(str(root), "<ROOT>")
    text = re.sub(r"\b[0-9a-f]{64}\b", "<SHA>", text)
    text = re.sub(r"\b[0-9a-f]{16}\b", "<ID>", text)
    text = re.sub(r"\b[0-9a-f]{12}\b", "<RUN>", text)
    text = re.sub(r"\d+(\.\d+)?[smhd] ago", "<AGO>", text)
    text = re.sub(r"\d+", "0", text)
    return re.sub(r"[ \t]+", " ", text)


def record(root: Path) -> dict[str, Any]:
    path = root / "record.json"
    value = wait_until(
        lambda: path.exists() and json.loads(path.read_text()),
        DEADLINE,
        0.05,
        "the workload's record",
    )
    path.unlink()
    return value  # type: ignore[no-any-return]


def exercise(las: Las, root: Path, values: tuple[str, ...]) -> dict[str, str]:
    """Every output form, through one instance's life: the outputs by name."""
    mod = str(write_module(root))
    sets = [a for k, v in zip(KEYS, values, strict=True) for a in ("--set", f"{k}={v}")]
    (root / f"wd-{values[3]}").mkdir()
    out: dict[str, str] = {}

    def ok(name: str, *args: str) -> Any:
        res = las.ok(*args, timeout=DEADLINE)
        out[name] = res.out + res.err
        return res

    plan = ok("plan --json", "plan", mod, *sets, "--json").json()
    ok("plan", "plan", mod, *sets)
    ok("run", "run", mod, *sets)
    got = record(root)
    # The workload gets the real values, each where its template put it.
    k0, k1, k2, k3 = values
    assert got["argv"][:5] == ["--k0", k0, f"--k1={k1}", k0 + k1, "--level"]
    assert got["argv"][5:10] == ["default", "native", "true", "stopped", "8123"]
    assert got["env"]["PAIR"] == f"{k2}-{k3}" and got["env"]["K2"] == k2
    assert got["env"]["PLAIN"] == "native true default stopped 8123 masq"
    for cmd in (
        ("ps",),
        ("ps", "--all", "--json"),
        ("inspect", "masq"),
        ("inspect", "masq", "--json"),
        ("events",),
        ("events", "--json"),
        ("logs", "masq", "--timestamps"),
    ):
        ok(" ".join(cmd), *cmd)
    # The id is a hash of the shown (stored) plan, the same before and after a restart.
    plan_id = ExecutionPlan.model_validate(las.inspect("masq")["plan"]).plan_id
    assert plan_id != plan["plan_id"]  # `las run` planned its own port
    assert f"Plan {plan_id} " in out["inspect masq"]
    assert las.inspect("masq")["health"] == "healthy"  # the probe got the real value

    ok("restart", "restart", "masq")
    assert record(root)["argv"][:4] == ["--k0", k0, f"--k1={k1}", k0 + k1]
    ok("inspect after restart", "inspect", "masq", "--json")
    assert f"Plan {plan_id} " in las.ok("inspect", "masq").out
    ok("stop", "stop", "masq")
    # A start failure quoting the workdir (composed by las from the shown plan).
    shutil.rmtree(root / f"wd-{k3}")
    res = las("start", "masq", timeout=DEADLINE)
    assert res.code != 0
    out["start failure"] = res.out + res.err
    for cmd in (
        ("inspect", "masq"),
        ("inspect", "masq", "--json"),
        ("events", "--json"),
        ("logs", "masq", "--timestamps"),
        ("ps", "--all"),
    ):
        ok("after failure: " + " ".join(cmd), *cmd)
    ok("rm", "rm", "masq")
    shown = {name: normalise(text, root) for name, text in out.items()}
    return {name: by_source(text) if "logs " in name else text for name, text in shown.items()}


def by_source(log: str) -> str:
    """A log's las notes, then the workload's lines, each in its own order: the two are
    written independently (a probe's result and the workload's output race)."""
    lines = log.splitlines(keepends=True)
    ours = [x for x in lines if " las " in x]
    return "".join(ours) + "--\n" + "".join(x for x in lines if " las " not in x)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The baseline's outputs (each secret set to ``***``), made once for every case, in a
    home of its own (cleaned up like the ``las`` fixture's)."""
    root = tmp_path_factory.mktemp("baseline")
    home = root / "home"
    env = {**os.environ, "LAS_HOME": str(home)}
    env["XDG_STATE_HOME"], env["XDG_CONFIG_HOME"] = str(root / "xdg-s"), str(root / "xdg-c")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    runner = Las(home, env)
    try:
        yield exercise(runner, root, ("***",) * 4)
    finally:
        end_home(runner)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_output_is_the_baseline_but_for_the_secret(
    case: str, las: Las, baseline: dict[str, str], tmp_path: Path
) -> None:
    shown = exercise(las, tmp_path, CASES[case])
    assert shown.keys() == baseline.keys()
    for name, expected in baseline.items():
        assert shown[name] == expected, f"`las {name}` differs from the baseline"
    # The baseline shows *** where the secrets sit (normalised: k1 reads k0, $1 reads $0).
    assert '"--k0",\n "***",\n "--k0=***",\n "******"' in baseline["plan --json"]
    assert "--k0 '***' '--k0=***' '******' --level default native" in baseline["plan"]
    assert "'K0=***' 'PAIR=***' 'PLAIN=native true default stopped 0 masq'" in baseline["plan"]
    assert "health command: /bin/sh -c 'test \"$0\" = \"$K0\"' probe '***'" in baseline["plan"]
    assert "workdir <ROOT>/wd-***: No such file or directory" in baseline["start failure"]


def test_the_plan_id_does_not_depend_on_the_secret(las: Las, tmp_path: Path) -> None:
    mod = str(write_module(tmp_path, port=False))
    ids = set()
    for values in CASES.values():
        sets = [a for k, v in zip(KEYS, values, strict=True) for a in ("--set", f"{k}={v}")]
        (tmp_path / f"wd-{values[3]}").mkdir()
        ids.add(las.ok("plan", mod, *sets, "--json").json()["plan_id"])
        text = las.ok("plan", mod, *sets).out
        ids.add(text.split()[1])  # "Plan ID for ..."
    assert len(ids) == 1


def test_a_quoted_line_is_masked_and_nothing_else(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    # The failure reason quotes the workload's last line: only that part is masked by value.
    mod = module_factory(
        "quoting",
        workload("--exit", "3"),
        env={"WL_KEY": "${key}"},
        parameters={"key": {"type": "string", "secret": True}},
    )
    res = las("run", str(mod), "--set", "key=e", timeout=DEADLINE)  # failed, or running
    wait_until(lambda: las.state("quoting") == "failed", DEADLINE, 0.1, "failed")
    reason = las.inspect("quoting")["reason"]
    assert reason == "exited with code 3; last output: ***xiting with 3"
    if res.code != 0:  # it failed before `las run` returned: the error quotes the reason
        assert f" failed: {reason}\n" in res.err
    lines = las.ok("events", "--json").out.splitlines()  # one JSON object a line
    events = [e for e in map(json.loads, lines) if e["instance"] == "quoting"]
    assert [e["message"] for e in events if e["type"] == "failed"] == [reason]
    notes = [x for x in las.ok("logs", "quoting", "--timestamps").out.splitlines() if " las " in x]
    assert notes and notes[-1].endswith(" las las: " + reason)


# --- plans stored before: masked by substitution -----------------------------------------

OLD_SECTIONS = ("native", "container", "health", "parameters", "decisions")


def old_split(plan: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What las stored before issue #17: every occurrence of a secret value replaced in
    whole strings, the originals listed by path (no ``format`` key)."""
    found = {p["value"] for p in plan["parameters"] if p.get("secret") and p.get("value")}
    found |= {v["value"] for v in plan["native"]["env"] if v.get("secret")}
    values = sorted((v for v in found if v and v != "***"), key=lambda v: (-len(v), v))
    fields: list[list[Any]] = []

    def walk(obj: Any, path: list[Any]) -> Any:
        if isinstance(obj, str):
            text = obj
            for v in values:
                text = text.replace(v, "***")
            if text != obj:
                fields.append([path, obj])
            return text
        if isinstance(obj, list):
            return [walk(x, [*path, i]) for i, x in enumerate(obj)]
        if isinstance(obj, dict):
            return {k: walk(v, [*path, k]) for k, v in obj.items()}
        return obj

    stored = {k: walk(v, [k]) if k in OLD_SECTIONS else v for k, v in plan.items()}
    return stored, {"values": values, "fields": fields}


@pytest.mark.parametrize("secret", ["sk-9f8e7d6c5b4a", "e", "default"])
def test_a_plan_stored_in_the_old_format_loads_and_runs(
    secret: str, las: Las, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    rec = tmp_path / "record.json"
    mod = module_factory(
        "old",
        [sys.executable, RECORDER, str(rec), "--key", "${key}", "--level", "${level}"],
        env={"RECORDER_MODE": "sleep", "API_KEY": "${key}"},
        parameters={
            "key": {"type": "string", "secret": True},
            "level": {"type": "string", "default": "default"},
        },
        stop={"timeout": "5s"},
    )
    las.ok("run", str(mod), "--set", f"key={secret}")
    wait_until(rec.exists, DEADLINE, 0.05, "record")
    las.ok("stop", "old")
    # Rewrite the instance as the previous version stored it: its plan masked by
    # substitution, its secrets file without a format.
    secrets_file = las.home / "secrets" / "old.json"
    new = json.loads(secrets_file.read_text())
    assert new["format"] == 2
    db = sqlite3.connect(las.home / "state.db")
    with db:
        (text,) = db.execute("SELECT plan FROM instances WHERE name='old'").fetchone()
        real = json.loads(text)
        for path, value in new["fields"]:
            target = real
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        stored, hidden = old_split(real)
        db.execute("UPDATE instances SET plan=? WHERE name='old'", (json.dumps(stored),))
    db.close()
    secrets_file.write_text(json.dumps(hidden))
    rec.unlink()

    info = las.inspect("old")  # loads (a 1-letter secret had made "source": "s***t")
    params = {p["name"]: p for p in info["plan"]["parameters"]}
    assert params["key"]["value"] == "***" and params["key"]["source"] == "set"
    assert params["level"] == {
        "name": "level",
        "value": "default",
        "source": "default",
        "secret": False,
    }
    assert info["plan"]["native"]["argv"][-3] == "***"
    las.ok("inspect", "old")
    las.ok("start", "old")
    got = wait_until(lambda: rec.exists() and json.loads(rec.read_text()), DEADLINE, 0.05, "rec")
    assert got["argv"] == ["--key", secret, "--level", "default"]
    assert got["env"]["API_KEY"] == secret
    rec.unlink()
    las.ok("restart", "old")
    got = wait_until(lambda: rec.exists() and json.loads(rec.read_text()), DEADLINE, 0.05, "rec")
    assert got["argv"] == ["--key", secret, "--level", "default"]
    assert las.state("old") == "running"
    if secret.startswith("sk-"):  # a secret that is no word: nothing shows it
        for args in (("inspect", "old"), ("inspect", "old", "--json"), ("events",), ("ps",)):
            assert secret not in las.ok(*args).out
    las.ok("rm", "-f", "old")


# --- a container plan: argv, env and volumes -----------------------------------------------


@pytest.mark.podman
@pytest.mark.parametrize("secret", ["e", "default", "a|b"])
def test_a_container_plan_masks_where_the_secret_sits(
    secret: str, las: Las, las_env: dict[str, str], tmp_path: Path
) -> None:
    engine = usable_engine("podman")
    home = las.home
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "policy.yaml").write_text(yaml.safe_dump({"container_engine": engine.name}))
    (tmp_path / f"data-{secret}").mkdir()
    manifest = {
        "name": "cmasq",
        "parameters": {
            "key": {"type": "string", "secret": True},
            "level": {"type": "string", "default": "default"},
        },
        "runtime": {
            "modes": ["container"],
            "container": {
                "image": "localhost/las-busybox:latest",
                "command": ["sh", "-c", "exec sleep 1000", "--key=${key}", "${level}", "e"],
                "env": {"KEY": "${key}", "PLAIN": "default e"},
                "volumes": [{"source": str(tmp_path / "data-${key}"), "target": "/data"}],
            },
        },
    }
    mod = tmp_path / "cmasq.yaml"
    mod.write_text(yaml.safe_dump(manifest))
    plan = las.ok("plan", str(mod), "--set", f"key={secret}", "--json").json()
    c = plan["container"]
    assert c["argv"] == ["sh", "-c", "exec sleep 1000", "--key=***", "default", "e"]
    assert {v["name"]: v["value"] for v in c["env"]} == {"KEY": "***", "PLAIN": "default e"}
    assert c["volumes"][0]["source"] == f"{tmp_path}/data-***"
    assert c["image"] == "localhost/las-busybox:latest"
    params = {p["name"]: p for p in plan["parameters"]}
    assert params["level"]["value"] == "default" and params["key"]["value"] == "***"
    text = las.ok("plan", str(mod), "--set", f"key={secret}").out
    assert f"volume   {tmp_path}/data-*** -> /data (read-only)" in text
    assert "argv     sh -c 'exec sleep 1000' '--key=***' default e" in text
    assert "env      'KEY=***' 'PLAIN=default e'" in text


# --- the masking functions themselves ------------------------------------------------------


def test_masking_touches_only_where_secrets_sit() -> None:
    from localaistack.masking import masked
    from localaistack.store import secrets

    plan: dict[str, Any] = {
        "module": {"name": "e", "source": "/e/e.yaml"},
        "parameters": [
            {"name": "k", "value": "e", "source": "set", "secret": True},
            {"name": "level", "value": "e", "source": "default", "secret": False},
            {"name": "unset", "value": None, "source": "unset", "secret": True},
        ],
        "native": {
            "argv": ["/usr/bin/e", "--k=e", "e"],
            "env": [
                {"name": "K", "value": "e", "secret": True},
                {"name": "P", "value": "e e", "secret": False},
                {"name": "EMPTY_KEY", "value": "", "secret": True},
            ],
            "workdir": "/e",
        },
        "health": {"kind": "command", "command": ["/bin/e", "e"]},
        "decisions": [{"topic": "mode", "choice": "native", "reason": "because e"}],
        "shown": [{"path": "native.argv.1", "text": "--k=***"}],
    }
    before = json.dumps(plan)
    shown = masked(plan)
    assert json.dumps(plan) == before  # the caller's data is never changed
    expected = json.loads(before)
    del expected["shown"]
    expected["parameters"][0]["value"] = "***"
    expected["native"]["argv"][1] = "--k=***"
    expected["native"]["env"][0]["value"] = "***"
    assert shown == expected
    stored, hidden = secrets.split(plan)
    assert stored == expected and hidden is not None and hidden["format"] == 2
    real = json.loads(before)
    del real["shown"]
    assert secrets.reveal(stored, hidden) == real
    assert secrets.repaired(stored, hidden) is stored  # format 2: nothing to repair
    # A shown entry is only applied where a secret parameter can be substituted.
    for path in ("module.name", "parameters.1.source", "native.argv.9", "decisions.0.reason"):
        with pytest.raises(ValueError):
            masked({**plan, "shown": [{"path": path, "text": "***"}]})


def test_old_format_repair_restores_only_where_no_secret_can_sit() -> None:
    from localaistack.store import secrets

    real: dict[str, Any] = {
        "parameters": [
            {"name": "k", "value": "default", "source": "set", "secret": True},
            {"name": "level", "value": "default", "source": "default", "secret": False},
        ],
        "native": {"argv": ["/x", "--k=default"], "env": [], "workdir": None},
        "decisions": [
            {"topic": "parameters", "choice": "k=***, level=default", "reason": "r"},
            {"topic": "executable", "choice": "/opt/default/x", "reason": "given as a path"},
        ],
    }
    stored, hidden = old_split(real)
    assert stored["parameters"][1]["source"] == "***"  # what made it unloadable
    fixed = secrets.repaired(stored, hidden)
    assert fixed["parameters"][1] == real["parameters"][1]
    assert fixed["parameters"][0]["value"] == "***" and fixed["parameters"][0]["source"] == "set"
    assert fixed["native"]["argv"] == ["/x", "--k=***"]  # where a secret can sit: kept
    assert fixed["decisions"][0] == real["decisions"][0]
    assert fixed["decisions"][1]["choice"] == "/opt/***/x"  # it may quote a secret: kept
    assert secrets.reveal(fixed, hidden) == real


@pytest.mark.parametrize("secret", ["e", "default", ".*"])
def test_a_planning_error_shows_the_path_as_shown(
    secret: str, las: Las, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    params = {"key": {"type": "string", "secret": True}}
    mod = module_factory("perr", workload(), workdir=str(tmp_path / "wd-${key}"), parameters=params)
    res = las("plan", str(mod), "--set", f"key={secret}")
    assert res.code != 0
    assert res.err.startswith(
        f"error: workdir {tmp_path}/wd-*** does not exist or is not a directory\n"
    ), res.err
    tool = tmp_path / f"tool-{secret}"
    mod = module_factory("perr2", [str(tmp_path / "tool-${key}")], parameters=params)
    res = las("plan", str(mod), "--set", f"key={secret}")
    assert res.code != 0
    assert res.err.startswith(f"error: executable {tmp_path}/tool-*** does not exist\n"), res.err
    # Found, it is shown resolved with the secret masked, and the workload runs it.
    tool.write_text(f"#!/bin/sh\nexec {sys.executable} {PROGRAMS / 'workload.py'}\n")
    tool.chmod(0o755)
    plan = las.ok("plan", str(mod), "--set", f"key={secret}", "--json").json()
    assert plan["native"]["argv"] == [f"{tmp_path}/tool-***"]
    executable = next(d for d in plan["decisions"] if d["topic"] == "executable")
    assert executable["choice"] == f"{tmp_path}/tool-***"
