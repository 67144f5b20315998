"""Restart policies at the start of `las serve` (service/boot.py): ``always`` and
``unless-stopped`` instances started again after a reboot or a restart of the service,
through admission; ``never`` and ``on-failure`` left alone; a refusal a failed run.

A reboot is simulated by what las reads: the kernel's boot id. The "before" part runs in
a private mount namespace (``unshare -m``) where a file is bind-mounted over
/proc/sys/kernel/random/boot_id, so that every las command and supervisor there records
another boot; then the supervisors and workloads are SIGKILLed (a power-off), and the
service starts here, under the real boot id. Root only (the mount).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import Las, Result, _supervisors_of, pid_alive, wait_until, workload

from localaistack.ops.api import Operations
from localaistack.service.boot import Autostart, restart_at_start

ModuleFactory = Callable[..., Path]
BOOT_ID = "/proc/sys/kernel/random/boot_id"
START_IN_PROCESS = (
    "import sys; from pathlib import Path; from localaistack.ops.local import LocalOperations; "
    "from localaistack.service.boot import restart_at_start; home = Path(sys.argv[1]); "
    "print([a.name for a in restart_at_start(home, lambda: LocalOperations(home))])"
)


def this_boot() -> str:
    return Path(BOOT_ID).read_text().strip()


def service_start(las: Las) -> list[Autostart]:
    """What `las serve` does before it listens, here, in this process."""
    from localaistack.ops.local import LocalOperations

    home = las.home

    def ops() -> Operations:
        return LocalOperations(home)

    return restart_at_start(home, ops)


class OldBoot:
    """Commands run as if under another boot: each in a private mount namespace where a
    file holding another boot id is bind-mounted over the kernel's. What they start (the
    supervisors, their workloads) stays in that namespace, and reads that boot id too."""

    def __init__(self, las: Las, tmp_path: Path) -> None:
        self.las = las
        self.id = str(uuid.uuid4())
        self.file = tmp_path / "old-boot-id"
        self.file.write_text(self.id + "\n")

    def argv(self, *args: str) -> list[str]:
        script = f'mount --bind "$0" {BOOT_ID} && exec "$@"'
        return [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            str(self.file),
            *args,
        ]

    def run(self, *args: str, timeout: float = 60) -> Result:
        proc = subprocess.run(
            self.argv(*args), env=self.las.env, capture_output=True, text=True, timeout=timeout
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stderr}"
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def las_ok(self, *args: str) -> Result:
        return self.run(sys.executable, "-m", "localaistack", *args)

    def ps(self) -> dict[str, dict[str, Any]]:
        return {i["name"]: i for i in json.loads(self.las_ok("ps", "--all", "--json").out)}

    def service_start(self) -> list[str]:
        """restart_at_start, as `las serve` calls it, under this boot: the names started."""
        out = self.run(sys.executable, "-c", START_IN_PROCESS, str(self.las.home)).out
        return list(json.loads(out.strip().replace("'", '"')))


@pytest.fixture
def old_boot(las: Las, tmp_path: Path) -> OldBoot:
    if os.geteuid() != 0:
        pytest.skip(
            f"a simulated reboot bind-mounts a file over {BOOT_ID} in a private mount "
            "namespace (unshare -m): root only"
        )
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    return OldBoot(las, tmp_path)


@pytest.fixture(autouse=True)
def tidy(las: Las) -> Iterator[None]:
    """At the end: the supervisors this process spawned (restart_at_start in process)
    killed and reaped, and the cgroups a power-off left behind (a real reboot empties
    them) removed; the `las` fixture then ends the rest."""
    yield
    me = os.getpid()
    for pid in _supervisors_of(las.home):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    from localaistack.runtime import cgroups
    from localaistack.store.db import home_label

    for cg in cgroups.of_home(home_label(las.home / "state.db")).values():
        if not cg.pids():
            cg.remove()


def power_off(las: Las, pids: list[int]) -> None:
    """What a power loss does to the home's runs: every supervisor and workload SIGKILLed
    at once, nothing recorded."""
    for pid in _supervisors_of(las.home):
        os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: not _supervisors_of(las.home) and not any(pid_alive(p) for p in pids),
        timeout=10,
        message="supervisors and workloads gone",
    )


def events(las: Las, type_: str | None = None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in las.ok("events", "--json").out.splitlines()]
    return [e for e in rows if type_ is None or e["type"] == type_]


def restarting(factory: ModuleFactory, name: str, policy: str, **kw: Any) -> Path:
    return factory(
        name, workload(), restart={"policy": policy, "max_restarts": 1, "backoff": "100ms"}, **kw
    )


POLICIES = {
    "always": "always",
    "unless": "unless-stopped",
    "stopped-unless": "unless-stopped",
    "stopped-always": "always",
    "never": "never",
    "onfail": "on-failure",
}


def test_after_a_reboot_always_and_unless_stopped_come_back(
    las: Las, module_factory: ModuleFactory, old_boot: OldBoot
) -> None:
    assert old_boot.service_start() == []  # the service's start under the old boot
    for name, policy in POLICIES.items():
        old_boot.las_ok("run", str(restarting(module_factory, name, policy)), "-d")
    old_boot.las_ok("stop", "stopped-unless")
    old_boot.las_ok("stop", "stopped-always")
    before = old_boot.ps()
    assert {n for n, i in before.items() if i["state"] == "running"} == {
        "always",
        "unless",
        "never",
        "onfail",
    }
    power_off(las, [i["pid"] for i in before.values() if i["pid"]])

    started = service_start(las)

    now = this_boot()
    why = f"service start after a reboot (boot id {old_boot.id} -> {now})"
    assert [(a.name, a.state, a.why) for a in started] == [
        ("always", "running", why),
        ("stopped-always", "running", why),  # always: an explicit `las stop` too
        ("unless", "running", why),
    ]
    after = las.ps()
    for name in ("always", "stopped-always", "unless"):
        assert after[name]["state"] == "running"
        assert after[name]["run_id"] != before[name]["run_id"]
        assert pid_alive(after[name]["pid"])
    assert after["stopped-unless"]["state"] == "stopped"  # unless-stopped: `las stop` holds
    assert after["stopped-unless"]["run_id"] == before["stopped-unless"]["run_id"]
    for name in ("never", "onfail"):  # untouched: their run of the old boot is over
        assert after[name]["state"] == "failed"
        assert "rebooted" in after[name]["reason"]
        assert len(las.inspect(name)["runs"]) == 1
    autostarts = {e["instance"]: e["message"] for e in events(las, "autostart")}
    assert set(autostarts) == {"always", "stopped-always", "unless"}
    assert all(m.startswith(why) for m in autostarts.values())
    assert "restart policy unless-stopped" in autostarts["unless"]
    assert "ended failed (lost: the machine rebooted" in autostarts["always"]

    # The next service start (same boot) finds nothing to do: they run.
    assert service_start(las) == []


def test_a_service_restart_starts_what_is_down(las: Las, module_factory: ModuleFactory) -> None:
    for name, policy in [
        ("always", "always"),
        ("unless", "unless-stopped"),
        ("crashed", "unless-stopped"),
        ("up", "always"),
        ("onfail", "on-failure"),
    ]:
        las.ok("run", str(restarting(module_factory, name, policy)), "-d")
    las.ok("stop", "always")
    las.ok("stop", "unless")
    las.ok("stop", "onfail")
    (sup,) = (p for p in _supervisors_of(las.home) if f"{las.ps()['crashed']['run_id']}" in _cmd(p))
    os.kill(sup, signal.SIGKILL)  # its supervisor dies: the run is lost, never restarted
    wait_until(lambda: las.state("crashed") == "failed", message="crashed recorded lost")
    up = las.ps()["up"]

    started = service_start(las)  # the first service start of this home
    first = "service start (its first in this home)"
    assert [(a.name, a.state, a.why) for a in started] == [
        ("always", "running", first),
        ("crashed", "running", first),  # unless-stopped, and no `las stop` ended it
    ]
    assert las.ps()["up"]["run_id"] == up["run_id"]  # running: left alone
    assert las.state("unless") == "stopped"
    assert las.state("onfail") == "stopped"

    las.ok("stop", "crashed")
    las.ok("stop", "always")
    started = service_start(las)  # a restart of the service, same boot
    assert [(a.name, a.why) for a in started] == [("always", "service start (service restarted)")]
    assert las.state("crashed") == "stopped"
    assert las.state("always") == "running"
    messages = [e["message"] for e in events(las, "autostart") if e["instance"] == "always"]
    assert len(messages) == 2 and messages[1].startswith("service start (service restarted)")


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_refused_start_is_a_failed_run_with_its_reason(
    las: Las, module_factory: ModuleFactory
) -> None:
    path = restarting(module_factory, "web", "always", ports=[{"name": "http", "port": 8080}])
    las.ok("run", str(path), "-d")
    binding = las.inspect("web")["plan"]["ports"][0]
    las.ok("stop", "web")
    runs_before = len(las.inspect("web")["runs"])
    with socket.socket() as taken:  # another program holds the instance's port now
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((binding["host_ip"], binding["host_port"]))
        taken.listen()
        (refused,) = service_start(las)
    assert refused.name == "web" and refused.state == "failed"
    assert refused.reason is not None
    assert refused.reason.startswith("service start (its first in this home): not started: ")
    assert f"{binding['host_port']}" in refused.reason and "in use" in refused.reason
    row = las.ps()["web"]
    assert row["state"] == "failed" and row["reason"] == refused.reason
    assert row["run_id"] == refused.run_id
    assert len(las.inspect("web")["runs"]) == runs_before + 1
    failed = [e for e in events(las, "autostart-failed") if e["instance"] == "web"]
    assert len(failed) == 1 and failed[0]["message"] == refused.reason
    assert [e["instance"] for e in events(las, "autostart")] == ["web"]

    # The port is free again: the next service start starts it (always: it is down).
    (again,) = service_start(las)
    assert again.state == "running" and las.state("web") == "running"


def test_a_policy_that_now_denies_restarts_refuses_them(
    las: Las, module_factory: ModuleFactory
) -> None:
    import yaml

    las.ok("run", str(restarting(module_factory, "svc", "always")), "-d")
    las.ok("stop", "svc")
    policy_file = las.home / "policy.yaml"
    policy = yaml.safe_load(policy_file.read_text())
    policy_file.write_text(yaml.safe_dump({**policy, "restarts": "deny"}))
    (refused,) = service_start(las)
    assert refused.state == "failed" and refused.reason is not None
    assert "not started: policy restarts: deny" in refused.reason
    assert las.ps()["svc"]["reason"] == refused.reason


def test_las_serve_starts_them_after_a_reboot_and_its_stop_touches_none(
    las: Las, module_factory: ModuleFactory, old_boot: OldBoot, las_env: dict[str, str]
) -> None:
    from tests.service.conftest import start_service

    old_boot.service_start()
    for name, policy in [("always", "always"), ("unless", "unless-stopped"), ("off", "never")]:
        old_boot.las_ok("run", str(restarting(module_factory, name, policy)), "-d")
    before = old_boot.ps()
    power_off(las, [i["pid"] for i in before.values() if i["pid"]])

    svc = start_service(las_env, las.home)  # ready: it listens once they were started
    try:
        after = las.ps()
        assert after["always"]["state"] == "running" and after["unless"]["state"] == "running"
        assert after["off"]["state"] == "failed"
        why = f"service start after a reboot (boot id {old_boot.id} -> {this_boot()})"
        autostarts = events(las, "autostart")
        assert sorted(e["instance"] for e in autostarts) == ["always", "unless"]
        assert all(e["message"].startswith(why) for e in autostarts)
        with svc.client() as client:  # the service sees them as the CLI does
            rows = {i["name"]: i for i in client.get("/v1/instances").json()}
        assert rows["always"]["run_id"] == after["always"]["run_id"]
    finally:
        assert svc.stop() in (0, -signal.SIGTERM)
    # Stopping the service stops no workload; started again, it finds them running.
    for name in ("always", "unless"):
        assert pid_alive(after[name]["pid"])
    svc = start_service(las_env, las.home)
    try:
        again = las.ps()
        assert again["always"]["run_id"] == after["always"]["run_id"]
        assert again["unless"]["run_id"] == after["unless"]["run_id"]
        assert len(events(las, "autostart")) == 2
    finally:
        svc.stop()


def test_las_serve_restarted_starts_an_always_instance_that_was_stopped(
    las: Las, module_factory: ModuleFactory, las_env: dict[str, str]
) -> None:
    from tests.service.conftest import start_service

    start_service(las_env, las.home).stop()  # its first start in this home
    las.ok("run", str(restarting(module_factory, "always", "always")), "-d")
    las.ok("run", str(restarting(module_factory, "unless", "unless-stopped")), "-d")
    las.ok("stop", "always")
    las.ok("stop", "unless")
    svc = start_service(las_env, las.home)
    try:
        assert las.state("always") == "running"
        assert las.state("unless") == "stopped"
        (event,) = events(las, "autostart")
        assert event["instance"] == "always"
        assert event["message"].startswith("service start (service restarted): restart policy")
    finally:
        svc.stop()


def test_the_service_boot_id_is_kept_in_the_store(las: Las) -> None:
    from localaistack.store.db import Store, get_meta, set_meta

    las.ok("ps")  # a home with a fresh state database
    store = Store(las.home / "state.db")
    try:
        assert get_meta(store.conn, "service_boot_id") is None
        assert service_start(las) == []
        assert get_meta(store.conn, "service_boot_id") == this_boot()
        with pytest.raises(ValueError), store.transaction() as c:
            set_meta(c, "schema_version", "0")  # the migrations' alone
        assert get_meta(store.conn, "schema_version") not in (None, "0")
    finally:
        store.close()


def test_a_start_that_fails_is_its_failed_run_and_an_event(
    las: Las, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    program = tmp_path / "server.sh"
    program.write_text("#!/bin/sh\nexec sleep 600\n")
    program.chmod(0o755)
    path = module_factory("gone", [str(program)], restart={"policy": "always", "max_restarts": 1})
    las.ok("run", str(path), "-d")
    las.ok("stop", "gone")
    program.unlink()  # what it runs is gone by the next service start
    (failed,) = service_start(las)
    assert failed.state == "failed" and failed.reason
    row = las.ps()["gone"]
    assert row["state"] == "failed" and row["run_id"] == failed.run_id
    assert str(program) in row["reason"]
    (event,) = events(las, "autostart-failed")
    assert event["instance"] == "gone"
    assert event["message"].startswith("service start (its first in this home): run ")
    assert failed.reason in event["message"]
