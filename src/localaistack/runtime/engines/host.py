"""What the host decides about for every engine: where engine CLIs run, the cgroup layout,
the ulimits any engine can apply here."""

from __future__ import annotations

import contextlib
import os
import resource
import stat


def scratch_dir() -> str:
    """A private directory (mode 0700, owned by this user) to run engine CLIs in.

    Created on first use under the temporary directory. If that path exists but is not a
    private directory of this user (a symlink, another owner), a fresh one is made instead.
    podman 4.3 on cgroup v1 drops an empty ``oom`` file into its caller's cwd, which must
    not land in the user's directory.
    """
    path = os.path.join(_tmp_root(), f"las-engine-cwd-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        st = os.lstat(path)
    except OSError:
        return _fresh_scratch()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return _fresh_scratch()
    return path


def _tmp_root() -> str:
    """``$TMPDIR`` (or ``$TEMP``, ``$TMP``) if it is a directory, else ``/tmp``.

    The start path's version of ``tempfile.gettempdir()``: that module is slow for the
    supervisor to import, and is only needed for the fallback below.
    """
    for var in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(var)
        if value and os.path.isdir(value):
            return value
    return "/tmp"


def _fresh_scratch() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="las-engine-cwd-")


def cgroup_layout() -> str:
    """``"v2"`` (unified), ``"hybrid"`` (v1 with a cgroup2 ``unified`` mount) or ``"v1"``."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "v2"
    if os.path.isdir("/sys/fs/cgroup/unified"):
        return "hybrid"
    return "v1"


def suggested_ulimits(nproc: int = 4096) -> list[str]:
    """Explicit ``--ulimit`` values that any engine can apply here.

    ``nofile`` soft = hard = this process's hard limit (at most 1048576): podman's default
    (1048576) fails with "setrlimit RLIMIT_NOFILE: Operation not permitted" where the hard
    limit is lower and root lacks CAP_SYS_RESOURCE. ``nproc`` defaults to 4096 (conmon fails
    above 32768), lowered to the hard limit if that is smaller.
    """
    _, nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    if nofile == resource.RLIM_INFINITY or nofile > 1048576:
        nofile = 1048576
    _, nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if nproc_hard != resource.RLIM_INFINITY:
        nproc = min(nproc, nproc_hard)
    return [f"nofile={nofile}:{nofile}", f"nproc={nproc}:{nproc}"]


def file_stamp(path: str) -> tuple[int, int] | None:
    """(mtime in ns, size) of ``path``, or None if it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
