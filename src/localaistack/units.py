"""Sizes and durations as people write them in manifests and policies.

Sizes accept LocalAIStack's decimal-looking ``8GB`` style (read as binary, 8 GiB, as the
original project does), IEC ``8GiB``, ``512MiB``, ``512M``, ``1024K``, plain bytes, and
``0``. Durations accept ``500ms``, ``10s``, ``5m``, ``1h`` and plain seconds.
"""

from __future__ import annotations

import math
import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}

MAX_SIZE = 1 << 63  # sizes go to the kernel (cgroup limits) as signed 64-bit numbers

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_size(value: object) -> int:
    """Parse a size into bytes.

    Raises:
        ValueError: with a message naming the accepted forms, for negative or malformed input.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: expected e.g. 512MiB, 8GB or a byte count")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value}: must not be negative")
        if value >= MAX_SIZE:
            raise ValueError(f"invalid size {value}: more than 8EiB")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"invalid size {value}: must be a finite number of bytes")
        if value < 0:
            raise ValueError(f"invalid size {value}: must not be negative")
        if value >= MAX_SIZE:
            raise ValueError(f"invalid size {value}: more than 8EiB")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid size {value!r}: expected e.g. 512MiB, 8GB or a byte count")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"invalid size {value!r}: must not be negative")
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"invalid size {value!r}: expected e.g. 512MiB, 8GB or a byte count")
    number, prefix, _suffix = m.groups()
    size = float(number) * _SIZE_FACTORS[prefix.upper()]
    if not size < MAX_SIZE:
        raise ValueError(f"invalid size {value!r}: more than 8EiB")
    return int(size)


def parse_duration(value: object) -> float:
    """Parse a duration into seconds.

    Raises:
        ValueError: for negative or malformed input.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: expected e.g. 500ms, 10s, 5m")
    if isinstance(value, int | float):
        if isinstance(value, int) and abs(value) >= MAX_SIZE:  # float() would overflow
            raise ValueError(f"invalid duration {value}: too large")
        if not math.isfinite(value):
            raise ValueError(f"invalid duration {value}: must be a finite number of seconds")
        if value < 0:
            raise ValueError(f"invalid duration {value}: must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: expected e.g. 500ms, 10s, 5m")
    m = _DURATION_RE.match(value)
    if not m:
        raise ValueError(f"invalid duration {value!r}: expected e.g. 500ms, 10s, 5m")
    number, unit = m.groups()
    seconds = float(number) * _DURATION_FACTORS[unit]
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}: must be a finite number of seconds")
    return seconds


def format_size(n: int) -> str:
    """Render bytes in the largest IEC unit that keeps one decimal meaningful."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"  # pragma: no cover - loop always returns


def format_duration(seconds: float) -> str:
    """Render seconds as people write them: 250ms, 10s, 2m30s."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{secs:g}s" if secs else f"{int(minutes)}m"
