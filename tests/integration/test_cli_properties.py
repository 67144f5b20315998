"""Property tests over manifest and parameter strings (issue #7): whatever the input,

* las never runs a shell: the workload is the program argv[0] names, its parent is the
  supervisor, and no ``$(...)``/backtick payload ever runs;
* every parameter value stays one argument: the argv the workload receives is the argv
  planned, element for element;
* las writes nothing outside ``$LAS_HOME`` (its working directory and the test's own
  directories stay as they were);
* las never crashes: the exit code is one of the documented ones, with no traceback.

`las validate` and `las plan` run in-process (click's test runner) for speed; `las run`
does too, and its supervisor and workload are real processes. A static test checks that no
code in src/ can start a shell.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tests.conftest import PROGRAMS, REPO, wait_until

from localaistack.cli.app import cli

RECORDER = str(PROGRAMS / "recorder.py")
EXIT_CODES = {0, 1, 2, 3, 4, 5}  # README: invalid files, usage, no plan, execution, store
CANARY = f"las-prop-pwned-{uuid.uuid4().hex[:8]}"  # a shell payload would create this
PAYLOADS = [
    " ",
    ";",
    "; touch /tmp/" + CANARY,
    "$(touch /tmp/" + CANARY + ")",
    "`touch " + CANARY + "`",
    "| touch " + CANARY,
    "&& touch " + CANARY,
    "../",
    "../../etc/passwd",
    "/",
    "\n",
    "\t",
    "'",
    '"',
    "\\",
    "*",
    "~",
    "$HOME",
    "-",
    "--help",
    "%s",
    "é",
    "\x00",
    "${host}",
    "$$",
]
# Literal argv elements in a manifest (no template references of their own).
LITERALS = [p for p in PAYLOADS if "$" not in p and "\x00" not in p] + ["plain"]

fragment = st.sampled_from(PAYLOADS) | st.text(max_size=6)
nasty = st.lists(fragment, max_size=6).map("".join) | st.just("x" * 5000)
# Mostly a valid name (so that planning and running are exercised), sometimes a hostile one.
names = st.one_of(
    st.just("prop"), st.just("prop"), st.sampled_from(PAYLOADS).map(lambda p: "prop" + p), nasty
)


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), prog_name="las")
    assert result.exit_code in EXIT_CODES, (args, result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"las {args} crashed: {result.exception!r}"
    )
    assert "Traceback" not in result.output
    return result


def snapshot(*roots: Path, skip: tuple[Path, ...] = ()) -> set[str]:
    out = set()
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if Path(dirpath, d) not in skip]
            out.update(os.path.join(dirpath, f) for f in [*files, *dirs])
    return out


@pytest.fixture
def sandbox(tmp_path: Path, las_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """In-process las with a working directory of its own and this checkout's code."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PYTHONPATH", las_env["PYTHONPATH"])  # the supervisors it spawns
    return tmp_path


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    params = [f"p{i}" for i in range(draw(st.integers(0, 3)))]
    argv = []
    for _ in range(draw(st.integers(0, 5))):
        if params and draw(st.booleans()):
            p = draw(st.sampled_from(params))
            argv.append(draw(st.sampled_from(["${%s}", "pre${%s}", "--%s=${%s}"])).replace("%s", p))
        else:
            argv.append(draw(st.sampled_from(LITERALS)))
    return {
        "name": draw(names),
        "argv": argv,
        "values": {p: draw(nasty) for p in params},
    }


def write_case(tmp: Path, case: dict[str, Any], record: Path) -> Path:
    manifest = {
        "name": case["name"],
        "version": "1.0.0",
        "category": "service",
        "runtime": {
            "modes": ["native"],
            "native": {"command": [sys.executable, RECORDER, str(record), *case["argv"]]},
            "stop": {"timeout": "2s"},
        },
        "parameters": {p: {"type": "string"} for p in case["values"]},
    }
    path = tmp / "manifests" / f"{uuid.uuid4().hex[:8]}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(manifest))
    home = Path(os.environ["LAS_HOME"])
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "policy.yaml").write_text(yaml.safe_dump({"trusted_native": [case["name"]]}))
    return path


def expected_argv(case: dict[str, Any]) -> list[str]:
    values = case["values"]
    return [re.sub(r"\$\{(p\d)\}", lambda m: values[m.group(1)], a) for a in case["argv"]]


def sets(case: dict[str, Any]) -> list[str]:
    return [a for p, v in case["values"].items() for a in ("--set", f"{p}={v}")]


def no_shell_ran(tmp: Path) -> None:
    assert not Path("/tmp", CANARY).exists()
    assert not list(tmp.rglob(f"*{CANARY}*"))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
def test_validate_and_plan_never_crash_and_keep_each_value_one_argument(
    sandbox: Path, case: dict[str, Any]
) -> None:
    record = sandbox / "records" / "never-written.json"
    path = write_case(sandbox, case, record)
    # las's own hardware-probe cache may appear in its home; nothing else may change.
    skip = (sandbox / "manifests", sandbox / "home" / "cache")
    before = snapshot(sandbox, skip=skip)
    valid = invoke("validate", str(path)).exit_code == 0
    res = invoke("plan", str(path), *sets(case), "--json")
    event(f"validate {'ok' if valid else 'refused'}, plan exit {res.exit_code}")
    if res.exit_code == 0:
        plan = json.loads(res.stdout)
        assert plan["native"]["argv"][3:] == expected_argv(case)
    elif valid and any("\x00" in v for v in case["values"].values()):
        assert res.exit_code == 2 and "NUL" in res.output
    assert snapshot(sandbox, skip=skip) == before
    no_shell_ran(sandbox)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
def test_run_passes_every_value_as_one_argument_without_a_shell(
    sandbox: Path, case: dict[str, Any]
) -> None:
    home = Path(os.environ["LAS_HOME"])
    records = sandbox / "records"
    records.mkdir(exist_ok=True)
    record = records / f"{uuid.uuid4().hex[:8]}.json"
    path = write_case(sandbox, case, record)
    watched = (sandbox, sandbox / "cwd")
    before = snapshot(*watched, skip=(home, records, sandbox / "manifests"))
    instance = f"i{uuid.uuid4().hex[:8]}"
    res = invoke("run", str(path), *sets(case), "--name", instance, "-d")
    event(f"run exit {res.exit_code}")
    if res.exit_code == 0:
        got = wait_until(lambda: record.exists() and json.loads(record.read_text()))
        assert got["argv"] == expected_argv(case)  # no value split or merged
        # The kernel ran the program itself, started by the (Python) supervisor: no shell.
        assert got["exe"] == os.path.realpath(sys.executable)
        assert got["parent_exe"] == os.path.realpath(sys.executable)
        invoke("rm", "-f", "--purge", instance)
    assert snapshot(*watched, skip=(home, records, sandbox / "manifests")) == before
    no_shell_ran(sandbox)


def test_no_code_in_src_can_start_a_shell() -> None:
    pattern = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|os\.exec[lv]p?e?\(|pty\.spawn")
    found = []
    for path in sorted((REPO / "src").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
