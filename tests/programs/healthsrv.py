"""A test HTTP server told how to answer by a control file (re-read on every request).

Control file contents: `200`, `500`, `503`, `hang` (accept, never answer), `close`
(accept and close at once), `flap` (alternate 200 and 500), or `ready-after S` (503 for S
seconds after start, then 200). Missing file: 200. Usage: healthsrv.py HOST PORT CONTROL
"""

from __future__ import annotations

import http.server
import socket
import sys
import time
from pathlib import Path

host, port, control = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
started = time.monotonic()
calls = [0]


def mode() -> str:
    try:
        return control.read_text().strip()
    except FileNotFoundError:
        return "200"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        calls[0] += 1
        m = mode()
        if m == "hang":
            time.sleep(3600)
        if m == "close":
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if m.startswith("ready-after"):
            code = 200 if time.monotonic() - started >= float(m.split()[1]) else 503
        elif m == "flap":
            code = 200 if calls[0] % 2 else 500
        else:
            code = int(m)
        body = f"{code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


print(f"healthsrv on {host}:{port}", flush=True)
http.server.ThreadingHTTPServer((host, port), Handler).serve_forever()
