"""scripts/gpu-check where there is no NVIDIA GPU: a clear message and exit 2, no record.

The check itself needs a real GPU (docs/gpu-check.md); here only its refusal is tested.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "gpu-check"


def _has_nvidia_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount()) > 0
    except Exception:
        return False


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(_has_nvidia_gpu(), reason="this machine has an NVIDIA GPU: run the check")
def test_no_gpu_exits_2_with_a_message_and_writes_nothing(
    tmp_path: Path, las_env: dict[str, str]
) -> None:
    record = tmp_path / "record.json"
    res = _run(str(record), env=las_env)
    assert res.returncode == 2
    assert res.stderr.startswith("gpu-check: no NVIDIA GPU here (")
    assert "run it on a machine with one (docs/gpu-check.md)" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert not record.exists()


def test_usage_without_a_record_path(las_env: dict[str, str]) -> None:
    res = _run(env=las_env)
    assert res.returncode == 2 and "scripts/gpu-check RECORD.json" in res.stderr
