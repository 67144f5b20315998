"""A stand-in for `las serve` that answers what a routes file says: a real HTTP/1.1 server
on a unix socket or a TCP port, for testing the client (ops/remote.py) at the wire.

Usage: fakeservice.py (unix PATH | tcp HOST PORT) ROUTES RECORD READY

ROUTES (JSON, re-read on every request): {"METHOD RAW_PATH": answer}; RAW_PATH as sent
(percent-encoded), without the query. An answer:
  {"status": N, "headers": {...}, "json": X}   a JSON body (Content-Length)
  {"status": N, "headers": {...}, "text": S}   a text body
  "delay": S (with either)                    answer after S seconds
  {"hang": true}                              read the request, never answer
  {"close": true}                             close the connection without an answer
  {"chunks": [S, ...], "gate": PATH}          chunked text: the first chunk, then the rest
                                              once PATH exists (not in 30 s: cut off)
  {"sse": {"events": [E, ...], "per_connection": N, "partial": bool, "cut": "chunked"
           | "close", "resend": N}}
      an event stream of the events with an id above Last-Event-ID (else ?after), each
      after a ": ping" comment; after N of them the connection is cut (chunked: mid-body,
      no last chunk; close: an HTTP/1.0-style body ended by closing), after a half-written
      event if "partial"; with no event left, a ping every 0.1 s until the client leaves.
      "resend": a reopened stream starts N events before its Last-Event-ID (duplicates).
No route: 404 with a problem body. Each request is appended to RECORD (JSON lines: method,
target, path, query, headers (lower-case names), body) before it is answered. READY gets
the address once listening (for tcp PORT 0: the port chosen).
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

if sys.argv[1] == "unix":
    sock_path, routes_path, record_path, ready_path = sys.argv[2:6]
else:
    host, port_text, routes_path, record_path, ready_path = sys.argv[2:7]
lock = threading.Lock()


def routes() -> dict[str, Any]:
    try:
        return json.loads(Path(routes_path).read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def _any(self) -> None:
        target = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        entry = {
            "method": self.command,
            "target": self.path,
            "path": target.path,
            "query": dict(urllib.parse.parse_qsl(target.query)),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        with lock, open(record_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        answer = routes().get(f"{self.command} {target.path}")
        if answer is None:
            answer = {
                "status": 404,
                "headers": {"Content-Type": "application/problem+json"},
                "json": {"type": "about:blank", "title": "Not found", "detail": "no route"},
            }
        self._answer(answer, entry)

    do_GET = do_POST = do_DELETE = do_PUT = _any  # noqa: N815 (http.server's names)

    def _answer(self, answer: dict[str, Any], entry: dict[str, Any]) -> None:
        if answer.get("hang"):
            time.sleep(3600)
        if answer.get("close"):
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        time.sleep(answer.get("delay", 0))
        if "chunks" in answer:
            self._chunks(answer["chunks"], Path(answer["gate"]))
        elif "sse" in answer:
            self._sse(answer["sse"], entry)
        else:
            if "json" in answer:
                data = json.dumps(answer["json"]).encode()
                kind = "application/json"
            else:
                data = answer.get("text", "").encode()
                kind = "text/plain; charset=utf-8"
            self.send_response(answer.get("status", 200))
            headers = {"Content-Type": kind, **answer.get("headers", {})}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _chunks(self, chunks: list[str], gate: Path) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(chunks[0].encode())
        deadline = time.monotonic() + 30
        while not gate.exists():
            if time.monotonic() > deadline:
                self._cut()  # the client waited for more than it was sent: fail it
                return
            time.sleep(0.01)
        for chunk in chunks[1:]:
            self._chunk(chunk.encode())
        self.wfile.write(b"0\r\n\r\n")

    def _sse(self, spec: dict[str, Any], entry: dict[str, Any]) -> None:
        chunked = spec.get("cut", "chunked") == "chunked"
        start = int(entry["headers"].get("last-event-id", entry["query"].get("after", "0")))
        if "last-event-id" in entry["headers"]:
            start -= spec.get("resend", 0)  # a server that resends what the client has seen
        left = [e for e in spec["events"] if e["id"] > start]
        if chunked:
            self.send_response(200)
        else:
            self.protocol_version = "HTTP/1.0"
            self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()

        def send(text: str) -> None:
            data = text.encode()
            if chunked:
                self._chunk(data)
            else:
                self.wfile.write(data)
                self.wfile.flush()

        per = spec.get("per_connection", len(left) + 1)
        for sent, event in enumerate(left):
            if sent == per:
                if spec.get("partial"):
                    half = json.dumps(event)[:20]  # not JSON: dispatched, it would fail
                    send(f"id: {event['id']}\nevent: {event['type']}\ndata: {half}")
                self._cut()
                return
            send(": ping\n\n")
            send(f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n")
        try:
            while True:
                send(": ping\n\n")
                time.sleep(0.1)
        except OSError:
            return  # the client left


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class TcpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


server: socketserver.BaseServer
if sys.argv[1] == "unix":
    server = UnixServer(sock_path, Handler)
    address = sock_path
else:
    server = TcpServer((host, int(port_text)), Handler)
    address = str(server.server_address[1])
tmp = ready_path + ".tmp"
Path(tmp).write_text(address)
os.replace(tmp, ready_path)
server.serve_forever()
