"""Where ``$LAS_HOME`` is, and whether it is safe to use, as strings (store/paths.py gives
them to everyone else as ``Path`` objects).
"""

from __future__ import annotations

import os
import stat

from localaistack.errors import StoreError


def home_dir() -> str:
    """The runtime's home directory (not created): ``$LAS_HOME``, else ``/var/lib/
    localaistack`` for root and ``$XDG_STATE_HOME/localaistack`` for a user."""
    env = os.environ.get("LAS_HOME")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    if os.geteuid() == 0:
        return "/var/lib/localaistack"
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(xdg, "localaistack")


def check_home(home: str) -> str:
    """Create ``home`` (mode 0700) if needed and refuse one that is unsafe to use.

    Raises:
        StoreError: when the directory cannot be created, is not a directory, is
            world-writable, or is owned by another user.
    """
    try:
        os.makedirs(home, mode=0o700, exist_ok=True)
        st = os.stat(home)
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


def make_private_dir(base: str, *parts: str) -> str:
    """``base/parts...``, each missing directory created 0700 (``os.makedirs`` would give
    the intermediate ones the umask's mode)."""
    path = base
    for part in parts:
        path = os.path.join(path, part)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
        except OSError as exc:
            raise home_error(exc, path) from exc
    return path


def home_error(exc: OSError, path: str) -> StoreError:
    """A ``StoreError`` naming why ``path`` in ``$LAS_HOME`` cannot be written."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(
            f"disk full (ENOSPC) writing {path}: free space and retry",
            hint="free space on the filesystem that holds LAS_HOME",
            cause="full",
        )
    if exc.errno == errno.EROFS:
        return StoreError(
            f"read-only filesystem: cannot write {path}",
            hint="remount it read-write, or set LAS_HOME elsewhere",
            cause="readonly",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreError(
            f"permission denied writing {path}", hint="use a LAS_HOME you own", cause="permission"
        )
    return StoreError(
        f"cannot write {path}: {exc.strerror or exc}",
        hint="check the disk and LAS_HOME",
        cause="io",
    )
