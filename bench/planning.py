"""What the hardware probe cache buys a `las run` (control/probecache.py).

`las run -d` until running, with the profile kept in the home against the same command
with ``LAS_PROBE_CACHE=0`` (the probe made each time), alternated: for a native-only
module (no engine is asked) and for echo-http, which may run in a container (so podman
and docker are asked when probing).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness import Row, alternate_all, run_main
from bench.native import LasBench, las_cmd


def _timed_run(env: dict[str, str], module: str, name: str) -> float:
    cmd = las_cmd()
    t0 = time.perf_counter()
    argv = [*cmd, "run", "-d", module, "--name", name]
    subprocess.run(argv, env=env, check=True, capture_output=True)
    took = time.perf_counter() - t0
    subprocess.run([*cmd, "rm", "-f", name], env=env, check=True, capture_output=True)
    return took


def collect(quick: bool) -> list[Row]:
    reps = 2 if quick else 7
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="las-bench-") as tmp:
        las = LasBench(Path(tmp))
        sleeper = str(las.module("sleeper", ["sleep", "1000"]))
        las.trust("echo-http")
        env = dict(las.env)
        off = {**env, "LAS_PROBE_CACHE": "0"}
        for label, module in (("native-only module", sleeper), ("echo-http", "echo-http")):
            _timed_run(env, module, "fill")  # the first run probes and keeps the profile
            kept, probed = alternate_all(
                [
                    lambda i, m=module: _timed_run(env, m, f"k{i}"),
                    lambda i, m=module: _timed_run(off, m, f"p{i}"),
                ],
                reps,
            )
            rows.append(
                Row(
                    f"start until running, hardware probe kept ({label})",
                    "s",
                    kept,
                    "LAS_PROBE_CACHE=0",
                    probed,
                    note="the same `las run -d` with the probe made each time",
                )
            )
    return rows


def main() -> None:
    run_main("planning", __doc__, collect)


if __name__ == "__main__":
    main()
