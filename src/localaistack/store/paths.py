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

from pathlib import Path

from localaistack.store.home import check_home, home_dir, make_private_dir


def las_home() -> Path:
    """The runtime's home directory (not created; see store/home.py)."""
    return Path(home_dir())


def ensure_home(home: Path | None = None) -> Path:
    """Create ``$LAS_HOME`` (mode 0700) if needed and refuse one that is unsafe to use.

    Raises:
        StoreError: when the directory cannot be created, is not a directory, is
            world-writable, or is owned by another user.
    """
    return Path(check_home(str(home or las_home())))


def private_dir(base: Path, *parts: str) -> Path:
    """``base/parts...``, each directory made missing created 0700 (``mkdir(parents=True)``
    would give the intermediate ones the umask's mode)."""
    return Path(make_private_dir(str(base), *parts))
