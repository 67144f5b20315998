"""Shared fixtures: an isolated LAS_HOME per test, a `las` runner, deadlines, cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = Path(__file__).resolve().parent / "programs"
PROFILES = Path(__file__).resolve().parent / "data" / "profiles"
CI_DOCKER_SOCK = "/run/las-ci/docker.sock"
TEST_IMAGE = "localhost/las-busybox:latest"


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while read
        return False
    return state != "Z"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Las:
    """Runs the real `las` CLI as a subprocess against the test's LAS_HOME."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env

    def __call__(self, *args: str, timeout: float = 60, check: bool | None = None) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "localaistack", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        res = Result(proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, f"traceback from las {args}:\n{proc.stderr}"
        if check is True:
            assert res.code == 0, f"las {' '.join(args)} failed ({res.code}):\n{res.err}"
        return res

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """`las ARGS` in the background, as from an interactive shell: Ctrl-C (SIGINT)
        reaches it even when this test run was started where SIGINT is ignored (a
        background job of a non-interactive shell)."""
        return subprocess.Popen(
            [sys.executable, "-m", "localaistack", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_sigint_default,  # noqa: PLW1509 (the tests start no threads)
        )

    def ok(self, *args: str, timeout: float = 60) -> Result:
        return self(*args, timeout=timeout, check=True)

    def ps(self) -> dict[str, dict[str, Any]]:
        return {i["name"]: i for i in self.ok("ps", "--all", "--json").json()}

    def inspect(self, name: str) -> dict[str, Any]:
        return self.ok("inspect", name, "--json").json()  # type: ignore[no-any-return]

    def state(self, name: str) -> str:
        return str(self.ps()[name]["state"])


@pytest.fixture(autouse=True)
def las_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    home = tmp_path / "home"
    monkeypatch.setenv("LAS_HOME", str(home))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    if "DOCKER_HOST" not in os.environ and os.path.exists(CI_DOCKER_SOCK):
        monkeypatch.setenv("DOCKER_HOST", f"unix://{CI_DOCKER_SOCK}")  # scripts/ci-containers-up
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _processes() -> Iterator[tuple[int, bytes]]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    yield int(entry), f.read()
            except OSError:
                continue


def _supervisors_of(home: Path) -> list[int]:
    """The supervisors of ``home``'s store."""
    needle = str(home / "state.db").encode()
    return [
        pid
        for pid, cmd in _processes()
        if b"localaistack.runtime.supervisor" in cmd and needle in cmd
    ]


def run_supervisors_of(home: Path) -> list[int]:
    """The supervisors of ``home``'s runs: those of `_supervisors_of` but a spare of `las
    serve` (spawned ahead for the next start, it waits for a run no row records yet)."""
    from localaistack.store.db import Store

    if not (home / "state.db").exists():
        return []
    out = []
    store = Store(home / "state.db")
    try:
        for pid in _supervisors_of(home):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            run_id = argv[argv.index(b"--run") + 1].decode() if b"--run" in argv else ""
            if store.run(run_id) is not None:
                out.append(pid)
    finally:
        store.close()
    return out


@pytest.fixture
def las(tmp_path: Path, las_env: dict[str, str]) -> Iterator[Las]:
    """The CLI, with every supervisor this test started stopped at the end."""
    home = tmp_path / "home"
    runner = Las(home, las_env)
    yield runner
    end_home(runner)
    _stop_podman_services_of(tmp_path)


def end_home(runner: Las) -> None:
    """SIGKILL every supervisor of ``runner``'s home, then reconcile."""
    home = runner.home
    for pid in _supervisors_of(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # The workloads die with their supervisors (PR_SET_PDEATHSIG); give them a moment.
    deadline = time.monotonic() + 5
    while _supervisors_of(home) and time.monotonic() < deadline:
        time.sleep(0.02)
    if (home / "state.db").exists():
        runner("ps")  # reconciles: records the kills, removes the runs' cgroups


def _stop_podman_services_of(tmp_path: Path) -> None:
    """End the podman API services that las started for this test (engines/podmanapi.py):
    each test has its own XDG_CONFIG_HOME, which podman reads, so its own service (else it
    would run on for 5 idle minutes). Found by their pid files in the engine scratch
    directory, and told apart by the XDG_CONFIG_HOME in their environment: only this
    test's, by pid; never by pattern."""
    from localaistack.runtime.engines import podmanapi, scratch_dir

    mine = f"XDG_CONFIG_HOME={tmp_path / 'xdg-config'}".encode()
    directory = Path(scratch_dir())
    for pidfile in directory.glob("podman-*.sock.pid"):
        pid = podmanapi._service_pid(str(pidfile)[: -len(".pid")])
        if pid is None:
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mine in environ:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@pytest.fixture
def module_factory(tmp_path: Path) -> Callable[..., Path]:
    """Write a native test module manifest and trust it in the test's policy.

    The module may run as root (policy ``native_allow_root``) unless ``as_root=False``: the
    test workloads are this Python, which may live where only root can read (pyenv under
    /root), and they write into pytest's tmp dirs (0700, root's). ``policy`` adds keys to the
    test's policy. Without root, both change nothing: the workload runs as the tester.
    """
    home = tmp_path / "home"
    trusted: list[str] = []
    root_allowed: list[str] = []
    extra: dict[str, Any] = {}

    def make(
        name: str,
        command: list[str],
        *,
        as_root: bool = True,
        policy: dict[str, Any] | None = None,
        **runtime: Any,
    ) -> Path:
        runtime.setdefault("modes", ["native"])
        native = {"command": command}
        if "env" in runtime:
            native["env"] = runtime.pop("env")
        if "workdir" in runtime:
            native["workdir"] = runtime.pop("workdir")
        params = runtime.pop("parameters", {})
        manifest = {
            "name": name,
            "version": "1.0.0",
            "category": "service",
            "runtime": {**runtime, "native": native},
        }
        if params:
            manifest["parameters"] = params
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        trusted.append(name)
        if as_root:
            root_allowed.append(name)
        extra.update(policy or {})
        home.mkdir(mode=0o700, exist_ok=True)
        data = {"trusted_native": trusted, "native_allow_root": root_allowed, **extra}
        (home / "policy.yaml").write_text(yaml.safe_dump(data))
        return path

    return make


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A scratch directory every user may enter (pytest's tmp dirs are 0700): for files a
    workload running as another user (las as root: the policy's native_user) must reach."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="las-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def usable_engine(name: str) -> Any:
    """A runtime ``Engine`` for ``name`` that runs containers of the test image; skips else."""
    from localaistack.runtime.engines import Engine, suggested_global_args

    eng = Engine(name, global_args=suggested_global_args(name))
    ok, why = eng.usable()
    if not ok:
        pytest.skip(f"{name} not usable: {why}")
    if not eng.image_exists(TEST_IMAGE):
        pytest.skip(f"{TEST_IMAGE} missing in {name}: run scripts/ci-containers-up")
    return eng


def native_user_reaches(*paths: Path, user: str = "las-workload") -> bool:
    """Whether the default native user (las as root runs native workloads as it) can read
    and (directories, executables) enter these paths; always true when not root."""
    if os.geteuid() != 0:
        return True
    for path in paths:
        test = (
            ["test", "-r", str(path), "-a", "-x", str(path)]
            if os.access(path, os.X_OK)
            else ["test", "-r", str(path)]
        )
        if subprocess.run(["runuser", "-u", user, "--", *test]).returncode != 0:
            return False
    return True


def workload(*flags: str) -> list[str]:
    """argv of the test workload program with the given flags."""
    return [sys.executable, str(PROGRAMS / "workload.py"), *flags]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With LAS_REQUIRE_ALL=1 (CI), a skipped test fails: a missing install step shows.

    Only tests marked ``gpu`` may skip there: no CI machine has a GPU.
    """
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        os.environ.get("LAS_REQUIRE_ALL") == "1"
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("gpu") is None
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped, but LAS_REQUIRE_ALL=1 forbids skips: {report.longrepr}"
