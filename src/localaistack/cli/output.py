"""What every command prints the same way: errors, warnings, tables, escaped text."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import NoReturn

from localaistack.errors import LasError


def shown(text: str) -> str:
    """``text`` safe to print on a terminal: control and format characters (NUL, ESC, a
    carriage return, bidi overrides...) and undecodable bytes escaped, as Python writes them
    (``\\x00``, ``\\u202e``, ``\\xff``); newlines and tabs kept."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in "\n\t" or ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def fail(err: LasError) -> NoReturn:
    """Print ``err`` (message, problems, hint) to stderr and exit with its code."""
    lines = [f"error: {shown(err.message)}"]
    lines += [f"  {shown(p)}" for p in getattr(err, "problems", None) or [] if p != err.message]
    if err.hint:
        lines.append(f"hint: {shown(err.hint)}")
    sys.stdout.flush()
    sys.stderr.write("\n".join(lines) + "\n")
    sys.exit(err.exit_code)


def warn(notes: Iterable[str]) -> None:
    """Each note on stderr as ``warning: ...``."""
    for note in notes:
        sys.stderr.write(f"warning: {shown(note)}\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned table (no colours: output is often piped)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    return "\n".join(lines)
