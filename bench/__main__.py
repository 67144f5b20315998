"""Every benchmark in one run: `python -m bench [--quick] [--write-docs]`.

Runs the native, planning, container, llama.cpp and service benchmarks (each side by side
with its peer), prints one table, saves the raw numbers under bench/results/ (git-ignored), and with
--write-docs writes docs/benchmarks.md: the table as measured, the machine, the date, and
the hand-written analysis from bench/analysis.md (which holds no figures).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import containers, llama, native, planning, serve
from bench.harness import Row, machine, save, table

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
ANALYSIS = Path(__file__).resolve().parent / "analysis.md"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repetitions")
    parser.add_argument("--write-docs", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    t0 = time.monotonic()
    rows: list[Row] = []
    for part in (native, planning, containers, llama, serve):
        rows += part.collect(args.quick)
    took = time.monotonic() - t0
    m = machine()
    text = table(rows)
    raw = save("all", rows, {"quick": args.quick, "seconds": round(took)})
    print(f"machine: {m}")
    print(text)
    print(f"raw numbers: {raw} ({took:.0f} s)")
    if args.write_docs:
        kind = "quick" if args.quick else "full"
        DOCS.write_text(
            "# Benchmarks\n\n"
            f"Measured by `python -m bench --write-docs` ({kind} run, {took / 60:.1f} minutes) "
            f"on {m['date']}: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux "
            f"{m['kernel']}, Python {m['python']}. Medians with [min .. max]; a spread over "
            "1.5x (or a row's tighter limit, given in its note) is flagged noisy. This file "
            "is generated: the table is never edited by hand.\n\n"
            + text
            + "\n\n"
            + ANALYSIS.read_text()
        )
        print(f"wrote {DOCS}")


if __name__ == "__main__":
    main()
