"""`las serve`: the API (app.py) on a unix socket, and on TCP only when asked.

* The socket (default ``$LAS_HOME/las.sock``) needs no token: its mode is its access
  control (0600; 0660 and group ``las`` when run as root and that group exists). A socket
  file left by a service that is gone is replaced; one that answers is refused.
* ``--listen HOST:PORT`` adds a TCP listener that requires ``Authorization: Bearer
  <token>``, the token of ``$LAS_HOME/api-token`` (0600, made once). An address that is
  not loopback must be listed in the policy's ``network.api_expose``.
* One log line per request on stderr (method, path, status, time); never a token or body.
* SIGTERM / SIGINT: stop accepting, let the requests in flight end (a few seconds), exit.
  Supervisors and workloads are not touched: they run on, and a new service sees them.
* Supervisors started here are this process's children: the exited ones are reaped
  (``spawn.reap_children``) every second and at each SIGCHLD.
* ``READY=1`` goes to ``$NOTIFY_SOCKET`` (systemd ``Type=notify``) once both listen.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import hmac
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Generator, Iterable
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from localaistack.errors import PolicyViolation, StoreError, UsageError
from localaistack.ops.api import Operations
from localaistack.ops.problems import MEDIA_TYPE, plain_problem
from localaistack.service.app import shown_path
from localaistack.service.events import EventHub

log = logging.getLogger("las.serve")

TOKEN_FILE = "api-token"
SOCKET_GROUP = "las"
GRACE_SECONDS = 5.0  # requests in flight at a stop get this long to finish
REAP_SECONDS = 30.0  # reaping is on SIGCHLD; this is only a safety net


# --- the address to listen on ---------------------------------------------------------


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; ``localhost`` is 127.0.0.1) -> (ip, port).

    Raises:
        UsageError: not an IP address and a port 0-65535.
    """
    hint = "e.g. --listen 127.0.0.1:8765 (or [::1]:8765)"
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise UsageError(f"--listen {value!r} is not HOST:PORT", hint=hint)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--listen {value!r}: {host!r} is not an IP address", hint=hint) from None
    if not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {value!r}: {port!r} is not a port (0-65535)", hint=hint)
    return str(ip), int(port)


def check_listen_allowed(host: str, api_expose: Iterable[str], source: str) -> None:
    """A loopback address is always allowed; another only when the policy lists it.

    Raises:
        PolicyViolation: the policy does not list ``host`` in ``network.api_expose``.
    """
    ip = ipaddress.ip_address(host)
    if ip.is_loopback:
        return
    if any(ipaddress.ip_address(a) == ip for a in api_expose):
        return
    raise PolicyViolation(
        f"the policy ({source}) does not allow the API on {host}: only loopback addresses,"
        " and those listed in network.api_expose",
        hint=f"add {host} to network.api_expose in the policy, or listen on 127.0.0.1",
    )


# --- the token ----------------------------------------------------------------------------


def ensure_token(home: Path) -> str:
    """The API token of ``home`` (``api-token``, 0600), made now if there is none.

    Raises:
        StoreError: the file cannot be read or written.
    """
    path = home / TOKEN_FILE
    try:
        text = path.read_text().strip()
        if text:
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                path.chmod(0o600)
            return text
    except FileNotFoundError:
        pass
    except OSError as exc:
        hint = "check its permissions"
        raise StoreError(f"cannot read {path}: {exc.strerror}", hint=hint) from exc
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreError(f"cannot write {path}: {exc.strerror}", hint="check LAS_HOME") from exc
    return token


class BearerAuth:
    """An ASGI wrapper that answers 401 (a problem, ``WWW-Authenticate: Bearer``) to a
    request without ``Authorization: Bearer <token>``; neither the answer nor the log
    shows what was sent."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        sent = [v for k, v in scope["headers"] if k == b"authorization"]
        scheme, _, given = (sent[0] if len(sent) == 1 else b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        detail = "a bearer token is required" if not sent else "the bearer token is not valid"
        body = json.dumps(
            plain_problem(
                401,
                "Unauthorized",
                detail,
                hint="send Authorization: Bearer <the token in $LAS_HOME/api-token>"
                " (the client reads LAS_TOKEN, else that file)",
            ),
            separators=(",", ":"),
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="las"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        ms = (time.monotonic() - t0) * 1000
        log.info("%s %s 401 %.0fms", scope["method"], shown_path(scope), ms)


# --- the sockets --------------------------------------------------------------------------


def _socket_mode() -> tuple[int, int | None]:
    """The socket's mode and group: 0660 and ``las`` as root when that group exists."""
    if os.geteuid() == 0:
        try:
            return 0o660, grp.getgrnam(SOCKET_GROUP).gr_gid
        except KeyError:
            pass
    return 0o600, None


