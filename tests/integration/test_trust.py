"""`las trust` prints a pin; a pinned executable that changes is refused, naming both hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from tests.conftest import Las


def test_trust_pin_then_replaced_executable_is_refused(
    las: Las, tmp_path: Path, open_dir: Path
) -> None:
    exe = open_dir / "server.sh"  # as root it runs as the policy's native_user
    exe.write_text("#!/bin/sh\nexec sleep 1000\n")
    exe.chmod(0o755)
    manifest = tmp_path / "pinned.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {"name": "pinned", "runtime": {"modes": ["native"], "native": {"command": [str(exe)]}}}
        )
    )
    res = las.ok("trust", str(manifest))
    digest = hashlib.sha256(exe.read_bytes()).hexdigest()
    assert f"  - {{module: pinned, sha256: {digest}}}" in res.out
    assert "not trusted for native execution" in res.out
    las.home.mkdir(mode=0o700, exist_ok=True)
    policy = las.home / "policy.yaml"
    assert not policy.exists()  # las trust edits nothing
    policy.write_text("trusted_native:\n" + res.out.splitlines()[-1] + "\n")
    las.ok("run", str(manifest))
    las.ok("rm", "-f", "pinned")
    exe.write_text("#!/bin/sh\nexec sleep 999\n")  # replaced after it was trusted
    res = las("run", str(manifest))
    new = hashlib.sha256(exe.read_bytes()).hexdigest()
    assert res.code == 3 and digest in res.err and new in res.err
    assert las.ps() == {}
