"""Free host ports."""

from __future__ import annotations

from collections.abc import Collection


def free_port(host: str, avoid: Collection[int] = ()) -> int:
    """A port on ``host`` that nothing listens on now, chosen by the kernel.

    ``avoid`` lists ports already promised to other instances (they may not be bound yet).
    The port can still be taken by someone else before the workload binds it; the workload
    then fails with its own error, which the runtime records.
    """
    import socket  # imported here: a `las run` without ports does without it

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(64):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port
    raise OSError("no free port found")
