"""Health probes that never block the supervisor. Standard library only.

The supervisor is one thread sleeping in ``select()``; a probe must not stall log capture,
so each probe is a small state machine over a non-blocking file descriptor:

* ``HttpProbe``: non-blocking connect, ``GET PATH HTTP/1.0``, read the status line.
  2xx and 3xx are healthy; 503 is "still starting" (llama-server answers 503 while it
  loads); anything else, a refused connection, a closed connection or the timeout fails.
* ``TcpProbe``: a non-blocking connect that completes.
* ``CommandProbe``: a process (its own session, output captured), watched through a pidfd;
  exit 0 is healthy. On timeout its process group is killed.

Usage: ``probe.start()``, then register ``probe.fileno()`` for ``probe.events`` and call
``probe.on_ready()`` when it is ready (it returns a result or None: not finished yet);
``probe.expire()`` gives the timeout's result and cleans up. ``probe.deadline`` is a
``time.monotonic()`` value.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class ProbeResult:
    """One probe's outcome: ``ok``, ``starting`` (HTTP 503), latency and a message."""

    __slots__ = ("at", "latency", "message", "ok", "starting")

    def __init__(self, ok: bool, message: str, latency: float, starting: bool = False) -> None:
        self.ok = ok
        self.starting = starting
        self.message = message
        self.latency = latency
        self.at = time.time()

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "latency_ms": round(self.latency * 1000, 2),
            "outcome": "ok" if self.ok else ("starting" if self.starting else "failed"),
            "message": self.message,
        }

    def __repr__(self) -> str:
        return f"<ProbeResult ok={self.ok} starting={self.starting} {self.message!r}>"


class _SocketProbe:
    events = WRITE

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = "127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else host
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.t0 = 0.0
        self.deadline = 0.0

    def start(self) -> ProbeResult | None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.timeout
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        err = self.sock.connect_ex((self.host, self.port))
        if err not in (0, 115):  # EINPROGRESS
            return self._done(False, f"connect to {self.host}:{self.port}: {os.strerror(err)}")
        return None

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def _connected(self) -> ProbeResult | None:
        assert self.sock is not None
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return self._done(False, f"connect to {self.host}:{self.port}: {os.strerror(err)}")
        return None

    def _done(self, ok: bool, message: str, starting: bool = False) -> ProbeResult:
        self.close()
        return ProbeResult(ok, message, time.monotonic() - self.t0, starting)

    def expire(self) -> ProbeResult:
        return self._done(False, f"timed out after {self.timeout:g}s")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class TcpProbe(_SocketProbe):
    def on_ready(self) -> ProbeResult | None:
        failed = self._connected()
        return failed or self._done(True, f"connected to {self.host}:{self.port}")


class HttpProbe(_SocketProbe):
    def __init__(self, host: str, port: int, path: str, timeout: float) -> None:
        super().__init__(host, port, timeout)
        self.path = path if path.startswith("/") else "/" + path
        self.buf = b""

    def on_ready(self) -> ProbeResult | None:
        assert self.sock is not None
        if self.events == WRITE:
            failed = self._connected()
            if failed:
                return failed
            host = f"[{self.host}]" if ":" in self.host else self.host
            request = f"GET {self.path} HTTP/1.0\r\nHost: {host}:{self.port}\r\n\r\n"
            try:
                self.sock.send(request.encode())
            except OSError as exc:
                return self._done(False, f"send: {exc.strerror}")
            self.events = READ
            return None
        try:
            chunk = self.sock.recv(4096)
        except BlockingIOError:
            return None
        except OSError as exc:
            return self._done(False, f"receive: {exc.strerror}")
        self.buf += chunk
        if b"\r\n" not in self.buf and chunk and len(self.buf) < 8192:
            return None
        line = self.buf.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            why = "connection closed before a status line" if not self.buf else f"bad {line!r}"
            return self._done(False, f"GET {self.path}: {why}")
        code = int(parts[1])
        text = f"GET {self.path}: HTTP {code}"
        if 200 <= code < 400:
            return self._done(True, text)
        return self._done(False, text, starting=(code == 503))


class CommandProbe:
    events = READ

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str] | None,
        timeout: float,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.argv = argv
        self.env = env
        self.timeout = timeout
        self.preexec = preexec  # runs in the child before exec (the workload's user...)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd = -1
        self.t0 = 0.0
        self.deadline = 0.0

    def start(self) -> ProbeResult | None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.timeout
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self.preexec,  # noqa: PLW1509 (the supervisor is single-threaded)
            )
        except subprocess.SubprocessError as exc:  # the preexec failed (not the exec)
            return ProbeResult(False, f"cannot run {self.argv[0]}: {exc}", 0.0)
        except OSError as exc:
            return ProbeResult(False, f"cannot run {self.argv[0]}: {exc.strerror}", 0.0)
        self.pidfd = os.pidfd_open(self.proc.pid)
        return None

    def fileno(self) -> int:
        return self.pidfd

    def on_ready(self) -> ProbeResult | None:
        assert self.proc is not None
        code = self.proc.wait()
        out = self.proc.stdout.read(4096) if self.proc.stdout else b""
        self.close()
        last = out.decode("utf-8", "replace").strip().splitlines()
        tail = f": {last[-1][:200]}" if last else ""
        latency = time.monotonic() - self.t0
        if code == 0:
            return ProbeResult(True, f"exit 0{tail}", latency)
        return ProbeResult(False, f"exit {code}{tail}", latency)

    def expire(self) -> ProbeResult:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.close()
        return ProbeResult(False, f"timed out after {self.timeout:g}s", time.monotonic() - self.t0)

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


Probe = HttpProbe | TcpProbe | CommandProbe


def make_probe(
    health: dict[str, Any],
    host: str,
    env: dict[str, str] | None,
    preexec: Callable[[], None] | None = None,
) -> Probe:
    """A fresh probe for the plan's health section (plain JSON data); a command probe runs
    ``preexec`` in its child before exec."""
    if health["kind"] == "http":
        return HttpProbe(host, int(health["host_port"]), health["path"], health["timeout"])
    if health["kind"] == "tcp":
        return TcpProbe(host, int(health["host_port"]), health["timeout"])
    return CommandProbe(list(health["command"]), env, health["timeout"], preexec)
