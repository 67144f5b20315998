"""Running an engine's command-line tool (``podman``, ``docker``), and its ``run`` argv.

Every call runs the CLI as a subprocess with an argv list (never a shell), a timeout,
stdin from /dev/null, the caller's environment plus the engine's own variables, and its
current directory in a private scratch directory (``host.scratch_dir``). It returns the
completed process whatever its exit status; what cannot even be run is an ``EngineError``,
never a ``subprocess`` or ``OSError`` exception.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from localaistack.osutil import which
from localaistack.runtime.engines import failures, spec
from localaistack.runtime.engines.host import scratch_dir
from localaistack.runtime.engines.spec import ContainerRunSpec, EngineError

if TYPE_CHECKING:
    import subprocess

DEFAULT_TIMEOUT = 30.0  # seconds for one engine CLI call


class EngineCLI:
    """One engine's CLI: where it is, what it runs with, how a call fails.

    ``env``: variables added to this process's environment for every call.
    ``global_args`` go before the subcommand on every call. ``timeout``: seconds per call.
    ``usable_hint`` says what to do when the engine cannot reach its daemon. ``binary``
    is None when the CLI is not on PATH; every call then raises ``EngineError``.
    """

    def __init__(
        self,
        name: str,
        *,
        env: Mapping[str, str] | None,
        global_args: Sequence[str],
        timeout: float,
        usable_hint: Callable[[], str],
    ) -> None:
        self.name = name
        self.env: dict[str, str] = dict(env or {})
        self.global_args: list[str] = list(global_args)
        self.timeout = timeout
        self.usable_hint = usable_hint
        self.binary: str | None = which(name, self.env.get("PATH", os.environ.get("PATH")))
        self._cwd: str | None = None

    @property
    def cwd(self) -> str:
        """The private scratch directory engine calls run in."""
        if self._cwd is None or not os.path.isdir(self._cwd):
            self._cwd = scratch_dir()
        return self._cwd

    def subprocess_env(self) -> dict[str, str]:
        """The environment engine CLIs run with: this process's, plus ``env``."""
        return {**os.environ, **self.env}

    def not_installed(self) -> str:
        return f"{self.name} is not installed (no {self.name!r} on PATH)"

    def base_args(self) -> list[str]:
        """``[binary, *global_args]``. Raises EngineError if the CLI is not installed."""
        if self.binary is None:
            raise EngineError(
                self.not_installed(),
                hint=f"install {self.name}, or choose the other engine or native mode",
            )
        return [self.binary, *self.global_args]

    def call(
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
        import subprocess  # imported here: the start path uses the API, not the CLI

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

    def call_within(
        self, args: Sequence[str], timeout: float
    ) -> subprocess.CompletedProcess[str] | None:
        """``call`` for a command that may rightly outlast ``timeout``: None when it did
        (it is killed then), instead of an error."""
        import subprocess

        try:
            return subprocess.run(
                [*self.base_args(), *args],
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

    def failure(self, proc: subprocess.CompletedProcess[str], what: str) -> EngineError:
        """An EngineError for a failed call, recognising an unusable engine."""
        line = failures.first_error_line(proc.stderr) or failures.first_error_line(proc.stdout)
        if failures.daemon_down(proc.stderr):
            return EngineError(f"{self.name} is not usable: {line}", hint=self.usable_hint())
        return EngineError(
            f"{what} failed (exit {proc.returncode}): {line or 'no error message'}",
            hint=f"see `{self.name} info` and the engine's own logs",
        )


def run_argv(
    cli: EngineCLI,
    s: ContainerRunSpec,
    gpu_args: Callable[[Sequence[tuple[str, str]]], list[str]],
) -> list[str]:
    """The complete ``ENGINE run -d ...`` argv for ``s`` (security defaults included),
    checking each part of the spec on the way (see ``Engine.run_args``); ``gpu_args``
    gives the engine's own options for the spec's GPUs."""
    spec.check_name("container name", s.name)
    spec.check_image(s.image)
    args = [*cli.base_args(), "run", "-d", "--name", s.name]
    args += ["--pull=never", "--init"]
    args += ["--cap-drop=ALL"]
    args += [f"--cap-add={spec.check_cap(cap)}" for cap in s.cap_add]
    args.append("--security-opt=no-new-privileges")
    if s.read_only_root:
        # exec allowed on /tmp: both engines then mount it alike (docker adds noexec).
        args += ["--read-only", "--tmpfs=/tmp:rw,exec,nosuid,nodev,mode=1777"]
    if s.user:
        args.append(f"--user={s.user}")
    if s.workdir:
        args.append(f"--workdir={s.workdir}")
    if s.ports:
        for port in s.ports:
            args += ["-p", spec.publish_arg(port)]
    else:
        args.append("--network=none")
    spec.check_pids_limit(s.pids_limit)
    args.append(f"--pids-limit={s.pids_limit}")
    if s.memory is not None:
        spec.check_memory(s.memory)
        # memory-swap = memory: the limit is a limit, not half of one where swap exists.
        args += [f"--memory={s.memory}", f"--memory-swap={s.memory}"]
    if s.cpus is not None:
        spec.check_cpus(s.cpus)
        args.append(f"--cpus={s.cpus:g}")
    for ulimit in s.ulimits:
        spec.check_ulimit(ulimit)
        args.append(f"--ulimit={ulimit}")
    if s.stop_signal:
        args.append(f"--stop-signal={s.stop_signal}")
    if s.log_max_size is not None:
        args.append(f"--log-opt=max-size={int(s.log_max_size)}")
    for key in sorted(s.labels):
        spec.check_label_key(key)
        args.append(f"--label={key}={s.labels[key]}")
    for key, value in s.env:
        spec.check_env(key, value)
        args.append(f"--env={key}={value}")
    for key, value in s.secret_env:
        spec.check_env(key, value)
        args.append(f"--env={key}")  # the value comes from the CLI's environment
    args += [spec.mount_arg(vol) for vol in s.volumes]
    args += gpu_args(s.gpus)
    args.append(s.image)
    args += list(s.argv)
    return args
