"""Experiment, not a benchmark row: how fast could `las run -d` be with a resident las?

    python -m bench.warm_agent [--reps N]

docs/status.md leaves one decision open for issue #5: a resident las agent, so that a
`las` command does not start Python and import las each time. This measures what such an
agent could reach, with las's own code, before anyone builds it:

* a warm process (this one: every module `las run` and the supervisor need is imported)
  forks a worker per request, as an agent would; the worker runs `las run -d`'s code
  (cli/launch.py) with its supervisor forked from it, not exec'd (no second Python start);
  timed from the fork until the worker has printed `running`;
* a thin client's cost: a Python started as a client script would be (``-I -S``: no site,
  no environment) that imports what it needs to hand its command over (``_socket``: the
  ``socket`` module's enum set-up alone costs ~4-13 ms), timed from spawn to exit;
* `podman run -d` with the argv las's engine layer builds, alternating with the above.

The agent itself does not exist: no socket hand-over, environment or terminal passing is
timed, and the forked supervisor shows the experiment's command line. Podman only (the
engine whose step is shortest, so las's own share weighs most); its API service is
started first, as after any earlier `las run`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.containers import IMAGE
from bench.native import las_cmd, workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    with workspace() as root:
        home = root / "home"
        home.mkdir(mode=0o700)
        (home / "policy.yaml").write_text("container_engine: podman\n")
        module = root / "csleep.yaml"
        module.write_text(
            "name: csleep\nruntime:\n  modes: [container]\n"
            f"  container: {{image: {IMAGE}, command: [sleep, '1000']}}\n"
            "  stop: {timeout: 1s}\n"
        )
        os.environ["LAS_HOME"] = str(home)
        run(module, args.reps)


def run(module: Path, reps: int) -> None:
    from localaistack.cli import entry, launch
    from localaistack.control import admission, names, plancache  # noqa: F401 (kept warm)
    from localaistack.plan import ExecutionPlan
    from localaistack.runtime import engines, manager, spawn, supervision, supervisor  # noqa: F401
    from localaistack.runtime.procs import start_time
    from localaistack.store import db, paths
    from localaistack.store.home import make_private_dir

    engine = engines.Engine("podman", global_args=engines.suggested_global_args("podman"))
    if engine.podman_api(wait=True) is None or not engine.image_exists(IMAGE):
        sys.exit("podman or its API service or the test image is not usable here")
    las = las_cmd()
    subprocess.run([*las, "run", "-d", str(module), "--name", "prime"], check=True)  # plan kept
    store = db.Store(paths.las_home() / "state.db")  # an agent would have read plans before
    prime = store.instance("prime")
    assert prime is not None
    ExecutionPlan.from_json(prime["plan"])
    store.close()
    subprocess.run([*las, "rm", "-f", "prime"], check=True, capture_output=True)

    def fork_supervisor(
        db: str | os.PathLike[str], home: str | os.PathLike[str], run_id: str,
        extra_args: tuple[str, ...] = (),
    ) -> spawn.Pending:  # fmt: skip
        """spawn_supervisor, but a fork of this warm process instead of a new Python."""
        sup_log = os.path.join(make_private_dir(os.fspath(home), "runs", run_id), "s.log")
        rfd, wfd = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                os.close(rfd)
                os.close(go_w)
                log = os.open(sup_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(log, 1)
                os.dup2(log, 2)
                argv = ["--db", os.fspath(db), "--run", run_id, "--ready-fd", str(wfd)]
                supervisor.main([*argv, "--go-fd", str(go_r), *extra_args])
            finally:
                os._exit(0)
        os.close(wfd)
        os.close(go_r)
        return spawn.Pending(run_id, pid, start_time(pid), go_w, rfd, sup_log, os.fspath(db))

    spawn.spawn_supervisor = fork_supervisor  # what cli/entry.py imports when it spawns
    supervision.spawn_supervisor = fork_supervisor

    def worker(i: int) -> float:
        t0 = time.perf_counter()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.dup2(w, 1)
            os.close(w)
            argv = ["run", "-d", str(module), "--name", f"w{i}"]
            pending = entry._spawn_early(argv)
            if pending is not None:
                entry._early.append(pending)
            try:
                parsed = launch.parse_simple(argv[1:])
                assert parsed is not None
                launch.run_instance(*parsed)
            finally:
                sys.stdout.flush()
                os._exit(0)
        os.close(w)
        try:
            with os.fdopen(r, "rb") as out:
                line = out.read()
            took = time.perf_counter() - t0
            os.waitpid(pid, 0)
            assert b"running" in line, line
        finally:  # nothing may outlive the experiment
            subprocess.run([*las, "rm", "-f", f"w{i}"], capture_output=True)
        return took

    def client() -> float:
        t0 = time.perf_counter()
        subprocess.run([*las_python(las), "-I", "-S", "-c", "import _socket"], check=True)
        return time.perf_counter() - t0

    def peer(i: int) -> float:
        spec = engines.ContainerRunSpec(
            name=f"bench-warm-{i}", image=IMAGE, argv=["sleep", "1000"], pids_limit=1024,
            user="65534:65534", stop_signal="SIGTERM", ulimits=engines.suggested_ulimits(),
        )  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(engine.run_args(spec), check=True, capture_output=True, cwd=engine.cwd)
        took = time.perf_counter() - t0
        engine.remove(spec.name)
        return took

    ws, cs, ps = [], [], []
    for i in range(reps):
        ws.append(worker(i))
        cs.append(client())
        ps.append(peer(i))
    for what, xs in (("worker", ws), ("client", cs), ("podman", ps)):
        print(f"{what}: {[round(x * 1000) for x in xs]} ms")
    w, c, p = (statistics.median(x) * 1000 for x in (ws, cs, ps))
    print(f"warm worker, fork until `running` printed: {w:.1f} ms (median of {reps})")
    print(f"thin client, python -I -S with _socket:    {c:.1f} ms")
    print(f"podman run -d:                              {p:.1f} ms")
    print(f"estimate for las run -d via an agent: {w + c:.1f} ms = {(w + c) / p:.2f}x podman")


def las_python(las: list[str]) -> list[str]:
    """The Python that runs the `las` console script (its shebang), or this one."""
    if len(las) == 1:
        first = Path(las[0]).read_text().splitlines()[0]
        if first.startswith("#!"):
            return [first[2:].strip()]
    return [sys.executable]


if __name__ == "__main__":
    main()
