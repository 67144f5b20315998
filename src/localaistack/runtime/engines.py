"""A thin layer over the ``podman`` and ``docker`` command-line tools (and their APIs).

The container backend runs workloads through this module and nothing else; it never builds
an engine command line itself. Two things skip the CLI, for the start path's sake:
``Engine.run`` creates and starts the container through the engine's API with the settings
the CLI would apply (``docker_create_body`` for dockerd on a unix socket;
``podman_create_body`` for the podman API service las keeps, ``Engine.podman_api``), and
``Engine.image_exists`` first asks the engine's image store directly (enginestore.py).
Everything here

* runs the engine's CLI as a subprocess with an argv list (never a shell), with a timeout on
  every call (``Engine.timeout`` unless the method says otherwise), stdin from /dev/null;
* runs it with its current directory set to a private scratch directory (``scratch_dir()``):
  podman 4.3 on cgroup v1 drops an empty ``oom`` file into its caller's cwd, which must not
  land in the user's directory;
* reads the engine's JSON output, never its human tables, and normalises what the two engines
  spell differently (see ``ContainerState``);
* raises ``EngineError`` (message + hint) for every failure it can explain, and for the rest
  with the engine's own first error line. It never raises ``subprocess`` or ``OSError``
  exceptions at its caller.

Standard library only: the supervisor may import it, and it must start fast.

What a container started by ``Engine.run`` always gets, whatever the spec says:
``--cap-drop=ALL`` (plus the spec's ``cap_add``), ``--security-opt=no-new-privileges``,
``--init`` (the workload is not PID 1, so signals without a handler still end it),
``--pull=never`` (images are never fetched implicitly), ``--pids-limit``, ``--network=none``
when it publishes no port, and published ports only on the host address the spec names.
Never ``--privileged``, ``--network=host`` or a mount of an engine socket.

Host quirks the caller decides about (see ``suggested_global_args`` and
``suggested_ulimits``): podman's default OCI runtime crun refuses hybrid cgroup layouts
(use ``--runtime runc``), and podman's default RLIMIT_NOFILE (1048576) fails where the
caller's hard limit is lower, so explicit ulimits are passed with every run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import stat
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from localaistack.osutil import which
from localaistack.runtime import enginestore

if TYPE_CHECKING:
    import subprocess

ENGINES = ("podman", "docker")
DEFAULT_TIMEOUT = 30.0  # seconds for one engine CLI call
RUN_TIMEOUT = 120.0  # `run -d`: creates the container and starts it, no pull
STOP_MARGIN = 30.0  # how much longer than the stop timeout a `stop` call may take
OOM_SETTLE = 1.0  # how long final_state() waits for docker to record OOMKilled
ZERO_TIME = "0001-01-01T00:00:00Z"  # what both engines report for "never"

# What docker grants without --cap-drop (moby's default set): used to compute a docker
# container's effective capabilities, which docker's inspect does not list.
DOCKER_DEFAULT_CAPS = frozenset(
    {
        "CAP_AUDIT_WRITE",
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_MKNOD",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_RAW",
        "CAP_SETFCAP",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_CHROOT",
    }
)

_STATUS_ALIASES = {"configured": "created", "initialized": "created", "stopped": "exited"}
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_CAP_RE = re.compile(r"^(CAP_)?[A-Z_]+$")
_ULIMIT_RE = re.compile(r"^[a-z]+=-?\d+(:-?\d+)?$")
_ID_RE = re.compile(r"^[0-9a-f]{12,64}$")
_NOT_FOUND = ("no such container", "no such object", "no container with name or id")
_DAEMON_DOWN = (
    "cannot connect to the docker daemon",
    "is the docker daemon running",
    "permission denied while trying to connect",
    "error during connect",
    "cannot connect to podman",
    "unable to connect to podman",
)


# What podman reads from the environment besides CONTAINERS_*: a service is kept per value.
_PODMAN_ENV = frozenset(
    {"HOME", "PATH", "TMPDIR", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
     "REGISTRY_AUTH_FILE", "STORAGE_DRIVER", "STORAGE_OPTS"}
)  # fmt: skip

_PODMAN_CONF_DIRS = ("/usr/share/containers", "/etc/containers")

_NO_LABELS: Mapping[str, str] = {}  # never mutated: the default of ContainerRunSpec.labels


class EngineError(Exception):
    """An engine call failed. ``message`` says what, ``hint`` what to do (may be None).

    The runtime maps it to its own errors (``StartFailed`` and friends).
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class VolumeMount(NamedTuple):
    """A bind mount of a host path (must exist) into the container."""

    source: str
    target: str
    read_only: bool = True


