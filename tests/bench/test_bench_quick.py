"""The benchmark harness must not rot: its quick mode runs in the test suite.

This checks that every benchmark runs and reports; the figures themselves are judged in
docs/benchmarks.md from full runs, never by a timed test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import REPO


@pytest.mark.slow
def test_bench_quick_runs_every_benchmark_and_reports(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for metric in (
        "start until running",
        "failure noticed",
        "log capture",
        "idle PSS",
        "idle CPU",
        "las ps",
        "readiness noticed",
        "while probing",
        "with the listener check",
        "container start until running (podman)",
        "container start until running (docker)",
        "llama.cpp generation",
        "llama.cpp time to healthy",
        "crash loop: starts per minute",
        "bare subprocess.Popen",
        "log capture through a pipe read by the parent",
        "native start until running (through the API)",
        "state change committed -> SSE client",
        "GET /v1/instances with",
        "idle service RSS",
    ):
        assert metric in out, out
    line = next(x for x in out.splitlines() if x.startswith("raw numbers: "))
    raw = Path(line.removeprefix("raw numbers: ").rsplit(" (", 1)[0])
    data = json.loads(raw.read_text())
    raw.unlink()
    assert data["quick"] is True and len(data["rows"]) >= 16
    assert all(row["las"] for row in data["rows"])
