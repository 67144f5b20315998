"""Drive one backend through its interface alone, without the shim (run as a program by
test_conformance.py: a backend makes its caller the run's subreaper, not for pytest).

Usage: drive.py DB RUN_ID INSTANCE PLAN_JSON; prints one JSON line per step.
"""

from __future__ import annotations

import json
import os
import selectors
import sys
import time

from localaistack.runtime import backends
from localaistack.runtime.backend import RunContext


def main() -> None:
    db, run_id, instance, plan_text = sys.argv[1:5]
    plan = json.loads(plan_text)
    ctx = RunContext(run_id, instance, plan, plan, db, os.getpid(), set())
    backend = backends.create(backends.name_for(plan), ctx)
    started = backend.start()
    attached = backend.attach()
    sel = selectors.DefaultSelector()
    for fd in attached.outputs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    out = b""
    deadline = time.monotonic() + 30
    ex = None
    while time.monotonic() < deadline:
        for key, _ in sel.select(0.05):
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fd)
            out += data
        if ex is None:
            ex = backend.poll_exit()
        if ex is not None and not sel.get_map():
            break
    backend.detach()
    left = backend.cleanup()
    print(
        json.dumps(
            {
                "what": started.what,
                "handle": started.handle.to_json(),
                "exit": ex._asdict() if ex else None,
                "output": out.decode(),
                "left": left,
            }
        )
    )


if __name__ == "__main__":
    main()
