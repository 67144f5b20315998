"""One HTTP request to an engine's API (dockerd's, podman's service) on its unix socket."""

from __future__ import annotations

import json
from typing import Any


def api_request(
    sock_path: str, method: str, path: str, body: Any, timeout: float
) -> tuple[int, str]:
    """One request to an engine's API (dockerd's, podman's) on its unix socket: (status,
    response body).

    HTTP/1.0, so the engine answers with a plain body and closes the connection:
    ``http.client`` would cost more to import than the request takes.

    Raises:
        OSError: the socket cannot be reached, or no answer within ``timeout``.
        ValueError: the answer is not HTTP.
    """
    import socket

    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: {len(data)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    chunks = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(sock_path)
        sock.sendall(head.encode() + b"\r\n" + data)
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    reply = b"".join(chunks)
    status_line, _, rest = reply.partition(b"\r\n")
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
    return int(parts[1]), rest.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")
