"""A test workload whose behaviour is chosen by flags (a real process, not a mock)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--exit", type=int, default=None, help="exit with this code at once")
    p.add_argument("--segv", action="store_true", help="die of SIGSEGV")
    p.add_argument("--lines", type=int, default=0, help="print N numbered lines, then idle")
    p.add_argument("--stderr", default=None, help="print this on stderr first")
    p.add_argument("--grandchildren", type=int, default=0, help="spawn N sleeping children")
    p.add_argument("--pidfile", default=None, help="write the pids of the tree here")
    p.add_argument("--exit-after-lines", action="store_true")
    p.add_argument("--env", default=None, help="print this environment variable")
    args = p.parse_args()

    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.stderr:
        print(args.stderr, file=sys.stderr, flush=True)
    if args.env:
        print(f"{args.env}={os.environ.get(args.env, '<unset>')!s}", flush=True)
    pids = [os.getpid()]
    for _ in range(args.grandchildren):
        child = subprocess.Popen(["sleep", "1000"])
        pids.append(child.pid)
    if args.pidfile:
        with open(args.pidfile + ".tmp", "w") as f:
            f.write(" ".join(map(str, pids)))
        os.replace(args.pidfile + ".tmp", args.pidfile)
    if args.lines:
        out = sys.stdout
        for i in range(args.lines):
            out.write(f"line {i:06d} " + "x" * 40 + "\n")
        out.flush()
        if args.exit_after_lines:
            sys.exit(0)
    if args.segv:
        os.kill(os.getpid(), signal.SIGSEGV)
    if args.exit is not None:
        print(f"exiting with {args.exit}", file=sys.stderr, flush=True)
        sys.exit(args.exit)
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
