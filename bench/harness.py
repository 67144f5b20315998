"""Small benchmark harness: alternate A/B, warm up, take medians, print one table.

Numbers are measured, never edited: every row comes from samples taken in this run, on this
machine. A spread (max/min) over a row's noise limit (1.5 unless the row sets a tighter one,
as a row judged against a narrow goal does) is flagged as noisy.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    metric: str
    unit: str
    las: list[float]
    peer_name: str = ""
    peer: list[float] = field(default_factory=list)
    goal: str = ""
    meets: bool | None = None
    note: str = ""
    noise: float = 1.5  # a spread (max/min) of either side above this flags the row noisy
    # las[i] and peer[i] ran back to back: the ratio is the median of their quotients, which
    # cancels the machine's slow drift (instead of the quotient of the two medians)
    paired: bool = False

    @staticmethod
    def med(xs: list[float]) -> float | None:
        return statistics.median(xs) if xs else None

    def ratio(self) -> float | None:
        if self.paired and self.las and len(self.las) == len(self.peer) and all(self.peer):
            return statistics.median(a / b for a, b in zip(self.las, self.peer, strict=True))
        a, b = self.med(self.las), self.med(self.peer)
        if a is None or b is None or b == 0:
            return None
        return a / b

    def noisy(self) -> bool:
        for xs in (self.las, self.peer):
            if len(xs) >= 2 and min(xs) > 0 and max(xs) / min(xs) > self.noise:
                return True
        return False


def alternate(
    a: Callable[[int], float], b: Callable[[int], float] | None, reps: int, warmup: int = 1
) -> tuple[list[float], list[float]]:
    """Run A and B alternately (A B A B ...) after ``warmup`` uncounted rounds."""
    if b is None:
        return alternate_all([a], reps, warmup)[0], []
    xs, ys = alternate_all([a, b], reps, warmup)
    return xs, ys


def alternate_all(
    fns: Sequence[Callable[[int], float]], reps: int, warmup: int = 1
) -> list[list[float]]:
    """Run every function in turn (A B C A B C ...) after ``warmup`` uncounted rounds.

    Returns one list of counted samples per function, in the order given.
    """
    samples: list[list[float]] = [[] for _ in fns]
    for i in range(warmup + reps):
        for fn, xs in zip(fns, samples, strict=True):
            x = fn(i)
            if i >= warmup:
                xs.append(x)
    return samples


def fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    if unit == "s":
        return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"
    if unit == "MB":
        return f"{x:.1f} MB"
    if unit == "MB/s":
        return f"{x:.0f} MB/s"
    return f"{x:.3g} {unit}"


def spread(xs: list[float], unit: str) -> str:
    if not xs:
        return ""
    return f"[{fmt(min(xs), unit)} .. {fmt(max(xs), unit)}]"


def machine() -> dict[str, object]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / (1 << 30), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def table(rows: list[Row]) -> str:
    head = [
        "metric",
        "las (median [min .. max])",
        "peer",
        "peer (median [min .. max])",
        "ratio",
        "goal",
        "verdict",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = r.ratio()
        verdict = "-" if r.meets is None else ("meets" if r.meets else "falls short")
        if r.noisy():
            verdict += " (noisy)"
        lines.append(
            "| "
            + " | ".join(
                [
                    r.metric,
                    f"{fmt(r.med(r.las), r.unit)} {spread(r.las, r.unit)}",
                    r.peer_name or "-",
                    f"{fmt(r.med(r.peer), r.unit)} {spread(r.peer, r.unit)}" if r.peer else "-",
                    f"{ratio:.2f}x" if ratio is not None else "-",
                    r.goal or "-",
                    verdict,
                ]
            )
            + " |"
        )
    notes = [f"- {r.metric}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + (["", *notes] if notes else []))


def save(name: str, rows: list[Row], extra: dict[str, object]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    data = {"machine": machine(), **extra, "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(data, indent=2))
    return path


def run_main(name: str, doc: str | None, collect: Callable[[bool], list[Row]]) -> None:
    """The command line of one benchmark module: `python -m bench.NAME [--quick]`."""
    import argparse

    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repetitions")
    args = parser.parse_args()
    rows = collect(args.quick)
    print(f"machine: {machine()}")
    print(table(rows))
    print(f"raw numbers: {save(name, rows, {'quick': args.quick})}")
