"""`las serve`: the runtime's operations over HTTP (service/server.py)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The unix socket to serve on (default: $LAS_HOME/las.sock).",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Also serve on TCP, with the bearer token of $LAS_HOME/api-token; an address"
    " other than loopback needs the policy's network.api_expose.",
)
def serve(socket_path: Path | None, listen: str | None) -> None:
    """Serve the API (docs/api.md) until SIGTERM or Ctrl-C; workloads keep running."""
    from localaistack.service.server import serve as run_service
    from localaistack.store.paths import las_home

    home = las_home()
    run_service(home, socket_path or home / "las.sock", listen)


COMMANDS = (serve,)
