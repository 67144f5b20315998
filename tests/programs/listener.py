"""A workload that opens a socket late (tests/chaos/test_listeners.py).

After ``--delay`` seconds it (or, ``--via grandchild``, a double-forked descendant in a
session of its own) opens a ``--proto`` socket bound to ``--addr`` (TCP: listening; UDP:
bound, or with ``--connect HOST`` connected to HOST port 9, a client), writes the time and
the port to ``--stamp`` right after (``-``: to stdout), prints ``opened`` and sleeps.
"""

from __future__ import annotations

import argparse
import os
import socket
import time


def open_socket(args: argparse.Namespace) -> socket.socket:
    family = socket.AF_INET6 if ":" in args.addr else socket.AF_INET
    kind = socket.SOCK_STREAM if args.proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((args.addr, 0))
    if args.proto == "tcp":
        s.listen()
    elif args.connect:
        s.connect((args.connect, 9))
    line = f"{time.time()} {s.getsockname()[1]} {s.getsockname()[0]}\n"
    if args.stamp == "-":  # (a sandbox cannot write files) on stdout
        print("stamp", line, end="", flush=True)
        return s
    with open(args.stamp + ".tmp", "w") as f:
        f.write(line)
    os.replace(args.stamp + ".tmp", args.stamp)
    return s


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--proto", choices=["tcp", "udp"], default="tcp")
    p.add_argument("--addr", default="0.0.0.0")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--stamp", required=True)
    p.add_argument("--via", choices=["self", "grandchild"], default="self")
    p.add_argument("--connect", default=None)
    args = p.parse_args()
    print("started", flush=True)
    if args.via == "grandchild" and os.fork() == 0:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        time.sleep(args.delay)
        keep = open_socket(args)
        print("opened by", os.getpid(), flush=True)
        while keep:
            time.sleep(3600)
    if args.via == "self":
        time.sleep(args.delay)
        keep = open_socket(args)
        print("opened", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
