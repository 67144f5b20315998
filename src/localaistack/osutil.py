"""Small operating-system helpers for the start path, ``os`` only.

``shutil`` is slow to import (it pulls in bz2, lzma and zlib) for the one function las
needs from it on that path.
"""

from __future__ import annotations

import os


def which(name: str, path: str | None = None) -> str | None:
    """``shutil.which`` for a bare command name: the first executable file called ``name``
    in ``path`` (default ``$PATH``), or None."""
    for folder in (os.environ.get("PATH", os.defpath) if path is None else path).split(":"):
        candidate = os.path.join(folder or os.curdir, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
