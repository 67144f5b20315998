"""`las system unit` (a systemd unit for `las serve`, checked by `systemd-analyze verify`)
and `las system install` where systemd is not the init system."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import Las, _supervisors_of, workload

UNIT_PATH = Path("/etc/systemd/system/las.service")


def _keys(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify UNIT`: rc 0 and nothing said about the unit is a clean unit
    (an unknown key or a value it cannot parse is only a line on stderr)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def _assert_clean(unit: Path) -> None:
    proc = _verify(unit)
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 0 and not said, f"systemd-analyze verify {unit}:\n" + "\n".join(said)


def test_the_unit_verifies_and_says_what_it_must(las: Las, tmp_path: Path) -> None:
    text = las.ok("system", "unit").out
    unit = tmp_path / "las.service"
    unit.write_text(text)
    _assert_clean(unit)
    keys = _keys(text)
    assert keys["Type"] == ["notify"]
    exec_start = keys["ExecStart"][0].split()
    assert exec_start[-1] == "serve"
    assert os.path.isabs(exec_start[0]) and os.access(exec_start[0], os.X_OK)
    assert f"LAS_HOME={las.home}" in keys["Environment"]
    assert keys["Restart"] == ["on-failure"]
    assert keys["RestartSec"] and keys["StartLimitIntervalSec"] and keys["StartLimitBurst"]
    assert int(keys["StartLimitBurst"][0]) <= 10
    assert keys["KillMode"] == ["process"]  # a service restart stops no workload
    assert keys["WantedBy"] == ["multi-user.target"]


def test_a_broken_unit_is_caught_by_the_check(las: Las, tmp_path: Path) -> None:
    """The check itself can fail: a misspelt key and an unparsable kill mode are found."""
    text = las.ok("system", "unit").out
    unit = tmp_path / "las.service"
    unit.write_text(
        text.replace("Restart=on-failure", "Restrat=on-failure").replace(
            "KillMode=process", "KillMode=sometimes"
        )
    )
    proc = _verify(unit)
    said = proc.stdout + proc.stderr
    assert "Restrat" in said and "sometimes" in said


def test_a_home_with_blanks_and_percent_signs_is_quoted(
    las_env: dict[str, str], tmp_path: Path
) -> None:
    home = tmp_path / "my home %h $HOME"
    runner = Las(home, {**las_env, "LAS_HOME": str(home)})
    text = runner.ok("system", "unit").out
    assert 'Environment="LAS_HOME=' in text and "%%h" in text
    assert "$$HOME" not in text  # Environment= expands no variables: `$` stays as it is
    unit = tmp_path / "las.service"
    unit.write_text(text)
    _assert_clean(unit)


def _without_systemd(args: list[str]) -> list[str]:
    """``args`` run where systemd is not the init system: as it is here, or in a private
    mount namespace that hides /run/systemd (what sd_booted() reads) on a systemd host."""
    if not os.path.isdir("/run/systemd/system"):
        return args
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("systemd runs here, and hiding it (unshare -m) needs root")
    script = 'mount -t tmpfs none /run/systemd && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *args]


def test_install_without_systemd_is_a_clear_error(las: Las) -> None:
    import sys

    before = UNIT_PATH.read_bytes() if UNIT_PATH.exists() else None
    proc = subprocess.run(
        _without_systemd([sys.executable, "-m", "localaistack", "system", "install"]),
        env=las.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "systemd is not the init system" in proc.stderr
    assert "nothing was written" in proc.stderr
    assert "las system unit" in proc.stderr  # the hint: what to do instead
    after = UNIT_PATH.read_bytes() if UNIT_PATH.exists() else None
    assert after == before


def test_supervisors_live_in_the_cgroup_of_what_started_them(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    """Why the unit needs KillMode=process: a supervisor stays in the cgroup of the las
    that spawned it (a service's: its unit's), whatever session it makes; systemd's default
    would signal it with the service."""
    path = module_factory("sleeper", workload())
    las.ok("run", str(path), "-d")
    (sup,) = _supervisors_of(las.home)
    mine = Path("/proc/self/cgroup").read_text()
    assert Path(f"/proc/{sup}/cgroup").read_text() == mine
    assert os.getsid(sup) != os.getsid(0)  # its own session, all the same
