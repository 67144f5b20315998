"""A process that admits an instance and dies before creating its run (a `las run` or a
`las serve` killed between the two transactions): the next las command undoes it, as if
the request never came. An admission whose process lives is left alone."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Las, workload

ADMIT = """
import json, os, sys, time
from localaistack.store.db import Store, insert_instance, mark_admitted
store = Store(sys.argv[1])
plan = sys.argv[3]
with store.transaction() as c:
    assert insert_instance(c, sys.argv[2], "m", "native", plan)
    mark_admitted(c, sys.argv[2])
print("admitted", flush=True)
if sys.argv[4] == "wait":
    sys.stdin.readline()
os._exit(0)
"""


def _admit(las: Las, name: str, plan: str, wait: bool) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            ADMIT,
            str(las.home / "state.db"),
            name,
            plan,
            "wait" if wait else "exit",
        ],
        env=las.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "admitted\n"
    return proc


def test_an_admission_whose_process_died_is_undone(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    path = module_factory("svc", workload())
    plan = las.ok("plan", str(path), "--json").out
    las.ok("ps")  # the store exists
    proc = _admit(
        las,
        "ghost",
        json.dumps({k: v for k, v in json.loads(plan).items() if k != "plan_id"}),
        wait=False,
    )
    proc.communicate(timeout=30)  # it exits (and its pipes are closed)
    assert "ghost" not in las.ps()
    events = [e for e in map(json.loads, las.ok("events", "--json").out.splitlines())]
    (removed,) = [e for e in events if e["instance"] == "ghost" and e["type"] == "removed"]
    assert f"pid {proc.pid}" in removed["message"] and "nothing ran" in removed["message"]
    # the name is free again, and nothing is reserved for it
    las.ok("run", "-d", str(path), "--name", "ghost")
    assert las.state("ghost") == "running"


def test_an_admission_whose_process_lives_is_kept(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    path = module_factory("svc", workload())
    plan = las.ok("plan", str(path), "--json").out
    las.ok("ps")
    data = json.dumps({k: v for k, v in json.loads(plan).items() if k != "plan_id"})
    proc = _admit(las, "pending", data, wait=True)
    try:
        assert las.ps()["pending"]["state"] == "created"  # being started: left alone
    finally:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert "pending" not in las.ps()  # its process is gone now
