"""The operations over HTTP: a client of `las serve` (docs/api.md).

``RemoteOperations(host)`` does what ``LocalOperations`` does in process, by asking the
service named by ``--host`` / ``LAS_HOST``: ``unix:///ABS/PATH.sock`` (its socket) or
``http(s)://HOST:PORT`` (a ``--listen`` address, with a bearer token). The errors are the
same ``LasError``s, rebuilt from the service's problem bodies (``problems.error_of``); a
service that cannot be reached is a ``ServiceUnavailable`` (exit 6).

Timeouts: connecting is bounded (5 s, or ``timeout`` if less); an answer is awaited
``timeout`` seconds (30 by default), except where the operation itself waits:
run/start/restart (until healthy), stop and a forced remove (until the run has ended), and
a followed log (until the run ends). A followed event stream is read with a deadline of
60 s between bytes (the service sends a comment every 15 s); a stream that breaks off is
reopened from the last event seen.

Imports only the operations' models, the error tree and httpx (an import-linter contract).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpcore
import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from localaistack import __version__
from localaistack.errors import (
    Interrupted,
    LasError,
    ServiceUnavailable,
    UsageError,
)
from localaistack.ops import problems
from localaistack.ops.api import (
    EventInfo,
    InstanceDetail,
    InstanceSummary,
    Operations,
    PlanRequestBody,
    RemoveOutcome,
    RestartRequest,
    RunRequest,
    StartOutcome,
    StartRequest,
    StopOutcome,
    StopRequest,
)
from localaistack.plan import ExecutionPlan

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

CONNECT_TIMEOUT = 5.0
WAIT_TIMEOUT = 24 * 3600.0  # an operation that waits (until healthy, until stopped)
STREAM_IDLE = 60.0  # the event stream: a ping every 15 s, so 60 s of silence is a dead link
MAX_STOP_TIMEOUT = 3600.0  # StopRequest.timeout's bound: the longest a stop may take

HOST_FORMS = (
    "unix:///ABSOLUTE/PATH.sock (the service's socket, e.g. unix://$LAS_HOME/las.sock) "
    "or http://HOST:PORT / https://HOST:PORT (a `las serve --listen HOST:PORT`)"
)
_UNAVAILABLE_HINT = (
    "is `las serve` running there? Start it with `las serve`, or name another service "
    "with --host / LAS_HOST (without them, las works in process)"
)
_VERSION_HINT = "the client and the service may be different versions of las"
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: a header value


@dataclass(frozen=True)
class Address:
    """Where the service listens: ``kind`` unix (``socket``) or tcp (``base_url``)."""

    kind: Literal["unix", "tcp"]
    base_url: str
    socket: str | None
    shown: str  # as the user wrote it, for messages


def parse_host(host: str) -> Address:
    """The service address ``host`` names, or a ``UsageError`` with the accepted forms."""

    def bad(why: str) -> UsageError:
        return UsageError(
            f"--host / LAS_HOST {host!r}: {why}", hint=f"a service address is {HOST_FORMS}"
        )

    if not host or host != host.strip():
        raise bad("empty" if not host.strip() else "surrounding spaces")
    if "\x00" in host:
        raise bad("a NUL byte")
    scheme, sep, rest = host.partition("://")
    if not sep:
        raise bad("no scheme (unix://, http:// or https://)")
    scheme = scheme.lower()
    if scheme == "unix":
        if not rest.startswith("/"):
            raise bad("a unix socket's path must be absolute (unix:///PATH: three slashes)")
        if rest.endswith("/"):
            raise bad("names a directory, not a socket")
        return Address("unix", "http://las", rest, host)
    if scheme not in ("http", "https"):
        raise bad(f"unknown scheme {scheme + '://'!r}")
    parts = urllib.parse.urlsplit(host)
    if parts.username is not None or parts.password is not None:
        raise bad("credentials in the address (the token goes in LAS_TOKEN)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad("a path, query or fragment (only HOST:PORT)")
    if not parts.hostname:
        raise bad("no host")
    try:
        port = parts.port
    except ValueError:
        raise bad("the port is not a number from 1 to 65535") from None
    if port == 0:
        raise bad("the port is not a number from 1 to 65535")
    return Address("tcp", f"{scheme}://{parts.netloc}", None, host)


def _token(given: str | None, home: Path | None) -> str | None:
    """The bearer token: ``given``, else ``LAS_TOKEN``, else ``HOME/api-token`` if
    readable. A token unfit for a header is a UsageError that does not show it."""
    source, token = "the token given", given
    if not token:
        source, token = "LAS_TOKEN", os.environ.get("LAS_TOKEN")
    if not token and home is not None:
        path = home / "api-token"
        try:
            source, token = str(path), path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            token = None
    if not token:
        return None
    token = token.strip()
    if not _TOKEN_RE.fullmatch(token):
        raise UsageError(
            f"{source} is not a usable token (printable ASCII with no spaces)",
            hint="use the token `las serve` wrote in $LAS_HOME/api-token on the service's host",
        )
    return token


def _quote(name: str) -> str:
    """A name as one path segment: ``?RUN_ID`` -> ``%3FRUN_ID``, ``/`` escaped too."""
    return urllib.parse.quote(name, safe="")


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _reason(exc: Exception) -> str:
    """``[Errno 111] Connection refused`` -> ``connection refused``."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc).strip()) or type(exc).__name__
    return text[0].lower() + text[1:]