def _make_socket_dir(directory: Path, gid: int | None) -> None:
    """Create the socket's directory if it is missing: 0700, or, where the socket is the
    group's (``gid``), 0750 and that group's, so that its members can reach the socket
    (``$LAS_HOME`` itself stays 0700: as root, `las serve --socket
    /run/localaistack/las.sock` is how a group member reaches it)."""
    if directory.exists():
        return
    try:
        directory.mkdir(mode=0o700, parents=True)
        if gid is not None:
            os.chown(directory, -1, gid)
            os.chmod(directory, 0o750)
    except OSError as exc:
        raise UsageError(
            f"cannot create the socket's directory {directory}: {exc.strerror}",
            hint="choose another --socket",
        ) from exc


def bind_unix(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, its mode set before anyone can connect.

    Raises:
        UsageError: another service answers there, the path is not a socket, or it cannot
            be bound (too long, no such directory...).
    """
    hint = "stop the other `las serve`, or choose another --socket"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UsageError(f"cannot use the socket {path}: {exc.strerror}") from exc
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise UsageError(f"{path} exists and is not a socket", hint="choose another --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing the stale socket %s (nothing answers on it)", path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        except OSError as exc:
            raise UsageError(f"cannot check the socket {path}: {exc.strerror}", hint=hint) from exc
        else:
            raise UsageError(f"another service is listening on {path}", hint=hint)
        finally:
            probe.close()
    mode, gid = _socket_mode()
    _make_socket_dir(path.parent, gid)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is born 0600; opened to the group below, if at all
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        raise UsageError(f"cannot listen on {path}: {why}", hint="choose another --socket") from exc
    finally:
        os.umask(old)
    try:
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
        sock.listen(128)
    except OSError:
        sock.close()
        path.unlink(missing_ok=True)
        raise
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket.

    Raises:
        UsageError: the address cannot be bound (in use, not this machine's).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise UsageError(
            f"cannot listen on {where}: {exc.strerror or exc}",
            hint="choose another address or port"
            + (" (the port is taken)" if exc.errno == errno.EADDRINUSE else ""),
        ) from exc


# --- systemd ---------------------------------------------------------------------------------


def sd_notify(message: str, address: str | None) -> bool:
    """Send ``message`` (``READY=1``) to systemd's notify socket ``address`` (a path, or
    ``@name`` for an abstract one); False when there is none or it cannot be reached."""
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(target)
            s.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc.strerror or exc)
        return False
    return True


# --- the service -----------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the signals to ``serve`` (it runs two of them), and
    ticks once a second, not ten times (an idle service costs ~0 CPU): ``stop`` wakes
    it at once."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._wake = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def stop(self, force: bool = False) -> None:
        self.should_exit = True
        self.force_exit = self.force_exit or force
        self._wake.set()

    async def main_loop(self) -> None:
        # uvicorn's loop, with its 0.1 s sleep made 1 s (on_tick's once-a-second work is
        # every tenth tick: counter steps of 10 keep it so).
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            should_exit = await self.on_tick(counter)


def setup_logging() -> None:
    """Readable lines on stderr: ``2026-12-02T10:00:00Z INFO GET /v1/health 200 1ms``."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    # uvicorn's own lines (started, shutting down: one per listener) only from warnings up.
    levels = (("las", logging.INFO), ("localaistack", logging.INFO), ("uvicorn", logging.WARNING))
    for name, level in levels:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def serve(
    home: Path,
    socket_path: Path,
    listen: str | None,
    *,
    ops_factory: Callable[[], Operations] | None = None,
) -> None:
    """Serve the API of ``home`` until SIGTERM or SIGINT.

    Raises:
        UsageError: a bad ``listen``, or a socket that cannot be used.
        PolicyViolation: ``listen`` is not loopback and the policy does not allow it.
        StoreError, PolicyError: ``home`` or its policy cannot be used.
    """
    from localaistack.service.app import create_app
    from localaistack.store.paths import ensure_home

    setup_logging()
    tcp_addr = parse_listen(listen) if listen is not None else None
    home = ensure_home(home)
    token: str | None = None
    if tcp_addr is not None:
        from localaistack.control.policy import load_policy

        policy = load_policy(None, home)
        check_listen_allowed(tcp_addr[0], policy.network.api_expose, policy.source)
        token = ensure_token(home)
    spares = None
    if ops_factory is None:
        from localaistack.ops.local import LocalOperations
        from localaistack.runtime.supervision import SparePool

        # A supervisor spawned ahead for the next start: it is a new Python, slower to get
        # ready than planning and admission are (docs/api.md, "Start latency").
        spares = SparePool(home / "state.db", home)

        def ops_factory() -> Operations:
            return LocalOperations(home, spares=spares)

    from localaistack.service.metrics import ServiceMetrics

    hub = EventHub(home / "state.db")
    hub.start()  # a store that cannot be read: its StoreError, before anything listens
    metrics = ServiceMetrics(home)
    try:
        app = create_app(home, ops_factory, hub=hub, metrics=metrics)
        factory = ops_factory

        def before() -> None:
            _autostart(home, factory)
            if spares is not None:
                spares.refill()

        _listen_and_serve(app, socket_path, tcp_addr, token, hub, before=before)
    finally:
        hub.close()
        metrics.close()
        if spares is not None:
            spares.close()


