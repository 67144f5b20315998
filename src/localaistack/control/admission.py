"""Admission: make the plan concrete and claim what it needs, atomically.

Runs under the store's write lock, so two concurrent ``las run`` cannot take the same
instance name or be promised the same host port.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from localaistack.control.ports import free_port
from localaistack.errors import AdmissionRefused, InstanceConflict
from localaistack.plan import ExecutionPlan
from localaistack.store.db import Store, insert_instance, promised_ports

PlanFactory = Callable[[Callable[[str, str], int]], ExecutionPlan]


def admit_new(store: Store, name: str, make_plan: PlanFactory) -> ExecutionPlan:
    """Plan with ports nobody else was promised, and create the instance ``name``.

    Raises:
        InstanceConflict: the name is taken.
        PlanningError: from ``make_plan``.
    """
    with store.transaction() as c:
        existing = c.execute("SELECT name FROM instances WHERE name=?", (name,)).fetchone()
        if existing is not None:
            raise _name_taken(c, name)
        taken = promised_ports(c)
        chosen: set[int] = set()

        def allocate(host: str, _port_name: str) -> int:
            avoid = {p for h, p in taken if h in (host, "0.0.0.0", "::")} | chosen
            port = free_port(host, avoid)
            chosen.add(port)
            return port

        plan = make_plan(allocate)
        if not insert_instance(c, name, plan.module.name, plan.mode, plan.to_json()):
            raise _name_taken(c, name)
    return plan


def _name_taken(c: object, name: str) -> InstanceConflict:
    import sqlite3

    assert isinstance(c, sqlite3.Connection)
    row = c.execute(
        """SELECT r.state FROM instances i LEFT JOIN runs r ON r.run_id = i.current_run
           WHERE i.name=?""",
        (name,),
    ).fetchone()
    state = (row[0] if row else None) or "created"
    if state in ("starting", "running", "stopping"):
        return InstanceConflict(
            f"instance {name!r} is already {state}",
            hint=f"choose another --name, or `las stop {name}`",
        )
    return InstanceConflict(
        f"instance name {name!r} is already in use (state: {state})",
        hint=f"`las start {name}` runs it again with its plan; `las rm {name}` forgets it; "
        "or choose another --name",
    )


def readmit(store: Store, name: str, plan: ExecutionPlan) -> None:
    """Check that an existing instance's ports are still free before it starts again.

    Raises:
        AdmissionRefused: a port is promised to another instance or in use on the host.
    """
    with store.transaction() as c:
        taken = promised_ports(c, exclude=name)
    for b in plan.ports:
        if (b.host_ip, b.host_port) in taken:
            raise AdmissionRefused(
                f"port {b.host_ip}:{b.host_port} ({b.name}) is promised to another instance",
                hint=f"`las rm {name}` and `las run` it again to get a new port",
            )
        family = socket.AF_INET6 if ":" in b.host_ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((b.host_ip, b.host_port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise AdmissionRefused(
                    f"port {b.host_ip}:{b.host_port} ({b.name}) is in use by another process",
                    hint=f"free the port, or `las rm {name}` and `las run` it again",
                ) from exc