class PublishedPort(NamedTuple):
    """A container port published on exactly one host address (``0.0.0.0``: every one)."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"


class ContainerRunSpec(NamedTuple):
    """Everything ``Engine.run`` needs to start one container, fully resolved.

    ``env`` values appear in the engine CLI's argv (``--env=K=V``) and in ``inspect``.
    ``secret_env`` values are passed as ``--env=K`` with the value in the engine CLI's own
    environment, so that no other user sees them in the CLI's command line; the engine
    still keeps them in the container's configuration (``inspect``). ``gpus`` are
    ``(vendor, uuid)`` pairs; only ``nvidia`` is supported (docker ``--gpus``, podman CDI
    devices).
    ``ulimits`` are engine ``--ulimit`` values such as ``nofile=1024:1024``; any ulimit
    replaces all of the engine's defaults (see ``suggested_ulimits``).
    """

    name: str
    image: str
    argv: Sequence[str] = ()
    env: Sequence[tuple[str, str]] = ()
    secret_env: Sequence[tuple[str, str]] = ()
    workdir: str | None = None
    user: str | None = None
    volumes: Sequence[VolumeMount] = ()
    ports: Sequence[PublishedPort] = ()
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int = 512
    gpus: Sequence[tuple[str, str]] = ()
    cap_add: Sequence[str] = ()
    read_only_root: bool = True
    labels: Mapping[str, str] = _NO_LABELS
    ulimits: Sequence[str] = ()
    stop_signal: str | None = None
    log_max_size: int | None = None


class ContainerState(NamedTuple):
    """One container as the engine's inspect describes it, normalised across engines.

    ``status`` is ``created``, ``running``, ``paused``, ``restarting``, ``removing``,
    ``exited`` or ``dead`` (podman's ``configured``/``initialized`` read as ``created``,
    ``stopped`` as ``exited``). ``pid`` is 0 unless running. ``started_at``/``finished_at``
    are the engine's RFC 3339 strings, ``""`` for never. ``oom_killed`` is as the engine
    reports it (always false on podman with cgroup v1: use ``Engine.oom_detected``).
    ``memory_limit`` is in bytes, 0 for none. ``error`` is the engine's State.Error.

    ``security`` holds, with the same keys and types for both engines:

    * ``CapDrop``, ``CapAdd``: lists as reported, names upper case with ``CAP_`` (docker
      reports ``--cap-drop=ALL`` as ``["ALL"]``; podman lists each dropped default
      capability and reports added ones only in the effective set);
    * ``Capabilities``: the effective (bounding) set, sorted: podman's ``EffectiveCaps``;
      for docker computed from its default set, ``CapDrop`` and ``CapAdd``; ``["ALL"]``
      when privileged;
    * ``NoNewPrivileges`` (bool, from ``SecurityOpt``), ``SecurityOpt`` (list),
      ``ReadonlyRootfs`` (bool), ``User`` (str, ``""`` for the image's default),
      ``NetworkMode`` (``none``, ``bridge``, ...; docker's ``default`` reads as ``bridge``),
      ``PortBindings`` (list of ``{"host_ip", "host_port", "container_port", "protocol"}``,
      ``host_ip`` ``""`` meaning every address), ``PidsLimit`` (int, 0 for none), ``Init``
      (bool), ``Privileged`` (bool), ``Ulimits`` (list of ``name=soft:hard``, lower case
      names without ``RLIMIT_``).
    """

    id: str
    name: str
    image: str
    status: str
    running: bool
    pid: int
    exit_code: int | None
    oom_killed: bool
    started_at: str
    finished_at: str
    labels: dict[str, str]
    memory_limit: int
    error: str
    security: dict[str, Any]


# --- host helpers ----------------------------------------------------------------------------


def _stamp(path: str) -> tuple[int, int] | None:
    """(mtime in ns, size) of ``path``, or None if it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def scratch_dir() -> str:
    """A private directory (mode 0700, owned by this user) to run engine CLIs in.

    Created on first use under the temporary directory. If that path exists but is not a
    private directory of this user (a symlink, another owner), a fresh one is made instead.
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

    The start path's version of ``tempfile.gettempdir()``: that module costs the supervisor
    a few milliseconds to import, and is only needed for the fallback below.
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


def suggested_global_args(name: str) -> list[str]:
    """Global engine options this host needs: ``--runtime runc`` for podman on hybrid
    cgroups (crun refuses them) when runc is installed, otherwise nothing."""
    if name == "podman" and cgroup_layout() == "hybrid" and which("runc"):
        return ["--runtime", "runc"]
    return []


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


def format_bytes(n: int) -> str:
    """``16MiB``, ``1.5GiB``, ``512B``: whole numbers without decimals."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"  # pragma: no cover - the loop always returns


def _first_error_line(text: str) -> str:
    """The engine's first meaningful error line, without its ``Error:`` prefixes."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("Run '", "See '", "Usage:")):
            continue
        if line.startswith("time=") and "level=warning" in line:
            continue
        for prefix in ("docker: ", "Error: ", "Error response from daemon: "):
            if line.startswith(prefix):
                line = line[len(prefix) :]
        return line
    return ""


def _cap(name: str) -> str:
    upper = name.strip().upper()
    if upper == "ALL" or upper.startswith("CAP_"):
        return upper
    return "CAP_" + upper


def _str_list(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _time(value: Any) -> str:
    text = str(value or "")
    return "" if text.startswith("0001-01-01") else text


def _ulimits(value: Any) -> list[str]:
    out = []
    for item in value or []:
        name = str(item.get("Name", "")).lower().removeprefix("rlimit_")
        out.append(f"{name}={item.get('Soft')}:{item.get('Hard')}")
    return sorted(out)


def _port_bindings(value: Any) -> list[dict[str, Any]]:
    out = []
    for key, bindings in (value or {}).items():
        cport, _, proto = str(key).partition("/")
        for b in bindings or []:
            host_port = str(b.get("HostPort") or "0")
            out.append(
                {
                    "host_ip": str(b.get("HostIp") or ""),
                    "host_port": int(host_port) if host_port.isdigit() else 0,
                    "container_port": int(cport),
                    "protocol": proto or "tcp",
                }
            )
    return sorted(out, key=lambda p: (p["container_port"], p["protocol"], p["host_ip"]))


# --- the engine ---------------------------------------------------------------------------


class Engine:
    """One container engine CLI (``podman`` or ``docker``) and how to call it.

    ``env``: variables added to this process's environment for every engine call (e.g.
    ``{"DOCKER_HOST": "unix:///run/las-ci/docker.sock"}``); ``subprocess_env()`` gives the
    result, for callers that run ``logs_args``/``exec_args`` themselves. ``global_args``
    go before the subcommand on every call (e.g. ``["--runtime", "runc"]`` for podman on
    hybrid cgroups; see ``suggested_global_args``). ``timeout``: seconds per CLI call.

    Constructing an Engine runs nothing. ``binary`` is None when the CLI is not on PATH;
    every call then raises ``EngineError``.
    """

    def __init__(
        self,
        name: str,
        *,
        env: Mapping[str, str] | None = None,
        global_args: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if name not in ENGINES:
            raise EngineError(
                f"unknown container engine {name!r}", hint=f"use one of: {', '.join(ENGINES)}"
            )
        self.name = name
        self.env: dict[str, str] = dict(env or {})
        self.global_args: list[str] = list(global_args)
        self.timeout = timeout
        path = self.env.get("PATH", os.environ.get("PATH"))
        self.binary: str | None = which(name, path)
        self._cwd: str | None = None

    def __repr__(self) -> str:
        return f"<Engine {self.name} binary={self.binary} global_args={self.global_args}>"

    # --- plumbing ------------------------------------------------------------------------

    @property
    def cwd(self) -> str:
        """The private scratch directory engine calls run in."""
        if self._cwd is None or not os.path.isdir(self._cwd):
            self._cwd = scratch_dir()
        return self._cwd

    def subprocess_env(self) -> dict[str, str]:
        """The environment engine CLIs run with: this process's, plus ``env``."""
        return {**os.environ, **self.env}

    def base_args(self) -> list[str]:
        """``[binary, *global_args]``. Raises EngineError if the CLI is not installed."""
        if self.binary is None:
            raise EngineError(
                f"{self.name} is not installed (no {self.name!r} on PATH)",
                hint=f"install {self.name}, or choose the other engine or native mode",
            )
        return [self.binary, *self.global_args]

    def _call(
        self,
        args: Sequence[str],
        *,
        timeout: float | None = None,
        what: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ENGINE *args``; return the completed process whatever its exit status.

        Raises:
            EngineError: the CLI is missing or cannot be executed, or it did not finish within
                ``timeout`` (it is killed then).
        """
        import subprocess  # not on the start path (~5 ms): the container starts via the API

        argv = [*self.base_args(), *args]
        limit = self.timeout if timeout is None else timeout
        label = what or f"{self.name} {args[0] if args else ''}".strip()
        try:
            return subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                env={**self.subprocess_env(), **(env or {})},
                cwd=self.cwd,
                timeout=limit,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise EngineError(
                f"{label} did not finish within {limit:g}s",
                hint=f"check that {self.name} is healthy (`{self.name} info`)",
            ) from exc
        except OSError as exc:
            raise EngineError(
                f"cannot execute {argv[0]}: {exc.strerror or exc}",
                hint=f"check the {self.name} installation",
            ) from exc

    def _failure(self, proc: subprocess.CompletedProcess[str], what: str) -> EngineError:
        """An EngineError for a failed call, recognising an unusable engine."""
        line = _first_error_line(proc.stderr) or _first_error_line(proc.stdout)
        low = proc.stderr.lower()
        if any(s in low for s in _DAEMON_DOWN):
            return EngineError(f"{self.name} is not usable: {line}", hint=self._usable_hint())
        return EngineError(
            f"{what} failed (exit {proc.returncode}): {line or 'no error message'}",
            hint=f"see `{self.name} info` and the engine's own logs",
        )

    def _usable_hint(self) -> str:
        if self.name == "docker":
            host = self.subprocess_env().get("DOCKER_HOST", "unix:///var/run/docker.sock")
            return (
                f"start dockerd (or fix DOCKER_HOST, now {host}) and check that this user may "
                "use its socket"
            )
        return "check `podman info`; rootful podman needs root, rootless needs a user session"

    # --- engine-level queries ---------------------------------------------------------

    def usable(self) -> tuple[bool, str]:
        """Whether the engine answers, and a one-line description or the reason it does not.

        podman: ``podman info``; docker: ``docker version`` (needs the daemon). Blocks for
        at most ``timeout``. Never raises.
        """
        if self.binary is None:
            return False, f"{self.name} is not installed (no {self.name!r} on PATH)"
        try:
            if self.name == "podman":
                proc = self._call(["info", "--format", "json"], what="podman info")
            else:
                proc = self._call(["version", "--format", "{{json .}}"], what="docker version")
        except EngineError as exc:
            return False, exc.message
        if proc.returncode != 0:
            line = _first_error_line(proc.stderr) or f"exit {proc.returncode}"
            return False, f"{self.name} is not usable: {line}"
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            return True, f"{self.name} answers (unparsed version output)"
        if self.name == "podman":
            host = data.get("host", {})
            version = data.get("version", {}).get("Version", "?")
            runtime = host.get("ociRuntime", {}).get("name", "?")
            cgroups = host.get("cgroupVersion", "?")
            return True, f"podman {version} (runtime {runtime}, cgroups {cgroups})"
        server = (data.get("Server") or {}).get("Version")
        if not server:
            return False, "docker is not usable: the daemon did not report a version"
        client = (data.get("Client") or {}).get("Version", "?")
        return True, f"docker {server} (client {client})"

    def image_exists(self, image: str) -> bool:
        """Whether ``image`` is present locally. Blocks for at most ``timeout``.

        Asks the engine's image store directly first (``image_listed``: a few ms, against
        tens for the CLI); the CLI decides whenever that does not say yes.

        Raises:
            EngineError: the engine is not usable.
        """
        if self.image_listed(image):
            return True
        if self.name == "podman":
            proc = self._call(["image", "exists", image])
            if proc.returncode in (0, 1):
                return proc.returncode == 0
        else:
            proc = self._call(["image", "inspect", "--format", "{{.Id}}", image])
            if proc.returncode == 0:
                return True
            if "no such image" in proc.stderr.lower():
                return False
        raise self._failure(proc, f"{self.name} image exists {image}")

    def image_listed(self, image: str) -> bool:
        """Whether the engine's store lists ``image``, asked without its CLI (never a "no":
        False means "ask the CLI"; see ``enginestore.image_listed``)."""
        return self.binary is not None and enginestore.image_listed(
            self.name, self.subprocess_env(), image
        )

    # --- run ---------------------------------------------------------------------------

    def run_args(self, spec: ContainerRunSpec) -> list[str]:
        """The complete ``ENGINE run -d ...`` argv for ``spec`` (security defaults included).

        Checks the spec first (reads the filesystem for volume sources, runs nothing).

        Raises:
            EngineError: invalid spec: a volume source that does not exist, a bad name,
                address, capability or ulimit, an unsupported GPU vendor.
        """
        _check_name("container name", spec.name)
        if not spec.image or spec.image.startswith("-"):
            raise EngineError(f"invalid image reference {spec.image!r}")
        args = [*self.base_args(), "run", "-d", "--name", spec.name]
        args += ["--pull=never", "--init"]
        args += ["--cap-drop=ALL"]
        for cap in spec.cap_add:
            if not _CAP_RE.match(cap.upper()) or cap.upper() in ("ALL", "CAP_ALL"):
                raise EngineError(f"invalid capability {cap!r} in cap_add")
            args.append(f"--cap-add={_cap(cap)}")
        args.append("--security-opt=no-new-privileges")
        if spec.read_only_root:
            # exec allowed on /tmp: both engines then mount it alike (docker adds noexec).
            args += ["--read-only", "--tmpfs=/tmp:rw,exec,nosuid,nodev,mode=1777"]
        if spec.user:
            args.append(f"--user={spec.user}")
        if spec.workdir:
            args.append(f"--workdir={spec.workdir}")
        if spec.ports:
            for port in spec.ports:
                args += ["-p", _publish(port)]
        else:
            args.append("--network=none")
        if spec.pids_limit <= 0:
            raise EngineError(f"invalid pids_limit {spec.pids_limit}: must be positive")
        args.append(f"--pids-limit={spec.pids_limit}")
        if spec.memory is not None:
            if spec.memory < 6 * 1024 * 1024:
                raise EngineError(f"memory limit {spec.memory} bytes is below the 6MiB minimum")
            # memory-swap = memory: the limit is a limit, not half of one where swap exists.
            args += [f"--memory={spec.memory}", f"--memory-swap={spec.memory}"]
        if spec.cpus is not None:
            if not (spec.cpus > 0 and math.isfinite(spec.cpus)):
                raise EngineError(f"invalid cpus {spec.cpus}: must be a positive number")
            args.append(f"--cpus={spec.cpus:g}")
        for ulimit in spec.ulimits:
            if not _ULIMIT_RE.match(ulimit):
                raise EngineError(f"invalid ulimit {ulimit!r}: expected e.g. nofile=1024:1024")
            args.append(f"--ulimit={ulimit}")
        if spec.stop_signal:
            args.append(f"--stop-signal={spec.stop_signal}")
        if spec.log_max_size is not None:
            args.append(f"--log-opt=max-size={int(spec.log_max_size)}")
        for key in sorted(spec.labels):
            if not key or "=" in key:
                raise EngineError(f"invalid label key {key!r}")
            args.append(f"--label={key}={spec.labels[key]}")
        for key, value in spec.env:
            if not key or "=" in key or "\0" in key + value:
                raise EngineError(f"invalid environment variable name {key!r}")
            args.append(f"--env={key}={value}")
        for key, value in spec.secret_env:
            if not key or "=" in key or "\0" in key + value:
                raise EngineError(f"invalid environment variable name {key!r}")
            args.append(f"--env={key}")  # the value comes from the CLI's environment
        for vol in spec.volumes:
            args.append(_mount(vol))
        args += self._gpu_args(spec.gpus)
        args.append(spec.image)
        args += list(spec.argv)
        return args

    def _gpu_args(self, gpus: Sequence[tuple[str, str]]) -> list[str]:
        if not gpus:
            return []
        uuids = []
        for vendor, uuid in gpus:
            if vendor != "nvidia":
                raise EngineError(
                    f"{vendor} GPUs cannot be given to {self.name} containers by this version",
                    hint="run the module natively, or on an NVIDIA GPU",
                )
            if not uuid or not re.match(r"^[A-Za-z0-9_.:-]+$", uuid):
                raise EngineError(f"invalid GPU uuid {uuid!r}")
            uuids.append(uuid)
        if self.name == "docker":
            # docker parses --gpus as CSV: a list of devices must be one quoted field.
            return ["--gpus", '"device=' + ",".join(uuids) + '"']
        return [f"--device=nvidia.com/gpu={u}" for u in uuids]

    def run(self, spec: ContainerRunSpec, *, timeout: float = RUN_TIMEOUT) -> str:
        """Create and start the container detached; return its full id.

        Blocks until the engine has started it (or failed), at most ``timeout`` seconds.
        Never pulls. On any failure no container of that name is left behind (it is removed
        by name), except when the name was already taken by another container.

        Raises:
            EngineError: invalid spec (before anything runs), image not present, host port in
                use, a GPU the engine cannot provide, engine not usable, timeout, or any other
                engine failure (with the engine's first error line).
        """
        argv = self.run_args(spec)  # checks the spec; the CLI's argv when the API is not used
        if self.name == "docker":
            sock = enginestore.docker_socket(self.subprocess_env())
            if sock is not None:
                return self._api_run(sock, spec, timeout, docker_create_body(spec))
        elif not spec.gpus:  # GPUs (CDI devices) go through the CLI: checked on a real GPU
            sock = self.podman_api()
            if sock is not None:
                return self._api_run(sock, spec, timeout, podman_create_body(spec, argv))
        try:
            proc = self._call(
                argv[len(self.base_args()) :],
                timeout=timeout,
                what="run",
                env=dict(spec.secret_env),
            )
        except EngineError:
            self._remove_quietly(spec.name)
            raise
        if proc.returncode == 0:
            lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
            if lines and _ID_RE.match(lines[-1]):
                return lines[-1]
            self._remove_quietly(spec.name)
            raise EngineError(
                f"{self.name} run printed no container id: {proc.stdout.strip()[:200]!r}"
            )
        low = proc.stderr.lower()
        if "container name" in low and "already in use" in low:
            # The name belongs to another container: never remove that one.
            raise EngineError(
                f"a container named {spec.name} already exists in {self.name}",
                hint=f"remove it (`{self.name} rm -f {spec.name}`) or choose another name",
            )
        error = self._classify_run_failure(spec, proc.stderr, f"exit {proc.returncode}")
        self._remove_quietly(spec.name)
        raise error

    def podman_api(self, *, wait: bool = False) -> str | None:
        """The socket of las's podman API service for this engine; None while it is not
        there (it is started then; with ``wait``, waited for) or not to be used
        (``podman_socket``): the CLI is used then (see ``enginestore.podman_service``)."""
        sock = self.podman_socket()
        if sock is None:
            return None
        argv = [
            *self.base_args(), "system", "service",
            f"--time={enginestore.PODMAN_SERVICE_IDLE}", f"unix://{sock}",
        ]  # fmt: skip
        return enginestore.podman_service(sock, argv, self.subprocess_env(), wait=wait)

    def podman_socket(self) -> str | None:
        """Where las's podman API service for this engine listens (in the private scratch
        directory), or None where none is used: with ``LAS_PODMAN_SERVICE=0``, or when
        podman talks to a remote service (``CONTAINER_HOST``, ``CONTAINER_CONNECTION``).

        One service per user, podman binary, global args, environment that podman reads,
        and version of its configuration files: a service reads them once, when it starts.
        """
        env = self.subprocess_env()
        if (
            self.name != "podman"
            or self.binary is None
            or env.get("LAS_PODMAN_SERVICE") == "0"
            or env.get("CONTAINER_HOST")
            or env.get("CONTAINER_CONNECTION")
        ):
            return None
        import hashlib

        read = sorted((k, v) for k, v in env.items() if k in _PODMAN_ENV or k[:11] == "CONTAINERS_")
        user = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME", "/"), ".config")
        dirs = (*_PODMAN_CONF_DIRS, os.path.join(user, "containers"))
        names = ("containers.conf", "storage.conf", "containers.conf.d")
        stamps = [
            _stamp(f) for f in (self.binary, *(os.path.join(d, n) for d in dirs for n in names))
        ]
        key = repr((os.getuid(), os.path.realpath(self.binary), self.global_args, read, stamps))
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        sock = os.path.join(self.cwd, f"podman-{digest}.sock")
        return sock if len(sock.encode()) <= 100 else None  # a socket's path: 107 bytes at most

    def _api_run(
        self, sock: str, spec: ContainerRunSpec, timeout: float, body: dict[str, Any]
    ) -> str:
        """``run`` through the engine's API: create, then start (what ``run -d`` does).

        ``body`` is what ``run_args`` gives the CLI, in the API's terms
        (``docker_create_body``, ``podman_create_body``), so the container is the same (a
        test compares both with the engine's ``inspect``). It saves the CLI's own start,
        and secret values travel in the request body, on no command line.
        """
        if self.name == "docker":
            from urllib.parse import quote  # ~2 ms: not for podman, whose body names it

            create, start = f"/containers/create?name={quote(spec.name)}", "/containers/{}/start"
        else:
            create, start = "/v4.0.0/libpod/containers/create", "/v4.0.0/libpod/containers/{}/start"
        try:
            status, reply = enginestore.api_request(sock, "POST", create, body, timeout)
            low = reply.lower()
            if status in (409, 500) and "already in use" in low and "name" in low:
                raise EngineError(
                    f"a container named {spec.name} already exists in {self.name}",
                    hint=f"remove it (`{self.name} rm -f {spec.name}`) or choose another name",
                )
            if status == 201:
                cid = str(json.loads(reply)["Id"])
                status, reply = enginestore.api_request(
                    sock, "POST", start.format(cid), None, timeout
                )
                if status in (204, 304) and _ID_RE.match(cid):
                    return cid
                if self.name == "podman" and spec.ports:
                    # podman 4.3's service keeps the ports of a failed start bound (a `run`
                    # process would exit): end it; the next start begins a new one.
                    enginestore.stop_podman_service(sock)
        except OSError as exc:
            self._remove_quietly(spec.name)
            raise EngineError(
                f"{self.name} is not usable: its API at {sock} failed: {exc.strerror or exc}",
                hint=self._usable_hint(),
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            self._remove_quietly(spec.name)
            raise EngineError(f"{self.name}'s API answered what las cannot read: {exc}") from exc
        try:
            message = str(json.loads(reply).get("message", reply))
        except (ValueError, AttributeError):
            message = reply.strip()
        error = self._classify_run_failure(spec, message, f"HTTP {status}")
        self._remove_quietly(spec.name)
        raise error

    def _classify_run_failure(self, spec: ContainerRunSpec, text: str, status: str) -> EngineError:
        low = text.lower()
        line = _first_error_line(text)
        if any(s in low for s in _DAEMON_DOWN):
            return EngineError(f"{self.name} is not usable: {line}", hint=self._usable_hint())
        if (
            "image not known" in low
            or "no such image" in low
            or "unable to find image" in low
            or "pull access denied" in low
        ):
            return EngineError(
                f"image {spec.image} is not present in {self.name}",
                hint=(
                    f"get it with `{self.name} pull {spec.image}` or build/import it; "
                    "las never pulls implicitly"
                ),
            )
        if "address already in use" in low or "port is already allocated" in low:
            port = _port_in_error(spec.ports, text)
            return EngineError(
                f"port {port} is already in use",
                hint="stop whatever listens there, or choose another host port",
            )
        if spec.gpus and ("cdi" in low or "device driver" in low or "nvidia" in low):
            hint = (
                "generate the CDI spec: `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`"
                if self.name == "podman"
                else "install nvidia-container-toolkit and restart dockerd"
            )
            return EngineError(f"{self.name} cannot provide the GPU(s): {line}", hint=hint)
        return EngineError(
            f"{self.name} run failed ({status}): {line or 'no error message'}",
            hint=f"the full error: {text.strip()[-500:]}" if text.strip() != line else None,
        )

    def _remove_quietly(self, name: str) -> None:
        with contextlib.suppress(EngineError):
            self.remove(name, force=True)

    # --- inspect -----------------------------------------------------------------------

    def inspect(self, cid: str) -> ContainerState | None:
        """The container's state, or None when there is no such container.

        Blocks for at most ``timeout``.

        Raises:
            EngineError: the engine is not usable or its output cannot be read.
        """
        states = self._inspect_many([cid])
        return states[0] if states else None

    def final_state(self, cid: str, settle: float = OOM_SETTLE) -> ContainerState | None:
        """``inspect`` for an exited container, letting docker finish recording OOMKilled.

        docker sets OOMKilled from a separate OOM event; once (first OOM after dockerd
        start) it was still false right after ``docker wait`` returned. When docker reports
        exit 137 under a memory limit without OOMKilled, re-inspect for up to ``settle``
        seconds. Other engines and states return at once.
        """
        state = self.inspect(cid)
        deadline = time.monotonic() + settle
        while (
            self.name == "docker"
            and state is not None
            and not state.running
            and state.exit_code == 137
            and state.memory_limit > 0
            and not state.oom_killed
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
            state = self.inspect(cid)
        return state

    def _inspect_many(self, ids: Sequence[str]) -> list[ContainerState]:
        if not ids:
            return []
        proc = self._call(["container", "inspect", *ids], what=f"{self.name} inspect")
        data: Any = None
        with contextlib.suppress(ValueError):
            data = json.loads(proc.stdout) if proc.stdout.strip() else []
        if proc.returncode != 0:
            low = proc.stderr.lower()
            missing_only = all(
                any(s in ln.lower() for s in _NOT_FOUND)
                for ln in proc.stderr.splitlines()
                if ln.strip() and "level=warning" not in ln
            )
            if not (any(s in low for s in _NOT_FOUND) and missing_only):
                raise self._failure(proc, f"{self.name} inspect")
        if not isinstance(data, list):
            raise EngineError(
                f"cannot read {self.name} inspect output: {proc.stdout.strip()[:200]!r}"
            )
        return [self._state(item) for item in data if isinstance(item, dict)]

    def _state(self, d: dict[str, Any]) -> ContainerState:
        st = d.get("State") or {}
        hc = d.get("HostConfig") or {}
        cfg = d.get("Config") or {}
        status = str(st.get("Status") or "unknown").lower()
        status = _STATUS_ALIASES.get(status, status)
        running = bool(st.get("Running")) and status == "running"
        started, finished = _time(st.get("StartedAt")), _time(st.get("FinishedAt"))
        exit_code = st.get("ExitCode")
        if running or status == "created" or exit_code is None:
            exit_code = None  # docker reports 128 for a container that never started
        cap_drop = [_cap(c) for c in _str_list(hc.get("CapDrop"))]
        cap_add = [_cap(c) for c in _str_list(hc.get("CapAdd"))]
        privileged = bool(hc.get("Privileged"))
        caps: list[str] | None
        if privileged:
            caps = ["ALL"]
        elif "EffectiveCaps" in d:  # podman
            caps = sorted(_cap(c) for c in _str_list(d.get("EffectiveCaps")))
        elif "ALL" in cap_drop:
            caps = sorted(set(cap_add) - {"ALL"})
        else:
            caps = sorted((DOCKER_DEFAULT_CAPS - set(cap_drop)) | (set(cap_add) - {"ALL"}))
        sec_opt = _str_list(hc.get("SecurityOpt"))
        nnp = any(
            o.replace(":", "=") in ("no-new-privileges", "no-new-privileges=true") for o in sec_opt
        )
        network = str(hc.get("NetworkMode") or "")
        if network == "default":
            network = "bridge"
        security: dict[str, Any] = {
            "CapDrop": cap_drop,
            "CapAdd": cap_add,
            "Capabilities": caps,
            "NoNewPrivileges": nnp,
            "SecurityOpt": sec_opt,
            "ReadonlyRootfs": bool(hc.get("ReadonlyRootfs")),
            "User": str(cfg.get("User") or ""),
            "NetworkMode": network,
            "PortBindings": _port_bindings(hc.get("PortBindings")),
            "PidsLimit": int(hc.get("PidsLimit") or 0),
            "Init": bool(hc.get("Init")),
            "Privileged": privileged,
            "Ulimits": _ulimits(hc.get("Ulimits")),
        }
        labels = cfg.get("Labels") or {}
        return ContainerState(
            id=str(d.get("Id", "")),
            name=str(d.get("Name", "")).lstrip("/"),
            image=str(cfg.get("Image") or d.get("ImageName") or d.get("Image") or ""),
            status=status,
            running=running,
            pid=int(st.get("Pid") or 0) if running else 0,
            exit_code=None if exit_code is None else int(exit_code),
            oom_killed=bool(st.get("OOMKilled")),
            started_at=started,
            finished_at=finished,
            labels={str(k): str(v) for k, v in labels.items()},
            memory_limit=int(hc.get("Memory") or 0),
            error=str(st.get("Error") or ""),
            security=security,
        )

    def list_labelled(self, key: str, value: str | None = None) -> list[ContainerState]:
        """Every container (running or not) carrying label ``key`` (with ``value`` if given).

        Two engine calls (``ps -a -q`` with a label filter, then one ``inspect``), each
        bounded by ``timeout``; a container removed between the two is left out.

        Raises:
            EngineError: the engine is not usable.
        """
        if not key or "=" in key:
            raise EngineError(f"invalid label key {key!r}")
        selector = key if value is None else f"{key}={value}"
        proc = self._call(
            ["ps", "-a", "-q", "--no-trunc", "--filter", f"label={selector}"],
            what=f"{self.name} ps",
        )
        if proc.returncode != 0:
            raise self._failure(proc, f"{self.name} ps")
        ids = list(dict.fromkeys(ln.strip() for ln in proc.stdout.splitlines() if ln.strip()))
        return self._inspect_many(ids)

    # --- lifecycle -------------------------------------------------------------------------

    def stop(self, cid: str, timeout: float) -> None:
        """Send the stop signal, wait up to ``timeout`` s (rounded up), then SIGKILL.

        Blocks until the container has exited (at most ``timeout`` + 30 s). A container that
        has already exited or does not exist is not an error.

        Raises:
            EngineError: the engine is not usable or did not finish in time.
        """
        seconds = max(0, math.ceil(timeout))
        proc = self._call(
            ["stop", "-t", str(seconds), cid],
            timeout=seconds + STOP_MARGIN,
            what=f"{self.name} stop",
        )
        if proc.returncode != 0 and not self._gone(proc):
            raise self._failure(proc, f"{self.name} stop {cid}")

    def kill(self, cid: str, signal: str | int = "SIGKILL") -> bool:
        """Send ``signal`` (name or number) to the container's PID 1, i.e. its init, which
        forwards it to the workload. Returns False if it is not running or does not exist.

        Raises:
            EngineError: the engine is not usable.
        """
        proc = self._call(["kill", f"--signal={signal}", cid], what=f"{self.name} kill")
        if proc.returncode == 0:
            return True
        low = proc.stderr.lower()
        if self._gone(proc) or "not running" in low or "can only kill running" in low:
            return False
        raise self._failure(proc, f"{self.name} kill {cid}")

    def remove(self, cid: str, force: bool = True) -> None:
        """Remove the container; with ``force`` a running one is killed first (no grace).

        Idempotent: no error if it does not exist.

        Raises:
            EngineError: the engine is not usable, or (without ``force``) it is running.
        """
        args = ["rm"]
        if force:
            args.append("-f")
            if self.name == "podman":
                args += ["-t", "0"]  # else podman waits the stop timeout (10 s) first
        proc = self._call([*args, cid], what=f"{self.name} rm")
        if proc.returncode != 0 and not self._gone(proc):
            raise self._failure(proc, f"{self.name} rm {cid}")

    def wait(self, cid: str, timeout: float) -> int | None:
        """Block until the container exits (at most ``timeout`` s); its exit code, or None if
        it was still running when the time was up.

        Raises:
            EngineError: no such container, or the engine is not usable.
        """
        import subprocess

        try:
            proc = subprocess.run(
                [*self.base_args(), "wait", cid],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                env=self.subprocess_env(),
                cwd=self.cwd,
                timeout=max(timeout, 0.001),
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None
        except OSError as exc:
            raise EngineError(f"cannot execute {self.binary}: {exc.strerror or exc}") from exc
        if proc.returncode != 0:
            if self._gone(proc):
                raise EngineError(f"no container {cid} in {self.name}")
            raise self._failure(proc, f"{self.name} wait {cid}")
        lines = proc.stdout.strip().splitlines()
        try:
            return int(lines[-1])
        except (IndexError, ValueError) as exc:
            raise EngineError(
                f"cannot read {self.name} wait output: {proc.stdout.strip()[:200]!r}"
            ) from exc

    @staticmethod
    def _gone(proc: subprocess.CompletedProcess[str]) -> bool:
        low = proc.stderr.lower()
        return any(s in low for s in _NOT_FOUND)

    # --- argv for callers that stream ---------------------------------------------------

    def logs_args(self, cid: str, follow: bool = False, since: str | None = None) -> list[str]:
        """argv of ``ENGINE logs``: run it with two pipes (and ``env=subprocess_env()``,
        ``cwd=cwd``) to get the container's stdout and stderr separately. ``since``: an RFC
        3339 time or a duration such as ``10m``, as the engines accept."""
        args = [*self.base_args(), "logs"]
        if follow:
            args.append("--follow")
        if since:
            args.append(f"--since={since}")
        return [*args, cid]

    def exec_args(self, cid: str, argv: Sequence[str]) -> list[str]:
        """argv of ``ENGINE exec CID ARGV...`` (no tty, no stdin); run it with
        ``env=subprocess_env()`` and ``cwd=cwd``."""
        if not argv:
            raise EngineError("exec needs a command")
        return [*self.base_args(), "exec", cid, *argv]

    # --- out of memory -----------------------------------------------------------------

    def oom_detected(self, state: ContainerState, memory_limit: int | None) -> tuple[bool, str]:
        """Whether the container was killed by its memory limit, and how that was decided.

        True when the engine reports OOMKilled. Podman on cgroup v1 never reports it: there,
        exit code 137 (SIGKILL) under a memory limit counts as out-of-memory, and the reason
        says that it was inferred. ``memory_limit`` is the limit set (bytes); None or 0 falls
        back to the one inspect shows.
        """
        limit = memory_limit or state.memory_limit
        if state.oom_killed:
            return True, f"reported by {self.name} (OOMKilled)"
        if state.exit_code != 137:
            return False, f"not reported by {self.name} and exit code is {state.exit_code}"
        if not limit:
            return False, "exit 137 (SIGKILL) without a memory limit: not an out-of-memory kill"
        if self.name == "podman" and cgroup_layout() != "v2":
            return True, (
                f"inferred: exit 137 under a {format_bytes(limit)} memory limit; podman on "
                "cgroup v1 does not report OOMKilled"
            )
        return False, (
            f"exit 137 under a {format_bytes(limit)} memory limit, but {self.name} did not "
            "report OOMKilled: killed by a signal, not by the limit"
        )


def docker_create_body(spec: ContainerRunSpec) -> dict[str, Any]:
    """dockerd's ``POST /containers/create`` body for ``spec``: what ``run_args`` asks of
    the CLI, flag for flag (call ``run_args`` first: it checks the spec)."""
    host: dict[str, Any] = {
        "Init": True,
        "CapDrop": ["ALL"],
        "CapAdd": [_cap(c) for c in spec.cap_add] or None,
        "SecurityOpt": ["no-new-privileges"],
        "PidsLimit": spec.pids_limit,
        "Mounts": [
            {"Type": "bind", "Source": v.source, "Target": v.target, "ReadOnly": v.read_only}
            for v in spec.volumes
        ],
        "NetworkMode": "default" if spec.ports else "none",
        "RestartPolicy": {"Name": "no"},  # las restarts, never the engine
    }
    if spec.read_only_root:
        host["ReadonlyRootfs"] = True
        host["Tmpfs"] = {"/tmp": "rw,exec,nosuid,nodev,mode=1777"}
    if spec.ports:
        bindings: dict[str, list[dict[str, str]]] = {}
        for p in spec.ports:
            bindings.setdefault(f"{p.container_port}/{p.protocol}", []).append(
                {"HostIp": p.host_ip, "HostPort": str(p.host_port)}
            )
        host["PortBindings"] = bindings
    if spec.memory is not None:
        host["Memory"] = host["MemorySwap"] = spec.memory
    if spec.cpus is not None:
        host["NanoCpus"] = round(spec.cpus * 1e9)
    ulimits = []
    for u in spec.ulimits:
        name, _, values = u.partition("=")
        soft, _, hard = values.partition(":")
        ulimits.append({"Name": name, "Soft": int(soft), "Hard": int(hard or soft)})
    if ulimits:
        host["Ulimits"] = ulimits
    if spec.log_max_size is not None:
        host["LogConfig"] = {"Type": "", "Config": {"max-size": str(int(spec.log_max_size))}}
    if spec.gpus:
        host["DeviceRequests"] = [
            {"Driver": "", "Count": 0, "DeviceIDs": [u for _, u in spec.gpus],
             "Capabilities": [["gpu"]], "Options": {}}
        ]  # fmt: skip
    body: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in (*spec.env, *spec.secret_env)],
        "Labels": dict(spec.labels),
        "HostConfig": host,
    }
    if spec.argv:
        body["Cmd"] = list(spec.argv)
    if spec.user:
        body["User"] = spec.user
    if spec.workdir:
        body["WorkingDir"] = spec.workdir
    if spec.stop_signal:
        body["StopSignal"] = spec.stop_signal
    if spec.ports:
        body["ExposedPorts"] = {f"{p.container_port}/{p.protocol}": {} for p in spec.ports}
    return body


def podman_create_body(spec: ContainerRunSpec, argv: Sequence[str]) -> dict[str, Any]:
    """libpod's ``POST /libpod/containers/create`` body (a SpecGenerator) for ``spec``: what
    ``run_args`` (``argv``, recorded as the container's create command) asks of the CLI,
    setting for setting, with what the CLI adds that the API does not (the tmpfs mounts of
    a read-only root, the sd-notify mode, the TTY annotation); containers.conf's defaults
    (umask, stop timeout...) apply on both paths. A test compares both containers with
    ``podman inspect``. No GPUs: those go through the CLI."""
    import signal

    resources: dict[str, Any] = {"pids": {"limit": spec.pids_limit}}
    if spec.memory is not None:
        resources["memory"] = {"limit": spec.memory, "swap": spec.memory}
    if spec.cpus is not None:
        resources["cpu"] = {"quota": round(spec.cpus * 100_000), "period": 100_000}
    mounts = []
    if spec.read_only_root:
        mounts.append(
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["rw", "exec", "nosuid", "nodev", "mode=1777"],
            }
        )
        mounts += [
            {
                "destination": d,
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"],
            }
            for d in ("/run", "/var/tmp")
        ]  # what podman's --read-only adds
    mounts += [{"destination": v.target, "type": "bind", "source": v.source,
                "options": [*(["ro"] if v.read_only else []), "rprivate", "rbind"]}
               for v in spec.volumes]  # fmt: skip
    body: dict[str, Any] = {
        "name": spec.name,
        "image": spec.image,
        "containerCreateCommand": list(argv),
        "env": dict((*spec.env, *spec.secret_env)),
        "labels": dict(spec.labels),
        "annotations": {"io.kubernetes.cri-o.TTY": "false"},
        "init": True,
        "cap_drop": ["ALL"],
        "cap_add": [_cap(c) for c in spec.cap_add],
        "no_new_privileges": True,
        "read_only_filesystem": spec.read_only_root,
        "mounts": mounts,
        "sdnotifyMode": "container",
        "resource_limits": resources,
        "netns": {"nsmode": "bridge" if spec.ports else "none"},
        "portmappings": [
            {
                "host_ip": p.host_ip,
                "host_port": p.host_port,
                "container_port": p.container_port,
                "protocol": p.protocol,
            }
            for p in spec.ports
        ],
        "r_limits": [],
    }
    for u in spec.ulimits:
        name, _, values = u.partition("=")
        soft, _, hard = values.partition(":")
        body["r_limits"].append({"type": name, "soft": int(soft), "hard": int(hard or soft)})
    if spec.argv:
        body["command"] = list(spec.argv)
    if spec.user:
        body["user"] = spec.user
    if spec.workdir:
        body["work_dir"] = spec.workdir
    if spec.stop_signal:
        sig = spec.stop_signal.upper()
        try:
            body["stop_signal"] = (
                int(sig)
                if sig.isdigit()
                else signal.Signals[sig if sig.startswith("SIG") else "SIG" + sig].value
            )
        except KeyError:
            raise EngineError(f"invalid stop signal {spec.stop_signal!r}") from None
    if spec.log_max_size is not None:
        body["log_configuration"] = {"size": int(spec.log_max_size)}
    return body


def _check_name(what: str, name: str) -> None:
    if not _NAME_RE.match(name or ""):
        raise EngineError(
            f"invalid {what} {name!r}",
            hint="use letters, digits, '_', '.', '-', starting with a letter or digit",
        )


def _publish(port: PublishedPort) -> str:
    if port.protocol not in ("tcp", "udp"):
        raise EngineError(f"invalid protocol {port.protocol!r}: expected tcp or udp")
    for value in (port.host_port, port.container_port):
        if not 1 <= value <= 65535:
            raise EngineError(f"invalid port {value}: expected 1-65535")
    import ipaddress  # only for published ports: kept off the supervisor's import path

    try:
        addr = ipaddress.ip_address(port.host_ip)
    except ValueError as exc:
        raise EngineError(
            f"invalid host address {port.host_ip!r} for port {port.host_port}",
            hint="give an IP address such as 127.0.0.1 (0.0.0.0 only to publish on every one)",
        ) from exc
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    return f"{host}:{port.host_port}:{port.container_port}/{port.protocol}"


def _mount(vol: VolumeMount) -> str:
    for what, path in (("source", vol.source), ("target", vol.target)):
        if not os.path.isabs(path):
            raise EngineError(f"volume {what} {path!r} is not an absolute path")
        if "," in path or "\n" in path:
            raise EngineError(f"volume {what} {path!r} contains a comma or newline")
    if not os.path.exists(vol.source):
        raise EngineError(
            f"volume source {vol.source} does not exist",
            hint="create it, or correct the path in the module's parameters",
        )
    spec = f"--mount=type=bind,source={vol.source},target={vol.target}"
    return spec + (",readonly" if vol.read_only else "")


def _port_in_error(ports: Sequence[PublishedPort], text: str) -> str:
    """Which published port an 'address in use' error is about ('HOST:PORT')."""
    for port in ports:
        addr = f"[{port.host_ip}]" if ":" in port.host_ip else port.host_ip
        if f"{port.host_ip}:{port.host_port}" in text or f"{addr}:{port.host_port}" in text:
            return f"{addr}:{port.host_port}"
    if len(ports) == 1:
        port = ports[0]
        return f"{port.host_ip}:{port.host_port}"
    match = re.search(r"(\d+\.\d+\.\d+\.\d+|\[[0-9a-fA-F:]+\]):(\d+)", text)
    if match:
        return f"{match.group(1)}:{match.group(2)}"
    return ", ".join(f"{p.host_ip}:{p.host_port}" for p in ports) or "?"
