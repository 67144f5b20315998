"""A real `las serve` for a test's LAS_HOME: started as a subprocess, ready when
``GET /v1/health`` answers on its socket, stopped by pid at the end."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tests.conftest import Las


@dataclass
class Service:
    """A running `las serve`: its process, socket, URL (``unix://...``) and log file."""

    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path
    env: dict[str, str]
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self, timeout: float = 30) -> httpx.Client:
        """An httpx client on the service's socket (base URL http://las)."""
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://las",
            timeout=timeout,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Signal the service and wait for it to exit; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_service(
    env: dict[str, str], home: Path, *args: str, socket: Path | None = None, deadline: float = 60
) -> Service:
    """Start `las serve --socket SOCKET ARGS` and wait until /v1/health answers."""
    sock = socket or home / "las.sock"
    home.mkdir(parents=True, exist_ok=True)
    log = home.parent / f"serve-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "localaistack", "serve", "--socket", str(sock), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the test run reaches pytest only
        )
    svc = Service(proc, sock, log, env, list(args))
    end = time.monotonic() + deadline
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"las serve exited {proc.returncode}:\n{svc.log_text()}")
        if _accepts(sock):  # httpx leaks its socket when a connect fails: test it first
            try:
                with svc.client(timeout=5) as c:
                    if c.get("/v1/health").status_code == 200:
                        return svc
            except httpx.TransportError:
                pass
        if time.monotonic() > end:
            svc.stop(signal.SIGKILL)
            raise AssertionError(f"las serve not ready in {deadline}s:\n{svc.log_text()}")
        time.sleep(0.05)


def _accepts(path: Path) -> bool:
    """Whether something listens on the unix socket ``path`` (connects, then closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture
def service(las: Las, las_env: dict[str, str]) -> Iterator[Service]:
    """A running `las serve` on ``$LAS_HOME/las.sock``, stopped (by pid) at the end; the
    `las` fixture's teardown then ends the supervisors of the home."""
    svc = start_service(las_env, las.home)
    try:
        yield svc
    finally:
        svc.stop()
        if svc.proc.returncode not in (0, -signal.SIGTERM):
            print(f"las serve exited {svc.proc.returncode}:\n{svc.log_text()}", file=sys.stderr)


@pytest.fixture
def remote_las(las: Las, service: Service) -> Las:
    """The CLI as a client of ``service`` (LAS_HOST set), on the same home."""
    return Las(las.home, {**las.env, "LAS_HOST": service.url})


__all__ = ["Service", "start_service"]
