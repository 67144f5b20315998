"""Module and instance names, and where modules are found (no pydantic: the fast path).

Names become file and directory names, so they may not escape.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "modules"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_name(value: str, what: str = "name") -> str:
    """Validate a module or instance name: it becomes a file name, so it may not escape."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL")
    if "/" in value or "\\" in value:
        raise ValueError(f"{what} {value!r} must not contain '/' or '\\'")
    if ".." in value:
        raise ValueError(f"{what} {value!r} must not contain '..'")
    if len(value) > 63:
        raise ValueError(f"{what} is {len(value)} characters long; at most 63 are allowed")
    if not NAME_RE.match(value):
        raise ValueError(
            f"{what} {value!r} may use only letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (no spaces)"
        )
    return value


def is_manifest_path(arg: str) -> bool:
    """Whether a MODULE argument names a manifest file rather than a catalog entry."""
    return "/" in arg or arg.endswith((".yaml", ".yml")) or os.path.isfile(arg)
