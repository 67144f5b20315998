"""A workload whose descendants leave its process group (tests/chaos/test_orphans.py).

Every escaped descendant calls ``setsid`` (``--double-fork``: and forks again, its parent
exiting, as a daemon does), ignores SIGTERM unless ``--obey-term``, appends its pid to
``--pidfile`` and sleeps; ``--chain N`` makes each one start the next (N generations),
``--many N`` starts N of them side by side. Once every pid is in the file the main process
prints ``ready`` and then does what ``--main`` says: ``wait`` (sleep; ``--main-ignore-term``
ignores SIGTERM), ``exit0``, ``segv``, ``abort`` or ``hog`` (allocate memory until killed).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def record(pidfile: str) -> None:
    fd = os.open(pidfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)


def escape(args: argparse.Namespace, generations: int) -> None:
    """Fork a descendant that leaves the group; it starts ``generations - 1`` more."""
    if os.fork() != 0:
        return
    try:
        os.setsid()
        if args.double_fork and os.fork() != 0:
            os._exit(0)  # the daemon's first child exits: the grandchild is re-parented
        if not args.obey_term:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        record(args.pidfile)
        if generations > 1:
            escape(args, generations - 1)
        while True:
            time.sleep(3600)
    finally:
        os._exit(0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pidfile", required=True)
    p.add_argument("--chain", type=int, default=1)
    p.add_argument("--many", type=int, default=1)
    p.add_argument("--double-fork", action="store_true")
    p.add_argument("--obey-term", action="store_true")
    p.add_argument("--main", choices=["wait", "exit0", "segv", "abort", "hog"], default="wait")
    p.add_argument("--main-ignore-term", action="store_true")
    args = p.parse_args()
    if args.main_ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record(args.pidfile)
    for _ in range(args.many):
        escape(args, args.chain)
    expected = 1 + args.many * args.chain
    while True:  # every descendant has written its pid
        with open(args.pidfile) as f:
            if len(f.read().split()) >= expected:
                break
        time.sleep(0.01)
    print("ready", flush=True)
    if args.main == "exit0":
        sys.exit(0)
    if args.main == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if args.main == "abort":
        os.abort()
    hog = []
    while args.main == "hog":
        hog.append(bytearray(8 << 20))
        time.sleep(0.01)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
