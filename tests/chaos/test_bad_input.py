"""Bad input is bounded in time and memory, and never a traceback (issue #17, item 2).

Every case runs the real ``las`` as a child process and measures that child alone
(``os.wait4``): its CPU time (user + system, which a loaded machine does not inflate the way
it does wall time) must stay under 2 s and its peak RSS under 200 MB. An address-space
rlimit of 1 GiB is a backstop, so that a regression (an alias bomb expanded again) fails the
test instead of taking the machine's memory; a watchdog kills a child that runs past 60 s.
Each case asserts the exit code, one clear message naming the file with a hint, and no
traceback.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tests.conftest import Las, wait_until

CPU_LIMIT_S = 2.0
RSS_LIMIT_KB = 200 * 1024
BACKSTOP_AS = 1 << 30  # bytes of address space: a regression fails rather than swaps
WATCHDOG_S = 60.0
PROFILES = Path(__file__).resolve().parent.parent / "data" / "profiles"
CPU_PROFILE = PROFILES / "cpu-only.json"


@dataclass
class Child:
    code: int
    out: str
    err: str
    cpu: float  # seconds, user + system, of the child and what it waited for
    rss_kb: int  # its peak resident set

    def errors(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error: ")]


def run_bounded(env: dict[str, str], *args: str, cwd: Path | None = None) -> Child:
    """``las ARGS`` as a child, measured by wait4 (its own rusage, not the test's)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "localaistack", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=out_w,
        stderr=err_w,
    )
    # The backstop, set at once (not in preexec_fn: unsafe with the test's threads); las
    # reads no input in the few ms before.
    resource.prlimit(proc.pid, resource.RLIMIT_AS, (BACKSTOP_AS, BACKSTOP_AS))
    os.close(out_w)
    os.close(err_w)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

    def drain(fd: int) -> None:
        while data := os.read(fd, 65536):
            chunks[fd].append(data)

    readers = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in chunks]
    for t in readers:
        t.start()
    watchdog = threading.Timer(WATCHDOG_S, lambda: os.kill(proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        _pid, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join(10)
    for fd in chunks:
        os.close(fd)
    return Child(
        code=proc.returncode,
        out=b"".join(chunks[out_r]).decode(errors="replace"),
        err=b"".join(chunks[err_r]).decode(errors="replace"),
        cpu=usage.ru_utime + usage.ru_stime,
        rss_kb=usage.ru_maxrss,
    )


def assert_refused(child: Child, named: str, code: int = 1) -> None:
    """Non-zero exit, a message naming the file (and a hint), no traceback, within bounds."""
    assert "Traceback" not in child.err, child.err
    assert child.code == code, f"exit {child.code}:\n{child.err}"
    errors = child.errors()
    assert errors, child.err
    assert named in errors[0], f"{named!r} not in {errors[0]!r}"
    assert any(line.startswith("hint: ") for line in child.err.splitlines()), child.err
    assert len(child.err) < 20_000, "one clear message, not pages"
    assert child.cpu < CPU_LIMIT_S, f"{child.cpu:.2f}s of CPU"
    assert child.rss_kb < RSS_LIMIT_KB, f"peak RSS {child.rss_kb} KiB"


# --- the bad documents ---------------------------------------------------------------------

VALID = "name: victim\nruntime:\n  modes: [native]\n  native: {command: [/bin/sleep, '30']}\n"


def laughs_lists() -> str:
    """The billion laughs: nine levels of nine-fold list aliases (9**9 strings)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return VALID + "\n".join(lines) + "\n"


def laughs_merge() -> str:
    """A wide one: a large anchored mapping merged (<<) and repeated under many keys."""
    big = "{" + ", ".join(f"k{i}: v" for i in range(3000)) + "}"
    body = [f"base: &base {big}"]
    body += [f"copy{i}: {{<<: *base, extra: {i}}}" for i in range(200)]
    return VALID + "\n".join(body) + "\n"


def recursive_alias() -> str:
    return VALID + "loop: &loop [1, *loop]\n"


def deep_flow() -> str:
    return VALID + "deep: " + "[" * 5000 + "]" * 5000 + "\n"


def deep_block() -> str:
    """Nested block mappings, two spaces per level: 200 levels."""
    return VALID + "deep:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200)) + "\n"


def deep_block_seq() -> str:
    return VALID + "deep:\n" + "".join("  " * (i + 1) + "-\n" for i in range(200))


RAW: dict[str, Callable[[], bytes]] = {
    "random-bytes": lambda: random.Random(17).randbytes(4096),
    "nul-in-text": lambda: VALID.encode().replace(b"victim", b"vic\x00tim"),
    "latin-1": lambda: (VALID + "description: caf\xe9\n").encode("latin-1"),
    "utf-16-bom": lambda: VALID.encode("utf-16"),
    "utf-32-bom": lambda: VALID.encode("utf-32"),
    "escape-char": lambda: VALID.encode() + b"description: \x1b[31mred\n",
    "nul-only": lambda: b"\x00" * 1000,
}

STRUCTURE: dict[str, Callable[[], str]] = {
    "laughs-lists": laughs_lists,
    "laughs-merge": laughs_merge,
    "recursive-alias": recursive_alias,
    "deep-flow": deep_flow,
    "deep-block-map": deep_block,
    "deep-block-seq": deep_block_seq,
}
EXPECT = {
    "laughs-lists": "more than 20000 values",
    "laughs-merge": "more than 20000 values",
    "recursive-alias": "recursive",
    "deep-flow": "nested more than 64 levels",
    "deep-block-map": "nested more than 64 levels",
    "deep-block-seq": "nested more than 64 levels",
    "random-bytes": "not UTF-8",
    "nul-in-text": "NUL",
    "latin-1": "not UTF-8",
    "utf-16-bom": "UTF-16",
    "utf-32-bom": "UTF-32",
    "escape-char": "control character",
    "nul-only": "NUL",
}


def write_bad(tmp_path: Path, kind: str, suffix: str = ".yaml") -> Path:
    path = tmp_path / f"bad-{kind}{suffix}"
    if kind in RAW:
        path.write_bytes(RAW[kind]())
    else:
        path.write_text(STRUCTURE[kind]())
    return path


def policy_of(text: str) -> str:
    """A bad document as a policy: the same trap under a key a policy has."""
    return text.replace(VALID, "allowed_modes: [native, container]\n")


ALL_KINDS = sorted([*STRUCTURE, *RAW])


# --- manifests -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_validate_refuses_bad_manifest_bytes(
    las_env: dict[str, str], tmp_path: Path, kind: str
) -> None:
    path = write_bad(tmp_path, kind)
    child = run_bounded(las_env, "validate", str(path))
    assert_refused(child, str(path))
    assert EXPECT[kind] in child.err, child.err
    assert "1 of 1 manifest(s) invalid" in child.err


@pytest.mark.parametrize("kind", ["laughs-lists", "deep-flow", "random-bytes", "utf-16-bom"])
def test_plan_and_run_refuse_bad_manifest_bytes(
    las: Las, las_env: dict[str, str], tmp_path: Path, kind: str
) -> None:
    path = write_bad(tmp_path, kind)
    plan = run_bounded(las_env, "plan", str(path), "--hardware", str(CPU_PROFILE))
    assert_refused(plan, str(path))
    run = run_bounded(las_env, "run", "-d", str(path))
    assert_refused(run, str(path))
    ps = run_bounded(las_env, "ps", "--all", "--json")
    assert ps.code == 0, ps.err
    assert json.loads(ps.out) == [], "nothing half-started"


def test_bad_user_catalog_manifest_is_bounded(las_env: dict[str, str]) -> None:
    """$LAS_HOME/modules: a bomb there is listed as invalid, and refused by name."""
    modules = Path(las_env["LAS_HOME"]) / "modules"
    modules.mkdir(parents=True)
    (modules / "bomb.yaml").write_text(laughs_lists().replace("victim", "bomb"))
    (modules / "deep.yaml").write_text(deep_flow().replace("victim", "deep"))
    listed = run_bounded(las_env, "modules", "--json")
    assert listed.code == 0 and "Traceback" not in listed.err, listed.err
    assert listed.cpu < CPU_LIMIT_S and listed.rss_kb < RSS_LIMIT_KB
    errors = {m["name"]: m.get("error", "") for m in json.loads(listed.out)}
    assert "more than 20000 values" in errors["bomb"]
    assert "nested more than 64 levels" in errors["deep"]
    for name in ("bomb", "deep"):
        child = run_bounded(las_env, "plan", name, "--hardware", str(CPU_PROFILE))
        assert_refused(child, str(modules / f"{name}.yaml"))


@pytest.mark.parametrize("size", ["just-over", "50MB-sparse", "dev-zero"])
def test_oversize_manifest_is_refused_before_reading(
    las_env: dict[str, str], tmp_path: Path, size: str
) -> None:
    if size == "dev-zero":
        path = Path("/dev/zero")
    else:
        path = tmp_path / f"{size}.yaml"
        if size == "just-over":  # valid YAML, one byte past 1 MiB
            path.write_text(VALID + "#" * ((1 << 20) - len(VALID)) + "\n")
        else:
            with path.open("wb") as f:
                f.write(VALID.encode())
                f.truncate(50 * 1000 * 1000)  # 50 MB on disk (sparse): it is never read
    child = run_bounded(las_env, "validate", str(path))
    assert_refused(child, str(path))
    assert "larger than the limit of 1.0 MiB" in child.err
    plan = run_bounded(las_env, "plan", str(path), "--hardware", str(CPU_PROFILE))
    assert_refused(plan, str(path))


def test_a_manifest_of_exactly_the_limit_is_read(las_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "at-limit.yaml"
    path.write_text(VALID + "#" * ((1 << 20) - len(VALID) - 1) + "\n")
    assert path.stat().st_size == 1 << 20
    child = run_bounded(las_env, "validate", str(path))
    assert child.code == 0, child.err
    assert child.cpu < CPU_LIMIT_S and child.rss_kb < RSS_LIMIT_KB


# --- policies ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_plan_refuses_bad_policy_bytes(las_env: dict[str, str], tmp_path: Path, kind: str) -> None:
    manifest = tmp_path / "victim.yaml"
    manifest.write_text(VALID)
    policy = tmp_path / f"policy-{kind}.yaml"
    if kind in RAW:
        policy.write_bytes(RAW[kind]().replace(VALID.encode(), b"allowed_modes: [native]\n"))
    else:
        policy.write_text(policy_of(STRUCTURE[kind]()))
    child = run_bounded(
        las_env, "plan", str(manifest), "--policy", str(policy), "--hardware", str(CPU_PROFILE)
    )
    assert_refused(child, str(policy))
    assert EXPECT[kind] in child.err, child.err


@pytest.mark.parametrize("kind", ["laughs-merge", "deep-block-map", "latin-1", "nul-only"])
def test_run_refuses_bad_home_policy(
    las: Las, las_env: dict[str, str], tmp_path: Path, kind: str
) -> None:
    manifest = tmp_path / "victim.yaml"
    manifest.write_text(VALID)
    home = Path(las_env["LAS_HOME"])
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    bad = write_bad(tmp_path, kind)
    (home / "policy.yaml").write_bytes(bad.read_bytes())
    child = run_bounded(las_env, "run", "-d", str(manifest))
    assert_refused(child, str(home / "policy.yaml"))
    ps = run_bounded(las_env, "ps", "--all", "--json")
    assert json.loads(ps.out) == [], "nothing half-started"


@pytest.mark.parametrize("size", ["just-over", "dev-zero"])
def test_oversize_policy(las_env: dict[str, str], tmp_path: Path, size: str) -> None:
    manifest = tmp_path / "victim.yaml"
    manifest.write_text(VALID)
    policy = Path("/dev/zero") if size == "dev-zero" else tmp_path / "big-policy.yaml"
    if size == "just-over":
        policy.write_text("allowed_modes: [native]\n" + "#" * (1 << 20) + "\n")
    child = run_bounded(las_env, "plan", str(manifest), "--policy", str(policy))
    assert_refused(child, str(policy))
    assert "larger than the limit" in child.err


# --- hardware profiles (--hardware FILE) -----------------------------------------------------


HW_BAD: dict[str, Callable[[], bytes]] = {
    "deep-json": lambda: b"[" * 100_000 + b"]" * 100_000,
    "deep-object": lambda: b'{"a":' * 500 + b"1" + b"}" * 500,
    "wide": lambda: json.dumps({"schema_version": 1, "x": [0] * 100_000}).encode(),
    "huge-int": lambda: b'{"schema_version": ' + b"9" * 100_000 + b"}",
    "random-bytes": RAW["random-bytes"],
    "utf-16": lambda: CPU_PROFILE.read_text().encode("utf-16"),
    "nul": lambda: CPU_PROFILE.read_bytes().replace(b"{", b"{\x00", 1),
    "oversize": lambda: b" " * (1 << 20) + CPU_PROFILE.read_bytes(),
}


@pytest.mark.parametrize("kind", sorted(HW_BAD))
def test_plan_refuses_bad_hardware_profile(
    las_env: dict[str, str], tmp_path: Path, kind: str
) -> None:
    manifest = tmp_path / "victim.yaml"
    manifest.write_text(VALID)
    profile = tmp_path / f"hw-{kind}.json"
    profile.write_bytes(HW_BAD[kind]())
    child = run_bounded(las_env, "plan", str(manifest), "--hardware", str(profile))
    assert_refused(child, str(profile))


# --- fields a process cannot take: `las validate` refuses them ------------------------------


def manifest_with(**native: object) -> dict[str, object]:
    runtime: dict[str, object] = {
        "modes": ["native"],
        "native": {"command": ["/bin/sleep", "30"]},
        "ports": [{"name": "http", "port": 8080}],
    }
    for key, value in native.items():
        section, _, field = key.partition("__")
        target = runtime.setdefault(section, {})
        assert isinstance(target, dict)
        if field:
            target[field] = value
        else:
            runtime[section] = value
    return {"name": "fields", "runtime": runtime}


# (case, the manifest's runtime changes, the field named, a phrase of the message)
FIELD_CASES: list[tuple[str, dict[str, object], str, str]] = [
    ("env-name-equals", {"native__env": {"A=B": "x"}}, "runtime.native.env.A=B", "contains '='"),
    ("env-name-equals-lead", {"native__env": {"=X": "x"}}, "runtime.native.env.=X", "'='"),
    ("env-name-empty", {"native__env": {"": "x"}}, "runtime.native.env.:", "empty"),
    ("env-name-nul", {"native__env": {"A\0B": "x"}}, "runtime.native.env.A\\x00B", "NUL"),
    ("env-value-nul", {"native__env": {"A": "x\0y"}}, "runtime.native.env.A", "NUL"),
    ("argv-nul", {"native__command": ["/bin/sleep", "3\0"]}, "runtime.native.command[1]", "NUL"),
    ("argv0-nul", {"native__command": ["/bin/sl\0eep"]}, "runtime.native.command[0]", "NUL"),
    ("argv0-empty", {"native__command": [""]}, "runtime.native.command", "not empty"),
    ("argv-too-long", {"native__command": ["/bin/echo", "x" * 131072]},
     "runtime.native.command[1]", "longer than the 131071 bytes"),
    ("env-too-long", {"native__env": {"BIG": "y" * 131068}}, "runtime.native.env.BIG",
     "longer than the 131071 bytes"),
    ("workdir-nul", {"native__workdir": "/tmp\0"}, "runtime.native.workdir", "NUL"),
    (
        "container-env-name",
        {
            "modes": ["container"],
            "native": None,
            "container": {"image": "x", "env": {"B=C": "1"}},
        },
        "runtime.container.env.B=C",
        "'='",
    ),
    (
        "volume-nul",
        {
            "modes": ["container"],
            "native": None,
            "container": {"image": "x", "volumes": [{"source": "/a\0", "target": "/b"}]},
        },
        "runtime.container.volumes[0].source",
        "NUL",
    ),
    (
        "volume-target-relative",
        {
            "modes": ["container"],
            "native": None,
            "container": {"image": "x", "volumes": [{"source": "/a", "target": "b"}]},
        },
        "runtime.container.volumes[0].target",
        "absolute",
    ),
    (
        "container-workdir-relative",
        {"modes": ["container"], "native": None, "container": {"image": "x", "workdir": "w"}},
        "runtime.container.workdir",
        "absolute",
    ),
    ("interval-zero", {"health": {"tcp": {"port": "http"}, "interval": 0}},
     "runtime.health.interval", "too short"),
    ("interval-0s", {"health": {"tcp": {"port": "http"}, "interval": "0s"}},
     "runtime.health.interval", "too short"),
    ("probe-timeout-zero", {"health": {"tcp": {"port": "http"}, "timeout": "0ms"}},
     "runtime.health.timeout", "too short"),
    ("start-timeout-zero", {"health": {"tcp": {"port": "http"}, "start_timeout": 0}},
     "runtime.health.start_timeout", "too short"),
    ("stop-timeout-zero", {"stop": {"timeout": 0}}, "runtime.stop.timeout", "too short"),
    ("stop-timeout-huge", {"stop": {"timeout": "1000h"}}, "runtime.stop.timeout", "at most 1h"),
    ("stop-timeout-1e300", {"stop": {"timeout": 1e300}}, "runtime.stop.timeout", "at most 1h"),
    ("interval-huge", {"health": {"tcp": {"port": "http"}, "interval": "2h"}},
     "runtime.health.interval", "at most 1h"),
    ("start-timeout-huge", {"health": {"tcp": {"port": "http"}, "start_timeout": "25h"}},
     "runtime.health.start_timeout", "at most 24h"),
    ("window-zero", {"restart": {"policy": "on-failure", "window": 0}},
     "runtime.restart.window", "too short"),
    ("backoff-huge", {"restart": {"backoff": "10h"}}, "runtime.restart.backoff", "at most 1h"),
    ("port-true", {"ports": [{"name": "http", "port": True}]}, "runtime.ports[0].port",
     "valid integer"),
    ("port-false", {"ports": [{"name": "http", "port": False}]}, "runtime.ports[0].port",
     "valid integer"),
    ("threshold-true", {"health": {"tcp": {"port": "http"}, "failure_threshold": True}},
     "runtime.health.failure_threshold", "valid integer"),
    ("gpus-true", {"resources": {"gpus": True}}, "runtime.resources.gpus", "valid integer"),
    ("cpus-true", {"resources": {"cpus": True}}, "runtime.resources.cpus", "valid number"),
]  # fmt: skip


def field_case_file(directory: Path, case: str, changes: dict[str, object]) -> Path:
    data = manifest_with(**{k: v for k, v in changes.items() if "__" in k})
    runtime = data["runtime"]
    assert isinstance(runtime, dict)
    for key, value in changes.items():
        if "__" not in key:
            if value is None:
                runtime.pop(key, None)
            else:
                runtime[key] = value
    path = directory / f"{case}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def check_field_error(path: Path, errors: list[str], field: str, phrase: str) -> None:
    """An error line ``FILE:LINE: FIELD: ...phrase...``, LINE being where the field is."""
    lines = path.read_text().splitlines()
    hits = [e for e in errors if e.startswith(f"error: {path}:") and field in e and phrase in e]
    assert hits, f"no error naming {field!r} / {phrase!r}:\n" + "\n".join(errors)
    where = hits[0].removeprefix(f"error: {path}:").split(":", 1)[0]
    assert where.isdigit() and 1 <= int(where) <= len(lines), hits[0]
    key = re.split(r"[.\[]", field)[-1]
    if key.isidentifier():  # the line of the key itself (not a NUL or '=' name)
        assert key in lines[int(where) - 1], (hits[0], lines[int(where) - 1])


@pytest.mark.parametrize(
    ("case", "changes", "field", "phrase"), FIELD_CASES, ids=[c[0] for c in FIELD_CASES]
)
def test_validate_refuses_what_no_process_can_take(
    tmp_path: Path, case: str, changes: dict[str, object], field: str, phrase: str
) -> None:
    """In this process (click's runner), one case each; the real CLI runs them all below."""
    from click.testing import CliRunner

    from localaistack.cli.app import cli

    path = field_case_file(tmp_path, case, changes)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    check_field_error(path, errors, field, phrase)
    assert "hint: " in result.stderr
    assert "\0" not in result.stderr, "a NUL is never printed raw"


def test_validate_refuses_every_field_case_in_one_bounded_run(
    las_env: dict[str, str], tmp_path: Path
) -> None:
    paths = [field_case_file(tmp_path, c[0], c[1]) for c in FIELD_CASES]
    child = run_bounded(las_env, "validate", *map(str, paths))
    assert_refused(child, str(paths[0]))
    for path, (_case, _changes, field, phrase) in zip(paths, FIELD_CASES, strict=True):
        check_field_error(path, child.errors(), field, phrase)
    assert f"{len(paths)} of {len(paths)} manifest(s) invalid" in child.err
    assert "\0" not in child.err


def test_validate_lists_every_field_problem_at_once(
    las_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        "name: many\n"
        "runtime:\n"
        "  modes: [native]\n"
        '  native: {command: [/bin/echo, "a\\0b"], env: {"X=1": y}}\n'
        "  ports: [{name: http, port: true}]\n"
        "  health: {tcp: {port: http}, interval: 0}\n"
        "  stop: {timeout: 48h}\n"
    )
    child = run_bounded(las_env, "validate", str(path))
    assert_refused(child, str(path))
    errors = child.errors()
    for line, field in (
        (4, "runtime.native.command[1]"),
        (4, "runtime.native.env.X=1"),
        (5, "runtime.ports[0].port"),
        (6, "runtime.health.interval"),
        (7, "runtime.stop.timeout"),
    ):
        assert any(e.startswith(f"error: {path}:{line}: {field}:") for e in errors), (
            field,
            child.err,
        )


def test_valid_bounds_are_accepted(las_env: dict[str, str], tmp_path: Path) -> None:
    """The edges of the documented bounds are valid."""
    path = tmp_path / "edges.yaml"
    path.write_text(
        "name: edges\n"
        "runtime:\n"
        "  modes: [native]\n"
        "  native: {command: [/bin/sleep, '1'], env: {A_B: '', lower: x}}\n"
        "  ports: [{name: http, port: 65535}]\n"
        "  health: {tcp: {port: http}, interval: 100ms, timeout: 1h, start_timeout: 24h}\n"
        "  restart: {backoff: 0, window: 168h, reset_after: 1ms}\n"
        "  stop: {timeout: 1h}\n"
    )
    child = run_bounded(las_env, "validate", str(path))
    assert child.code == 0, child.err


# --- --set values: a NUL is refused at plan time ---------------------------------------------


@pytest.mark.parametrize(("param", "value"), [("arg", "a\0b"), ("var", "\0"), ("path", "/x\0")])
def test_set_value_with_nul_is_refused_at_plan_time(tmp_path: Path, param: str, value: str) -> None:
    """argv cannot carry a NUL, but `--set` also comes from other callers (the API): the
    planner refuses it with a clear error and a hint."""
    from localaistack.control.hardware import load_profile
    from localaistack.errors import UsageError
    from localaistack.ops.planning import planner_for

    path = tmp_path / "sets.yaml"
    path.write_text(
        "name: sets\n"
        "runtime:\n"
        "  modes: [native]\n"
        "  native:\n"
        "    command: [/bin/echo, '${arg}', '${path}']\n"
        "    env: {VAR: '${var}'}\n"
        "parameters:\n"
        "  arg: {default: a}\n"
        "  var: {default: b}\n"
        "  path: {type: path, default: /tmp}\n"
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text("trusted_native: [sets]\nnative_allow_root: [sets]\n")
    sets = {param: value}
    profile = load_profile(CPU_PROFILE)
    planner = planner_for(tmp_path, str(path), "native", sets, profile, policy, environ={})
    with pytest.raises(UsageError) as exc:
        planner(lambda _host, _name: 8080)
    assert f"parameter {param!r} contains a NUL byte" in exc.value.message
    assert exc.value.hint and "NUL" in exc.value.hint


# --- a relative workdir is the manifest's ----------------------------------------------------


@pytest.mark.parametrize("workdir", ["data", "./sub/../data"])
def test_relative_workdir_resolves_against_the_manifest(
    las: Las, las_env: dict[str, str], tmp_path: Path, workdir: str
) -> None:
    """The workload runs in the manifest's directory's ``data``, wherever las is called from."""
    moddir = tmp_path / "module"
    (moddir / "data").mkdir(parents=True)
    (moddir / "sub").mkdir()
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)  # a decoy: the caller's cwd has one too
    out = tmp_path / "cwd.txt"
    manifest = moddir / "wd.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "name": "wd",
                "runtime": {
                    "modes": ["native"],
                    "native": {
                        "command": [
                            sys.executable,
                            "-c",
                            "import os, sys; open(sys.argv[1], 'w').write(os.getcwd())",
                            str(out),
                        ],
                        "workdir": workdir,
                    },
                },
            }
        )
    )
    home = Path(las_env["LAS_HOME"])
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home / "policy.yaml").write_text(
        yaml.safe_dump({"trusted_native": ["wd"], "native_allow_root": ["wd"]})
    )
    plan = subprocess.run(
        [sys.executable, "-m", "localaistack", "plan", str(manifest), "--json"],
        env=las_env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["native"]["workdir"] == str(moddir / "data")
    run = subprocess.run(
        [sys.executable, "-m", "localaistack", "run", str(manifest)],
        env=las_env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    wait_until(lambda: out.exists() and out.read_text(), message="the workload's cwd")
    assert out.read_text() == str(moddir / "data")


# --- control characters in messages are printed escaped ------------------------------------


def test_fail_prints_control_characters_escaped(las_env: dict[str, str]) -> None:
    """A message or hint with a NUL, ESC, CR or a bidi override reaches the terminal as
    escapes, never as the raw bytes."""
    code = (
        "from localaistack.cli.output import fail\n"
        "from localaistack.errors import PolicyError\n"
        "fail(PolicyError('bad \\x00 value \\x1b[2J', hint='use \\x00 or \\r\\u202e not'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=las_env, capture_output=True, timeout=60
    )
    assert proc.returncode == 1
    err = proc.stderr
    for raw in (b"\x00", b"\x1b", b"\r", "\u202e".encode()):
        assert raw not in err, err
    assert b"error: bad \\x00 value \\x1b[2J" in err
    assert b"hint: use \\x00 or \\r\\u202e not" in err


def test_paths_with_control_characters_are_printed_escaped(
    las_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "evil\x1b[31m\rname.yaml"
    child = run_bounded(las_env, "validate", str(path), str(tmp_path / "gone\x07.yaml"))
    assert child.code == 1
    assert "\x1b" not in child.err and "\r" not in child.err and "\x07" not in child.err
    assert "evil\\x1b[31m\\rname.yaml: no such file" in child.err
    assert "gone\\x07.yaml: no such file" in child.err
    path.write_text(VALID.replace("victim", "ok"))
    child = run_bounded(las_env, "validate", str(path))
    assert child.code == 0, child.err
    assert "\x1b" not in child.out and "evil\\x1b[31m\\rname.yaml: ok" in child.out
