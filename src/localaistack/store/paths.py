"""Where las keeps its state: ``$LAS_HOME``.

``$LAS_HOME`` (environment variable) wins. Otherwise root uses ``/var/lib/localaistack``
and a user ``$XDG_STATE_HOME/localaistack`` (``~/.local/state/localaistack``).

Layout::

    $LAS_HOME/
      state.db          SQLite state (WAL)
      policy.yaml       the user's policy (optional)
      modules/*.yaml    the user's manifests (optional)
      logs/INSTANCE/RUN_ID.log[.N]   each run's output (rotated files .1 .. .N)
      runs/RUN_ID/supervisor.log     the supervisor's own diagnostics
      secrets/INSTANCE.json          an instance's secret values (0600; store/secrets.py)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from localaistack.errors import StoreError


def las_home() -> Path:
    """The runtime's home directory (not created)."""
    env = os.environ.get("LAS_HOME")
    if env:
        return Path(env).expanduser().absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/localaistack")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "localaistack"


def ensure_home(home: Path | None = None) -> Path:
    """Create ``$LAS_HOME`` (mode 0700) if needed and refuse one that is unsafe to use.

    Raises:
        StoreError: when the directory cannot be created, is not a directory, is
            world-writable, or is owned by another user.
    """
    home = home or las_home()
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = home.stat()
    except OSError as exc:
        raise StoreError(
            f"cannot use LAS_HOME {home}: {exc.strerror}",
            hint="set LAS_HOME to a directory you own",
        ) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"LAS_HOME {home} is not a directory", hint="set LAS_HOME elsewhere")
    if st.st_uid != os.geteuid():
        raise StoreError(
            f"LAS_HOME {home} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})",
            hint="use a LAS_HOME you own; las will not keep state where others control it",
        )
    if st.st_mode & stat.S_IWOTH:
        raise StoreError(
            f"LAS_HOME {home} is world-writable (mode {stat.S_IMODE(st.st_mode):o})",
            hint=f"run `chmod 700 {home}` or choose another LAS_HOME",
        )
    return home


def private_dir(base: Path, *parts: str) -> Path:
    """``base/parts...``, each directory made missing created 0700 (``mkdir(parents=True)``
    would give the intermediate ones the umask's mode)."""
    path = base
    for part in parts:
        path = path / part
        path.mkdir(mode=0o700, exist_ok=True)
    return path
