"""A test workload that records how it was started, then idles or exits.

``recorder.py OUTFILE ARGS...`` writes ``{"argv": ARGS, "env": {...}, "exe": ...}`` as JSON
to OUTFILE (atomically), where ``exe`` is what the kernel ran (``/proc/self/exe``: a shell
would show there) and ``env`` is its whole environment. It prints nothing of what it was
given. ``RECORDER_MODE=sleep`` keeps it running (until signalled); by default it exits 0.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    out = sys.argv[1]
    record = {
        "argv": sys.argv[2:],
        "env": dict(os.environ),
        "exe": os.path.realpath("/proc/self/exe"),
        "parent_exe": os.path.realpath(f"/proc/{os.getppid()}/exe"),
    }
    with open(out + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(out + ".tmp", out)
    print("recorded", flush=True)
    if os.environ.get("RECORDER_MODE") == "sleep":
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