class _UnixBackend(httpcore.SyncBackend):
    """httpcore's network backend, but a unix socket that cannot connect is closed: httpcore
    1.0 leaves it to the garbage collector (a ResourceWarning, an open descriptor until
    then), once per attempt, and a followed event stream retries."""

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        from httpcore._backends.sync import SyncStream  # httpcore's own, for its keep-alive

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            sock.connect(path)
        except TimeoutError as exc:
            sock.close()
            raise httpcore.ConnectTimeout(exc) from exc
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(exc) from exc
        return SyncStream(sock)


def _unix_transport(path: str) -> httpx.HTTPTransport:
    """httpx's transport on the unix socket ``path``, its pool on ``_UnixBackend``."""
    transport = httpx.HTTPTransport(uds=path)
    try:
        from httpcore._backends.sync import SyncStream  # noqa: F401 (there: use it)
    except ImportError:  # pragma: no cover (another httpcore: its own backend, leak and all)
        return transport
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5)
    transport._pool = httpcore.ConnectionPool(  # as HTTPTransport makes it, on our backend
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        uds=path,
        network_backend=_UnixBackend(),
    )
    return transport


class RemoteOperations(Operations):
    """The operations of the service at ``host`` (``parse_host``'s forms).

    ``token``: the bearer token for a TCP address (else ``LAS_TOKEN``, else
    ``home/api-token`` if readable; never sent over a unix socket, whose file mode is the
    access control). ``timeout``: seconds to await an answer to an operation that does not
    wait, and to keep reopening a broken event stream.
    """

    def __init__(
        self,
        host: str,
        token: str | None = None,
        home: Path | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.address = parse_host(host)
        self.timeout = timeout
        headers = {"User-Agent": f"las/{__version__}", "Accept": "application/json"}
        if self.address.kind == "tcp":
            bearer = _token(token, home)
            if bearer is not None:
                headers["Authorization"] = f"Bearer {bearer}"
        transport = (
            _unix_transport(self.address.socket)
            if self.address.socket is not None
            else httpx.HTTPTransport()
        )
        self._client = httpx.Client(
            transport=transport,
            base_url=self.address.base_url,
            headers=headers,
            timeout=self._timeout(self.timeout),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"<RemoteOperations {self.address.shown}>"

    # --- transport -------------------------------------------------------------------------

    @property
    def _connect_timeout(self) -> float:
        return min(CONNECT_TIMEOUT, self.timeout)

    def _timeout(self, read: float | None) -> httpx.Timeout:
        return httpx.Timeout(self._connect_timeout, read=read, write=max(self.timeout, 30.0))

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: BaseModel | None = None,
        read: float | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send a request; the 2xx response (read in full unless ``stream``). A failure to
        reach the service is a ServiceUnavailable, a non-2xx answer the error it describes.
        ``read``: seconds to await the answer (None: the client's ``timeout``)."""
        content = None
        if body is not None:
            content = json.dumps(body.model_dump(mode="json", by_alias=True)).encode()
            headers = {**(headers or {}), "Content-Type": "application/json"}
        request = self._client.build_request(
            method,
            path,
            params=params,
            content=content,
            headers=headers,
            timeout=self._timeout(self.timeout if read is None else read),
        )
        try:
            response = self._client.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise self._unreachable(exc, read) from exc
        self._take_warnings(response)
        if response.is_success:
            return response
        try:
            response.read()
        except httpx.TransportError as exc:
            raise self._unreachable(exc, read) from exc
        finally:
            response.close()
        raise self._error_of(response)

    def _unreachable(self, exc: httpx.TransportError, read: float | None) -> ServiceUnavailable:
        where = self.address.shown
        if isinstance(exc, httpx.ConnectTimeout):
            return ServiceUnavailable(
                f"cannot reach the service at {where}: no connection in "
                f"{self._connect_timeout:g} s",
                hint=_UNAVAILABLE_HINT,
            )
        if isinstance(exc, httpx.ConnectError):
            why = _reason(exc)
            hint = _UNAVAILABLE_HINT
            if "permission denied" in why and self.address.kind == "unix":
                hint = (
                    "the socket is for its owner and the group `las`: join that group "
                    "(scripts/setup-user), or run las as the service's user"
                )
            if "temporarily unavailable" in why:  # EAGAIN: the socket's backlog is full
                why += " (it accepts no more connections: overloaded or stuck)"
            return ServiceUnavailable(f"cannot reach the service at {where}: {why}", hint=hint)
        if isinstance(exc, httpx.ReadTimeout):
            waited = self.timeout if read is None else read
            return ServiceUnavailable(
                f"the service at {where} did not answer in {waited:g} s",
                hint="it may be overloaded or stuck; its log says more",
            )
        return ServiceUnavailable(
            f"the connection to the service at {where} broke off: {_reason(exc)}",
            hint="the service may have stopped or restarted; `las ps` shows where things are",
        )

    def _take_warnings(self, response: httpx.Response) -> None:
        raw = response.headers.get("las-warnings")
        if not raw:
            return
        try:
            found = json.loads(raw)
        except ValueError:
            found = None
        if isinstance(found, list) and all(isinstance(w, str) for w in found):
            self.warnings.extend(found)
        else:
            self.warnings.append(f"the service sent a Las-Warnings header las cannot read: {raw}")

    def _error_of(self, response: httpx.Response) -> LasError:
        """The LasError a non-2xx answer describes (its problem body rebuilt)."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if (
            isinstance(body, dict)
            and isinstance(body.get("detail"), str)
            and isinstance(body.get("type", body.get("title")), str)
        ):  # a problem (RFC 9457); FastAPI's own {"detail": "Not Found"} is not one
            return problems.error_of(response.status_code, body)
        text = " ".join(response.text.split())[:200] if response.content else ""
        shown = f" ({text})" if text else ""
        return LasError(
            f"the service at {self.address.shown} answered {response.request.method} "
            f"{response.request.url.path} with HTTP {response.status_code} "
            f"{response.reason_phrase} and no problem details{shown}",
            hint=f"is {self.address.shown} a `las serve`? Its log may say more",
        )

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise LasError(
                f"the service at {self.address.shown} answered {response.request.url.path} "
                "with a body that is not JSON",
                hint=_VERSION_HINT,
            ) from None

    def _model(self, response: httpx.Response, model: type[M]) -> M:
        return self._validated(response, TypeAdapter(model))

    def _models(self, response: httpx.Response, model: type[M]) -> list[M]:
        return self._validated(response, TypeAdapter(list[model]))  # type: ignore[valid-type]

    def _validated(self, response: httpx.Response, adapter: TypeAdapter[T]) -> T:
        data = self._json(response)
        try:
            return adapter.validate_python(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the body"
            raise LasError(
                f"the service at {self.address.shown} answered {response.request.url.path} "
                f"with a body las does not understand: {where}: {first['msg']}",
                hint=_VERSION_HINT,
            ) from None

    def _waiting(self, path: str, body: BaseModel, interrupted: Interrupted) -> StartOutcome:
        """POST an operation that waits (until healthy); Ctrl-C -> ``interrupted``."""
        try:
            response = self._send("POST", path, body=body, read=WAIT_TIMEOUT)
        except KeyboardInterrupt:
            raise interrupted from None
        return self._model(response, StartOutcome)

    # --- control ---------------------------------------------------------------------------

    def hardware(self) -> dict[str, Any]:
        response = self._send("GET", "/v1/hardware")
        return self._validated(response, TypeAdapter(dict[str, Any]))

    def modules(self) -> list[dict[str, Any]]:
        response = self._send("GET", "/v1/modules")
        return self._validated(response, TypeAdapter(list[dict[str, Any]]))

    @staticmethod
    def _no_policy(policy_file: Path | None) -> None:
        if policy_file is not None:
            raise UsageError(
                f"--policy {policy_file} cannot be used with --host / LAS_HOST: "
                "the service plans with its own policy",
                hint="drop --policy, or unset LAS_HOST (no --host) to plan here with that file",
            )

    def plan(self, req: PlanRequestBody, policy_file: Path | None = None) -> ExecutionPlan:
        self._no_policy(policy_file)
        response = self._send("POST", "/v1/plans", body=req)
        data = self._json(response)
        if not isinstance(data, dict):
            raise LasError(
                f"the service at {self.address.shown} answered /v1/plans with no plan",
                hint=_VERSION_HINT,
            )
        said = data.pop("plan_id", None)  # `las plan --json` adds it; the plan computes it
        try:  # JSON mode: the plan is strict (a tuple is a JSON array, not a Python list)
            plan = ExecutionPlan.model_validate_json(json.dumps(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the plan"
            raise LasError(
                f"the service at {self.address.shown} answered /v1/plans with a plan las "
                f"does not understand: {where}: {first['msg']}",
                hint=_VERSION_HINT,
            ) from None
        if isinstance(said, str) and said != plan.plan_id:
            self.warnings.append(
                f"the plan's id is {plan.plan_id} here, {said} in the service: {_VERSION_HINT}"
            )
        return plan

    # --- lifecycle -------------------------------------------------------------------------

    @staticmethod
    def _interrupted(name: str | None, doing: str = "starting") -> Interrupted:
        """What a Ctrl-C while the service starts ``name`` means: it goes on (the service
        is another process); only this client stopped waiting."""
        if name is None:  # a manifest path: its name is the manifest's
            return Interrupted(
                f"interrupted: the instance goes on {doing} in the service; las only stopped "
                "waiting for it",
                hint="`las ps` shows it and its name; `las stop NAME` stops it",
            )
        return Interrupted(
            f"interrupted: {name} goes on {doing} in the service; las only stopped waiting for it",
            hint=f"`las stop {name}` stops it; `las ps` and `las logs {name}` show how it goes",
        )

    def run(self, req: RunRequest, policy_file: Path | None = None) -> StartOutcome:
        self._no_policy(policy_file)
        name = req.name
        catalog = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", req.module) and not (
            req.module.endswith((".yaml", ".yml"))
        )
        if name is None and catalog:
            name = req.module  # a catalog name: the instance's default name
        return self._waiting("/v1/instances", req, self._interrupted(name))

    def start(self, name: str, detach: bool = False) -> StartOutcome:
        return self._waiting(
            f"/v1/instances/{_quote(name)}/start",
            StartRequest(detach=detach),
            self._interrupted(name),
        )

    def restart(self, name: str, timeout: float | None, detach: bool = False) -> StartOutcome:
        return self._waiting(
            f"/v1/instances/{_quote(name)}/restart",
            RestartRequest(timeout=timeout, detach=detach),
            self._interrupted(name, "restarting"),
        )

    @staticmethod
    def _stop_wait(timeout: float | None) -> float:
        """How long a stop may take: its timeout (else the longest a plan's may be), then
        the service's own work."""
        return (MAX_STOP_TIMEOUT if timeout is None else max(timeout, 0.0)) + 60.0

    def stop(self, name: str, timeout: float | None) -> StopOutcome:
        try:
            response = self._send(
                "POST",
                f"/v1/instances/{_quote(name)}/stop",
                body=StopRequest(timeout=timeout),
                read=self._stop_wait(timeout),
            )
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted: {name} goes on stopping in the service; las only stopped "
                "waiting for it",
                hint="`las ps` shows when it has stopped",
            ) from None
        return self._model(response, StopOutcome)

    def remove(self, name: str, purge: bool = False, force: bool = False) -> RemoveOutcome:
        response = self._send(
            "DELETE",
            f"/v1/instances/{_quote(name)}",
            params={"purge": _flag(purge), "force": _flag(force)},
            read=self._stop_wait(None) if force else None,
        )
        return self._model(response, RemoveOutcome)

    def ps(self, all_: bool = False) -> list[InstanceSummary]:
        response = self._send("GET", "/v1/instances", params={"all": _flag(all_)})
        return self._models(response, InstanceSummary)

    def inspect(self, name: str) -> InstanceDetail:
        response = self._send("GET", f"/v1/instances/{_quote(name)}")
        return self._model(response, InstanceDetail)

    # --- streams ---------------------------------------------------------------------------

    def logs(
        self,
        name: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        run_id: str | None = None,
        timestamps: bool = False,
    ) -> Iterator[bytes]:
        """The bytes `las logs` would write, as they arrive. The request is made here, so
        an unknown instance or run raises before the first byte is asked for."""
        params = {"follow": _flag(follow), "timestamps": _flag(timestamps)}
        if tail is not None:
            params["tail"] = str(tail)
        if run_id is not None:
            params["run"] = run_id
        response = self._send(
            "GET",
            f"/v1/instances/{_quote(name)}/logs",
            params=params,
            read=None if not follow else WAIT_TIMEOUT,
            headers={"Accept": "text/plain"},
            stream=True,
        )
        return self._chunks(response)

    def _chunks(self, response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise self._unreachable(exc, None) from exc
        finally:
            response.close()

    def events(
        self, *, after: int = 0, tail: int | None = None, follow: bool = False
    ) -> Iterator[EventInfo]:
        """Events after id ``after`` (``tail``: the last N); ``follow``: then each new one
        from the service's event stream, reopened from the last id seen if it breaks off
        (no gap, no duplicate), until the caller stops iterating. The first request is made
        here, so a service that cannot be reached raises before iterating."""
        params = {"after": str(after)}
        if tail is not None:
            params["tail"] = str(tail)
        if not follow or tail is not None:
            response = self._send("GET", "/v1/events", params=params)
            backlog = self._models(response, EventInfo)
            if not follow:
                return iter(backlog)
            after = max([after, *(e.id for e in backlog)])
        else:
            backlog = []
        return self._follow(backlog, self._open_stream(after, resume=False), after)

    def _open_stream(self, last: int, *, resume: bool) -> httpx.Response:
        headers = {"Accept": "text/event-stream"}
        if resume:
            headers["Last-Event-ID"] = str(last)
        response = self._send(
            "GET",
            "/v1/events/stream",
            params={"after": str(last)},
            read=STREAM_IDLE,
            headers=headers,
            stream=True,
        )
        kind = response.headers.get("content-type", "").split(";")[0].strip()
        if kind != "text/event-stream":
            response.close()
            raise LasError(
                f"the service at {self.address.shown} answered /v1/events/stream with "
                f"{kind or 'no content type'}, not an event stream",
                hint=_VERSION_HINT,
            )
        return response

    def _reopen(self, last: int, pause: float) -> httpx.Response:
        """The event stream again, from after ``last`` (after ``pause`` seconds): retried
        while the service cannot be reached, for up to ``timeout`` seconds (an answer that
        is an error raises it)."""
        if pause:
            time.sleep(pause)  # a retry's back-off: a stream that ended with nothing in it
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while True:
            try:
                return self._open_stream(last, resume=True)
            except ServiceUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise ServiceUnavailable(
                        f"the event stream from {self.address.shown} broke off and could not "
                        f"be reopened in {self.timeout:g} s: {exc.message}",
                        hint=exc.hint,
                    ) from exc
            time.sleep(delay)  # a retry's back-off, not a wait for a condition
            delay = min(delay * 2, 1.0)

    def _follow(
        self, backlog: list[EventInfo], response: httpx.Response, last: int
    ) -> Iterator[EventInfo]:
        idle = 0  # streams in a row that ended with no event in them
        try:
            yield from backlog
            while True:
                idle += 1
                try:
                    for sse_id, data in sse_events(response.iter_lines()):
                        idle = 0
                        event = self._event(data)
                        seen = int(sse_id) if sse_id is not None and sse_id.isdigit() else event.id
                        if seen <= last:
                            continue  # already yielded (a resent event): no duplicate
                        last = seen
                        yield event
                except httpx.TransportError:
                    pass  # broken off (or idle past STREAM_IDLE): reopen from ``last``
                finally:
                    response.close()
                response = self._reopen(last, min(0.05 * 2 ** (idle - 1), 1.0) if idle > 1 else 0)
        finally:
            response.close()

    def _event(self, data: str) -> EventInfo:
        try:
            return EventInfo.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the data"
            raise LasError(
                f"the service at {self.address.shown} sent an event las does not "
                f"understand: {where}: {first['msg']}",
                hint=_VERSION_HINT,
            ) from None


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str | None, str]]:
    """Server-sent events from a stream's lines (without their line ends): each event's
    ``(id, data)``, dispatched at the blank line that ends it. Comments (``: ping``) and
    other fields (``event``, ``retry``) are skipped; an event with no data is not
    dispatched, and neither is one cut off before its blank line."""
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event_id, "\n".join(data)
            event_id, data = None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "id" and "\x00" not in value:
            event_id = value


__all__ = ["HOST_FORMS", "Address", "RemoteOperations", "parse_host", "sse_events"]