def _autostart(home: Path, ops_factory: Callable[[], Operations]) -> None:
    """The restart policies at a service start (service/boot.py). A store that cannot be
    used at all is logged, and the service serves all the same (its answers say why)."""
    from localaistack.service.boot import restart_at_start

    try:
        restart_at_start(home, ops_factory)  # it logs each start, and each refusal
    except StoreError as exc:
        log.error("restart policies not applied at this start: %s", exc.message)


def _listen_and_serve(
    app: ASGIApp,
    socket_path: Path,
    tcp_addr: tuple[str, int] | None,
    token: str | None,
    hub: EventHub,
    before: Callable[[], None] = lambda: None,
) -> None:
    # The notify socket is the service's: a supervisor (and its workload) must not inherit it.
    notify_socket = os.environ.pop("NOTIFY_SOCKET", None)

    listeners: list[tuple[ASGIApp, socket.socket, str]] = []
    unix_sock = bind_unix(socket_path)
    bound = os.lstat(socket_path)  # to remove the file at the end, if it is still ours
    try:
        before()  # with the socket held: a second service refused before it starts anything
        listeners.append((app, unix_sock, f"unix:{socket_path}"))
        if tcp_addr is not None and token is not None:
            tcp_sock = bind_tcp(*tcp_addr)
            host, port = tcp_sock.getsockname()[:2]
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            listeners.append((BearerAuth(app, token), tcp_sock, f"http://{shown}"))
        asyncio.run(_main(listeners, notify_socket, lambda: hub.close(timeout=0)))
    finally:
        for _, sock, _ in listeners:
            sock.close()
        with contextlib.suppress(OSError):
            now = os.lstat(socket_path)
            if (now.st_dev, now.st_ino) == (bound.st_dev, bound.st_ino):
                socket_path.unlink()
        unix_sock.close()


async def _main(
    listeners: list[tuple[ASGIApp, socket.socket, str]],
    notify: str | None,
    on_stop: Callable[[], None],
) -> None:
    from localaistack.runtime.spawn import reap_children

    servers = [
        _Server(
            uvicorn.Config(
                app,
                lifespan="off",
                log_config=None,
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=int(GRACE_SECONDS),
                http="h11",
                loop="asyncio",
            )
        )
        for app, _, _ in listeners
    ]
    loop = asyncio.get_running_loop()
    signals = [0]

    def stop(signum: int) -> None:
        signals[0] += 1
        if signals[0] == 1:
            log.info("%s: stopping (workloads keep running)", signal.Signals(signum).name)
            on_stop()  # the event streams end now: uvicorn waits for open responses
            if notify:
                sd_notify("STOPPING=1", notify)
        else:
            log.info("%s again: not waiting for requests in flight", signal.Signals(signum).name)
        for s in servers:
            s.stop(force=signals[0] > 1)

    def reap() -> None:
        with contextlib.suppress(Exception):
            if n := reap_children():
                log.info("reaped %d exited supervisor%s", n, "s" if n > 1 else "")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    loop.add_signal_handler(signal.SIGCHLD, reap)
    tasks = [
        asyncio.create_task(s.serve(sockets=[sock]))
        for s, (_, sock, _) in zip(servers, listeners, strict=True)
    ]
    try:
        # uvicorn says when it serves only by its flag: wait for it, or for a server's end.
        while not all(s.started for s in servers) and not any(t.done() for t in tasks):
            await asyncio.sleep(0.01)
        if all(s.started for s in servers) and not signals[0]:
            for _, _, where in listeners:
                log.info("las serve: listening on %s", where)
            if notify:
                sd_notify("READY=1\nSTATUS=listening", notify)
        if any(t.done() for t in tasks):  # one ended: all end
            for s in servers:
                s.stop()
        while not all(t.done() for t in tasks):
            reap()
            await asyncio.wait(tasks, timeout=REAP_SECONDS)
            if any(t.done() for t in tasks):
                for s in servers:
                    s.stop()
        for t in tasks:
            await t  # a server's error, if any
        reap()
        log.info("las serve: stopped")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            loop.remove_signal_handler(sig)
