"""Waiting for the state database to change, without polling it.

Every commit to a WAL database writes its ``-wal`` file (a checkpoint writes the main
file; the first writer after the last connection closed creates the ``-wal`` again), so
inotify on the database's directory wakes a waiter as soon as any process commits.
``PRAGMA data_version`` (it changes when another connection has committed) then tells a
commit from a spurious wake (another file of the directory, a frame written but not yet
committed).

A commit writes its last frame to the ``-wal`` before it publishes it in the wal-index
(``-shm``, shared memory: no inotify event). A waiter woken by that write may read the old
``data_version``; it then keeps checking for a short while (``_SETTLE``) rather than miss
the commit until the next one. Where inotify is unavailable, ``data_version`` is polled
every 50 ms (``ChangeWatcher.polling`` says so).
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from localaistack.store.db import Store, _query

_POLL = 0.05  # seconds between data_version reads without inotify
_SETTLE = 0.25  # seconds a wake by the -wal goes on checking for its commit
_SLICE = 1.0  # the longest inotify wait before data_version is read regardless


class ChangeWatcher:
    """``with ChangeWatcher(db) as w: w.wait(timeout)``: True once the database may have
    changed (a commit by any other connection since the last ``wait`` returned True, or
    since the watcher was entered), False on timeout.

    It holds its own ``Store``: use it in the thread that entered it.
    """

    def __init__(self, db_path: Path, *, use_inotify: bool = True) -> None:
        self.db_path = Path(db_path)
        self._use_inotify = use_inotify
        self._names = {self.db_path.name, self.db_path.name + "-wal"}
        self._store: Store | None = None
        self._inotify: Any = None
        self._version = 0
        # Until when a wake by the -wal goes on checking (kept across waits: the events of
        # a burst of commits may all be read at the first wake, before the last of them is
        # published).
        self._settle_until = 0.0

    @property
    def polling(self) -> bool:
        """True when changes are found by polling (no inotify here)."""
        return self._inotify is None

    def __enter__(self) -> ChangeWatcher:
        # inotify first: a commit between the first data_version read and the watch being
        # added would otherwise go unnoticed.
        if self._use_inotify:
            self._inotify = _open_inotify(self.db_path.parent)
        try:
            self._store = Store(self.db_path)
            self._version = self._data_version()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def _data_version(self) -> int:
        assert self._store is not None, "ChangeWatcher used outside its with block"
        return int(_query(self._store.conn, "PRAGMA data_version")[0][0])

    def _changed(self) -> bool:
        version = self._data_version()
        if version != self._version:
            self._version = version
            return True
        return False

    def wait(self, timeout: float) -> bool:
        """Block until the database may have changed (True) or ``timeout`` seconds pass."""
        deadline = time.monotonic() + max(0.0, timeout)
        if self._changed():
            return True
        while True:
            now = time.monotonic()
            if now >= deadline:
                return self._changed()
            if self._inotify is None:
                time.sleep(min(_POLL, deadline - now))
            else:
                step = 0.002 if now < self._settle_until else _SLICE
                if self._read_events(min(step, deadline - now)):
                    self._settle_until = time.monotonic() + _SETTLE
            if self._changed():
                return True

    def _read_events(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for inotify events; True if one names the database."""
        fd = self._inotify.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return False
        return any(ev.name in self._names for ev in self._inotify.read(timeout=0))


def _open_inotify(directory: Path) -> Any:
    """An inotify instance watching ``directory``, or None where inotify is unavailable."""
    try:
        from inotify_simple import INotify, flags  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        ino = INotify()
    except OSError:  # no inotify in this kernel, or the instance limit reached
        return None
    try:
        ino.add_watch(os.fspath(directory), flags.MODIFY | flags.CREATE | flags.MOVED_TO)
    except OSError:  # the watch limit reached
        ino.close()
        return None
    return ino
