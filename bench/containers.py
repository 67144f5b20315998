"""Container start: `las run --detach` of a container module vs the engine's own `run -d`.

    python -m bench.containers [--quick]

Both start the same image with the same flags (las's secure defaults: the peer runs the
exact argv las's engine layer builds), alternating; removal is not timed. `las` runs as a
user's does: a new process each time, after a first, untimed `las run` (which keeps the
hardware probe). No goal: a new `las` process plans and admits on every run; the warm path
is a runtime service (issue #19).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import Row, alternate_all, run_main
from bench.native import las_cmd, workspace

IMAGE = "localhost/las-busybox:latest"


def engine_peer(name: str) -> Callable[[int], float] | None:
    """The peer of a las container start: the engine's own `run -d` of the same image with
    the exact argv las's engine layer builds (its secure defaults), timed; removal is not.
    None (and why, on stderr) when the engine or the image is missing."""
    from localaistack.runtime.engines import (
        ContainerRunSpec,
        Engine,
        suggested_global_args,
        suggested_ulimits,
    )

    engine = Engine(name, global_args=suggested_global_args(name))
    ok, why = engine.usable()
    if not ok or not engine.image_exists(IMAGE):
        print(f"{name}: skipped ({why if not ok else IMAGE + ' missing'})", file=sys.stderr)
        return None
    spec_args: dict[str, Any] = {
        "image": IMAGE,
        "argv": ["sleep", "1000"],
        "pids_limit": 1024,
        "user": "65534:65534",
        "stop_signal": "SIGTERM",
        "ulimits": suggested_ulimits() if name == "podman" else (),
    }

    def engine_start(i: int) -> float:
        argv = engine.run_args(ContainerRunSpec(name=f"bench-peer-{i}", **spec_args))
        t0 = time.perf_counter()
        subprocess.run(
            argv, check=True, capture_output=True, cwd=engine.cwd, env=engine.subprocess_env()
        )
        took = time.perf_counter() - t0
        engine.remove(f"bench-peer-{i}")
        return took

    return engine_start


def sleeper_manifest(name: str) -> str:
    """A container module of the same image and command as ``engine_peer``'s."""
    return (
        f"name: {name}\nruntime:\n  modes: [container]\n"
        f"  container: {{image: {IMAGE}, command: [sleep, '1000']}}\n"
        "  stop: {timeout: 1s}\n"
    )


def bench_engine(root: Path, name: str, reps: int) -> list[Row]:
    engine_start = engine_peer(name)
    if engine_start is None:
        return []
    home = root / f"home-{name}"
    home.mkdir(mode=0o700)
    (home / "policy.yaml").write_text(f"container_engine: {name}\n")
    module = root / f"sleeper-{name}.yaml"
    module.write_text(sleeper_manifest("csleep"))
    env = {**os.environ, "LAS_HOME": str(home)}
    cmd = las_cmd()

    def las_start(i: int) -> float:
        t0 = time.perf_counter()
        subprocess.run(
            [*cmd, "run", "-d", str(module), "--name", f"c{i}"],
            env=env,
            check=True,
            capture_output=True,
        )
        took = time.perf_counter() - t0
        subprocess.run([*cmd, "rm", "-f", f"c{i}"], env=env, check=True, capture_output=True)
        return took

    las_start(-1)  # the hardware probe is made and kept
    xs, ys = alternate_all([las_start, engine_start], reps)
    what = "same image and flags; las includes planning, admission and its supervisor"
    return [
        Row(
            f"container start until running ({name})",
            "s",
            xs,
            f"{name} run -d",
            ys,
            note=f"{what}; a new `las` process each time (it plans and admits), the "
            "hardware probe kept; no goal (the warm path is a runtime service)",
        ),
    ]


def collect(quick: bool) -> list[Row]:
    """Container start for each usable engine."""
    reps = 2 if quick else 21  # the spread on a shared VM is wide: more pairs, a steadier median
    rows = []
    with workspace() as root:
        for name in ("podman", "docker"):
            rows += bench_engine(root, name, reps)
    return rows


def main() -> None:
    run_main("containers", __doc__, collect)


if __name__ == "__main__":
    main()
