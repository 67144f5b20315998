"""``Engine``: one container engine (``Podman``, ``Docker``) as the container backends use it.

An Engine runs the engine's CLI (``cli.EngineCLI``) for everything but two things, which
skip the CLI for the start path's sake: ``run`` creates and starts the container through
the engine's API when it can (dockerd's socket, ``dockerapi``; the podman API service las
keeps, ``podmanapi``), with the settings the CLI would apply; ``image_exists`` first asks
the engine's image store (``images``). What the two engines do differently is a method or
a class attribute of their subclass; ``Engine(name)`` gives the subclass for ``name``.

What a container started by ``Engine.run`` always gets, whatever the spec says:
``--cap-drop=ALL`` (plus the spec's ``cap_add``), ``--security-opt=no-new-privileges``,
``--init`` (the workload is not PID 1, so signals without a handler still end it),
``--pull=never`` (images are never fetched implicitly), ``--pids-limit``, ``--network=none``
when it publishes no port, and published ports only on the host address the spec names.
Never ``--privileged``, ``--network=host`` or a mount of an engine socket.

Every failure it can explain is an ``EngineError`` (message + hint), the rest with the
engine's own first error line; never a ``subprocess`` or ``OSError`` exception.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from localaistack.osutil import which
from localaistack.runtime.engines import dockerapi, failures, images, oom, podmanapi
from localaistack.runtime.engines.cli import DEFAULT_TIMEOUT, EngineCLI, run_argv
from localaistack.runtime.engines.host import cgroup_layout
from localaistack.runtime.engines.spec import (
    ENGINES,
    ID_RE,
    ContainerRunSpec,
    ContainerState,
    EngineError,
    check_label_key,
    gpu_uuids,
)
from localaistack.runtime.engines.state import container_state
from localaistack.runtime.engines.unixhttp import api_request

RUN_TIMEOUT = 120.0  # `run -d`: creates the container and starts it, no pull
STOP_MARGIN = 30.0  # how much longer than the stop timeout a `stop` call may take


class Engine:
    """One container engine CLI (``podman`` or ``docker``) and how to call it.

    ``Engine(name, ...)`` constructs the subclass for ``name`` (``Podman``, ``Docker``).
    ``env``: variables added to this process's environment for every engine call (e.g.
    ``{"DOCKER_HOST": "unix:///run/las-ci/docker.sock"}``); ``subprocess_env()`` gives the
    result, for callers that run ``logs_args``/``exec_args`` themselves. ``global_args``
    go before the subcommand on every call (e.g. ``["--runtime", "runc"]`` for podman on
    hybrid cgroups; see ``suggested_global_args``). ``timeout``: seconds per CLI call.

    Constructing an Engine runs nothing. ``binary`` is None when the CLI is not on PATH;
    every call then raises ``EngineError``.
    """

    name: ClassVar[str]
    gpu_hint: ClassVar[str]  # what to do when the engine cannot provide a GPU
    rm_force: ClassVar[tuple[str, ...]] = ("-f",)  # `rm` options that kill a running one
    records_oom_late: ClassVar[bool] = False  # OOMKilled may show up after `wait` returned
    usable_args: ClassVar[tuple[str, ...]]  # the CLI call that says whether it answers

    def __new__(cls, name: str, **_: Any) -> Engine:
        engine = cls
        if cls is Engine:
            if name not in _BY_NAME:
                raise EngineError(
                    f"unknown container engine {name!r}",
                    hint=f"use one of: {', '.join(ENGINES)}",
                )
            engine = _BY_NAME[name]
        elif name != cls.name:
            raise EngineError(f"{cls.__name__} is the {cls.name} engine, not {name!r}")
        return super().__new__(engine)

    def __init__(
        self,
        name: str,
        *,
        env: Mapping[str, str] | None = None,
        global_args: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.cli = EngineCLI(
            self.name,
            env=env,
            global_args=global_args,
            timeout=timeout,
            usable_hint=self.usable_hint,
        )

    def __repr__(self) -> str:
        return f"<Engine {self.name} binary={self.binary} global_args={self.global_args}>"

    # --- what differs between the engines: each subclass defines these ------------------

    @classmethod
    def host_global_args(cls) -> list[str]:
        """Global options this host needs for this engine (see ``suggested_global_args``)."""
        return []

    def usable_hint(self) -> str:
        """What to do when the engine cannot reach its daemon or service."""
        raise NotImplementedError

    def _describe(self, version: Any) -> tuple[bool, str]:
        """``usable``'s answer from the JSON that ``usable_args`` printed."""
        raise NotImplementedError

    @staticmethod
    def store_lists(env: Mapping[str, str], image: str) -> bool:
        """Whether the engine's image store lists ``image``, read without the CLI; never a
        "no" (``env``: the CLI's environment; see ``images``)."""
        raise NotImplementedError

    def _cli_has(self, image: str) -> bool:
        """Whether the CLI says that ``image`` is present (EngineError if it cannot say)."""
        raise NotImplementedError

    def _gpu_args(self, gpus: Sequence[tuple[str, str]]) -> list[str]:
        """The ``run`` options that give ``gpus`` to the container, after checking them."""
        raise NotImplementedError

    def _api_socket(self, spec: ContainerRunSpec) -> str | None:
        """The API's socket where ``run`` creates ``spec``'s container; None: the CLI."""
        raise NotImplementedError

    def _create_body(self, spec: ContainerRunSpec, argv: Sequence[str]) -> dict[str, Any]:
        """The API's create body for ``spec`` (``argv``: its ``run_args``)."""
        raise NotImplementedError

    def _api_paths(self, spec: ContainerRunSpec) -> tuple[str, str]:
        """The API's create path and start path (with ``{}`` for the id) for ``spec``."""
        raise NotImplementedError

    def _api_start_failed(self, sock: str, spec: ContainerRunSpec) -> None:
        """After the API created a container that it then failed to start."""

    def _infers_oom(self) -> bool:
        """Whether exit 137 under a memory limit counts as OOM (the engine cannot say)."""
        return False

    def podman_socket(self) -> str | None:
        """Where las's podman API service for this engine listens; None where none is used
        (always for docker; see ``Podman.podman_socket``)."""
        return None

    def podman_api(self, *, wait: bool = False) -> str | None:
        """The socket of las's podman API service for this engine, or None (always for
        docker; see ``Podman.podman_api``)."""
        return None

    # --- plumbing ------------------------------------------------------------------------

    @property
    def binary(self) -> str | None:
        return self.cli.binary

    @property
    def env(self) -> dict[str, str]:
        return self.cli.env

    @property
    def global_args(self) -> list[str]:
        return self.cli.global_args

    @property
    def timeout(self) -> float:
        return self.cli.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self.cli.timeout = value

    @property
    def cwd(self) -> str:
        """The private scratch directory engine calls run in."""
        return self.cli.cwd

    def subprocess_env(self) -> dict[str, str]:
        """The environment engine CLIs run with: this process's, plus ``env``."""
        return self.cli.subprocess_env()

    def base_args(self) -> list[str]:
        """``[binary, *global_args]``. Raises EngineError if the CLI is not installed."""
        return self.cli.base_args()

    # --- engine-level queries ---------------------------------------------------------

    def usable(self) -> tuple[bool, str]:
        """Whether the engine answers, and a one-line description or the reason it does not.

        podman: ``podman info``; docker: ``docker version`` (needs the daemon). Blocks for
        at most ``timeout``. Never raises.
        """
        if self.binary is None:
            return False, self.cli.not_installed()
        try:
            proc = self.cli.call(self.usable_args, what=f"{self.name} {self.usable_args[0]}")
        except EngineError as exc:
            return False, exc.message
        if proc.returncode != 0:
            line = failures.first_error_line(proc.stderr) or f"exit {proc.returncode}"
            return False, f"{self.name} is not usable: {line}"
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            return True, f"{self.name} answers (unparsed version output)"
        return self._describe(data)

    def image_exists(self, image: str) -> bool:
        """Whether ``image`` is present locally. Blocks for at most ``timeout``.

        Asks the engine's image store directly first (``image_listed``: a few ms, against
        tens for the CLI); the CLI decides whenever that does not say yes.

        Raises:
            EngineError: the engine is not usable.
        """
        return self.image_listed(image) or self._cli_has(image)

    def image_listed(self, image: str) -> bool:
        """Whether the engine's store lists ``image``, asked without its CLI (never a "no":
        False means "ask the CLI"; see ``images``)."""
        return self.binary is not None and self.store_lists(self.subprocess_env(), image)

    # --- run ---------------------------------------------------------------------------

    def run_args(self, spec: ContainerRunSpec) -> list[str]:
        """The complete ``ENGINE run -d ...`` argv for ``spec`` (security defaults included).

        Checks the spec first (reads the filesystem for volume sources, runs nothing).

        Raises:
            EngineError: invalid spec: a volume source that does not exist, a bad name,
                address, capability or ulimit, an unsupported GPU vendor.
        """
        return run_argv(self.cli, spec, self._gpu_args)

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
        sock = self._api_socket(spec)
        if sock is not None:
            return self._api_run(sock, spec, timeout, self._create_body(spec, argv))
        try:
            proc = self.cli.call(
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
            if lines and ID_RE.match(lines[-1]):
                return lines[-1]
            self._remove_quietly(spec.name)
            raise EngineError(
                f"{self.name} run printed no container id: {proc.stdout.strip()[:200]!r}"
            )
        low = proc.stderr.lower()
        if "container name" in low and "already in use" in low:
            # The name belongs to another container: never remove that one.
            raise failures.name_in_use(self.name, spec.name)
        error = self._run_failure(spec, proc.stderr, f"exit {proc.returncode}")
        self._remove_quietly(spec.name)
        raise error

    def _api_run(
        self, sock: str, spec: ContainerRunSpec, timeout: float, body: dict[str, Any]
    ) -> str:
        """``run`` through the engine's API on ``sock``: create, then start (what ``run -d``
        does).

        ``body`` is what ``run_args`` gives the CLI, in the API's terms
        (``docker_create_body``, ``podman_create_body``), so the container is the same (a
        test compares both with the engine's ``inspect``). It saves the CLI's own start,
        and secret values travel in the request body, on no command line.
        """
        create, start = self._api_paths(spec)
        try:
            status, reply = api_request(sock, "POST", create, body, timeout)
            low = reply.lower()
            if status in (409, 500) and "already in use" in low and "name" in low:
                raise failures.name_in_use(self.name, spec.name)
            if status == 201:
                cid = str(json.loads(reply)["Id"])
                status, reply = api_request(sock, "POST", start.format(cid), None, timeout)
                if status in (204, 304) and ID_RE.match(cid):
                    return cid
                self._api_start_failed(sock, spec)
        except OSError as exc:
            self._remove_quietly(spec.name)
            raise EngineError(
                f"{self.name} is not usable: its API at {sock} failed: {exc.strerror or exc}",
                hint=self.usable_hint(),
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            self._remove_quietly(spec.name)
            raise EngineError(f"{self.name}'s API answered what las cannot read: {exc}") from exc
        try:
            message = str(json.loads(reply).get("message", reply))
        except (ValueError, AttributeError):
            message = reply.strip()
        error = self._run_failure(spec, message, f"HTTP {status}")
        self._remove_quietly(spec.name)
        raise error

    def _run_failure(self, spec: ContainerRunSpec, text: str, status: str) -> EngineError:
        return failures.run_failure(
            self.name, spec, text, status, self.usable_hint(), self.gpu_hint
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

    def final_state(self, cid: str, settle: float = oom.OOM_SETTLE) -> ContainerState | None:
        """``inspect`` for an exited container, letting docker finish recording OOMKilled.

        docker sets OOMKilled from a separate OOM event; once (first OOM after dockerd
        start) it was still false right after ``docker wait`` returned. When docker reports
        exit 137 under a memory limit without OOMKilled, re-inspect for up to ``settle``
        seconds. Other engines and states return at once.
        """
        state = self.inspect(cid)
        deadline = time.monotonic() + settle
        while (
            self.records_oom_late and oom.may_be_unrecorded(state) and time.monotonic() < deadline
        ):
            time.sleep(0.05)
            state = self.inspect(cid)
        return state

    def _inspect_many(self, ids: Sequence[str]) -> list[ContainerState]:
        if not ids:
            return []
        proc = self.cli.call(["container", "inspect", *ids], what=f"{self.name} inspect")
        data: Any = None
        with contextlib.suppress(ValueError):
            data = json.loads(proc.stdout) if proc.stdout.strip() else []
        if proc.returncode != 0 and not failures.only_not_found(proc.stderr):
            raise self.cli.failure(proc, f"{self.name} inspect")
        if not isinstance(data, list):
            raise EngineError(
                f"cannot read {self.name} inspect output: {proc.stdout.strip()[:200]!r}"
            )
        return [container_state(item) for item in data if isinstance(item, dict)]

    def list_labelled(self, key: str, value: str | None = None) -> list[ContainerState]:
        """Every container (running or not) carrying label ``key`` (with ``value`` if given).

        Two engine calls (``ps -a -q`` with a label filter, then one ``inspect``), each
        bounded by ``timeout``; a container removed between the two is left out.

        Raises:
            EngineError: the engine is not usable.
        """
        check_label_key(key)
        selector = key if value is None else f"{key}={value}"
        proc = self.cli.call(
            ["ps", "-a", "-q", "--no-trunc", "--filter", f"label={selector}"],
            what=f"{self.name} ps",
        )
        if proc.returncode != 0:
            raise self.cli.failure(proc, f"{self.name} ps")
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
        proc = self.cli.call(
            ["stop", "-t", str(seconds), cid],
            timeout=seconds + STOP_MARGIN,
            what=f"{self.name} stop",
        )
        if proc.returncode != 0 and not failures.not_found(proc.stderr):
            raise self.cli.failure(proc, f"{self.name} stop {cid}")

    def kill(self, cid: str, signal: str | int = "SIGKILL") -> bool:
        """Send ``signal`` (name or number) to the container's PID 1, i.e. its init, which
        forwards it to the workload. Returns False if it is not running or does not exist.

        Raises:
            EngineError: the engine is not usable.
        """
        proc = self.cli.call(["kill", f"--signal={signal}", cid], what=f"{self.name} kill")
        if proc.returncode == 0:
            return True
        low = proc.stderr.lower()
        if failures.not_found(low) or "not running" in low or "can only kill running" in low:
            return False
        raise self.cli.failure(proc, f"{self.name} kill {cid}")

    def remove(self, cid: str, force: bool = True) -> None:
        """Remove the container; with ``force`` a running one is killed first (no grace).

        Idempotent: no error if it does not exist, or if another caller is removing it
        already (the supervisor of its run and `las stop ?RUN_ID` may race).

        Raises:
            EngineError: the engine is not usable, or (without ``force``) it is running.
        """
        args = ["rm", *(self.rm_force if force else ())]
        proc = self.cli.call([*args, cid], what=f"{self.name} rm")
        if proc.returncode == 0:
            return
        if not (failures.not_found(proc.stderr) or failures.being_removed(proc.stderr)):
            raise self.cli.failure(proc, f"{self.name} rm {cid}")

    def wait(self, cid: str, timeout: float) -> int | None:
        """Block until the container exits (at most ``timeout`` s); its exit code, or None if
        it was still running when the time was up.

        Raises:
            EngineError: no such container, or the engine is not usable.
        """
        proc = self.cli.call_within(["wait", cid], timeout)
        if proc is None:
            return None
        if proc.returncode != 0:
            if failures.not_found(proc.stderr):
                raise EngineError(f"no container {cid} in {self.name}")
            raise self.cli.failure(proc, f"{self.name} wait {cid}")
        lines = proc.stdout.strip().splitlines()
        try:
            return int(lines[-1])
        except (IndexError, ValueError) as exc:
            raise EngineError(
                f"cannot read {self.name} wait output: {proc.stdout.strip()[:200]!r}"
            ) from exc

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
        return oom.oom_detected(self.name, state, memory_limit, infer=self._infers_oom())


class Podman(Engine):
    """podman: rootful or rootless, daemonless; las keeps an API service for starts."""

    name = "podman"
    gpu_hint = "generate the CDI spec: `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`"
    rm_force = ("-f", "-t", "0")  # else podman waits the stop timeout (10 s) first
    usable_args = ("info", "--format", "json")

    @classmethod
    def host_global_args(cls) -> list[str]:
        """``--runtime runc`` on hybrid cgroups (crun refuses them) when runc is installed."""
        if cgroup_layout() == "hybrid" and which("runc"):
            return ["--runtime", "runc"]
        return []

    def usable_hint(self) -> str:
        return "check `podman info`; rootful podman needs root, rootless needs a user session"

    def _describe(self, version: Any) -> tuple[bool, str]:
        host = version.get("host", {})
        number = version.get("version", {}).get("Version", "?")
        runtime = host.get("ociRuntime", {}).get("name", "?")
        cgroups = host.get("cgroupVersion", "?")
        return True, f"podman {number} (runtime {runtime}, cgroups {cgroups})"

    @staticmethod
    def store_lists(env: Mapping[str, str], image: str) -> bool:
        return images.podman_lists(env, image)

    def _cli_has(self, image: str) -> bool:
        return images.podman_has(self.cli, image)

    def _gpu_args(self, gpus: Sequence[tuple[str, str]]) -> list[str]:
        return [f"--device=nvidia.com/gpu={u}" for u in gpu_uuids(self.name, gpus)]

    def _api_socket(self, spec: ContainerRunSpec) -> str | None:
        if spec.gpus:  # GPUs (CDI devices) go through the CLI: checked on a real GPU
            return None
        return self.podman_api()

    def _api_paths(self, spec: ContainerRunSpec) -> tuple[str, str]:
        return podmanapi.CREATE_PATH, podmanapi.START_PATH

    def _create_body(self, spec: ContainerRunSpec, argv: Sequence[str]) -> dict[str, Any]:
        return podmanapi.podman_create_body(spec, argv)

    def _api_start_failed(self, sock: str, spec: ContainerRunSpec) -> None:
        if spec.ports:
            # podman 4.3's service keeps the ports of a failed start bound (a `run`
            # process would exit): end it; the next start begins a new one.
            podmanapi.stop_podman_service(sock)

    def _infers_oom(self) -> bool:
        return cgroup_layout() != "v2"

    def podman_socket(self) -> str | None:
        """Where las's podman API service for this engine listens (in the private scratch
        directory), or None where none is used: with ``LAS_PODMAN_SERVICE=0``, or when
        podman talks to a remote service (``CONTAINER_HOST``, ``CONTAINER_CONNECTION``).
        See ``podmanapi.service_socket``."""
        if self.binary is None:
            return None
        return podmanapi.service_socket(
            self.binary, self.global_args, self.subprocess_env(), self.cwd
        )

    def podman_api(self, *, wait: bool = False) -> str | None:
        """The socket of las's podman API service for this engine; None while it is not
        there (it is started then; with ``wait``, waited for) or not to be used
        (``podman_socket``): the CLI is used then (see ``podmanapi.podman_service``)."""
        sock = self.podman_socket()
        if sock is None:
            return None
        argv = podmanapi.service_argv(self.base_args(), sock)
        return podmanapi.podman_service(sock, argv, self.subprocess_env(), wait=wait)


class Docker(Engine):
    """docker: the CLI of a dockerd, reached through its unix socket when las can find it."""

    name = "docker"
    gpu_hint = "install nvidia-container-toolkit and restart dockerd"
    records_oom_late = True
    usable_args = ("version", "--format", "{{json .}}")

    def usable_hint(self) -> str:
        host = self.subprocess_env().get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return (
            f"start dockerd (or fix DOCKER_HOST, now {host}) and check that this user may "
            "use its socket"
        )

    def _describe(self, version: Any) -> tuple[bool, str]:
        server = (version.get("Server") or {}).get("Version")
        if not server:
            return False, "docker is not usable: the daemon did not report a version"
        client = (version.get("Client") or {}).get("Version", "?")
        return True, f"docker {server} (client {client})"

    @staticmethod
    def store_lists(env: Mapping[str, str], image: str) -> bool:
        return images.docker_lists(env, image)

    def _cli_has(self, image: str) -> bool:
        return images.docker_has(self.cli, image)

    def _gpu_args(self, gpus: Sequence[tuple[str, str]]) -> list[str]:
        uuids = gpu_uuids(self.name, gpus)
        # docker parses --gpus as CSV: a list of devices must be one quoted field.
        return ["--gpus", '"device=' + ",".join(uuids) + '"'] if uuids else []

    def _api_socket(self, spec: ContainerRunSpec) -> str | None:
        return dockerapi.docker_socket(self.subprocess_env())

    def _api_paths(self, spec: ContainerRunSpec) -> tuple[str, str]:
        return dockerapi.create_path(spec.name), dockerapi.START_PATH

    def _create_body(self, spec: ContainerRunSpec, argv: Sequence[str]) -> dict[str, Any]:
        return dockerapi.docker_create_body(spec)


_BY_NAME: dict[str, type[Engine]] = {e.name: e for e in (Podman, Docker)}


def suggested_global_args(name: str) -> list[str]:
    """Global engine options this host needs: ``--runtime runc`` for podman on hybrid
    cgroups (crun refuses them) when runc is installed, otherwise nothing."""
    engine = _BY_NAME.get(name)
    return [] if engine is None else engine.host_global_args()


def image_listed(engine: str, env: Mapping[str, str], image: str) -> bool:
    """Whether ``engine``'s store lists ``image`` by that exact name; never a "no".

    An optimistic shortcut without the engine's CLI: False means "ask the CLI"
    (``Engine.image_exists`` does). ``env`` is the environment the engine's CLI would get.
    See ``images.docker_lists`` and ``images.podman_lists``.
    """
    cls = _BY_NAME.get(engine)
    return cls is not None and cls.store_lists(env, image)
