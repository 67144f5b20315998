"""What the container backends (podman.py, docker.py) share: a run is one container of an
engine, driven through runtime/engines.py's ``Engine`` (create and start through its API,
or ``run -d``; then its CLI's ``logs --follow``, ``wait``, ``stop``, ``kill``, ``inspect``,
``rm``).

The container outlives its shim: a new shim re-attaches to it by its id (``recover``), and
its output is the engine's log of it (``logs --since``). The shim becomes child subreaper
only once the container runs (``attach``): the engine's own processes are not its
children, as after a ``run -d`` by hand.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any

from localaistack.errors import RecoveryFailed, StartFailed
from localaistack.runtime import procs
from localaistack.runtime.backend import (
    HANDLE_VERSION,
    Attachment,
    Backend,
    Capabilities,
    ExitStatus,
    Handle,
    Orphan,
    RunContext,
    RunStatus,
    Started,
    Unrecorded,
)
from localaistack.store.db import home_label

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

    from localaistack.plan import ExecutionPlan
    from localaistack.runtime import engines


class ContainerBackend(Backend):
    """One container of the plan's engine (``name``: podman or docker)."""

    capabilities = Capabilities(
        recover=True,
        enforces_memory=True,
        assigns_gpus=True,
        detects_oom=True,
        output="engine-logs",
        # `ENGINE stop` SIGKILLs at the timeout; the shim's own `ENGINE kill` comes this
        # much later (the engine may be slow to do it).
        kill_after=15.0,
        sees_processes=False,
        # Beyond kill_after: the engine CLIs take their time to start.
        stop_margin=20.0,
    )

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        from localaistack.runtime import engines

        self.spec: dict[str, Any] = ctx.plan["container"]
        self.engine = engines.Engine(self.spec["engine"], global_args=self.spec["engine_args"])
        self.cid = ""
        self.container_name = f"las-{ctx.instance}-{ctx.run_id}"
        self.helpers: list[subprocess.Popen[bytes]] = []

    @classmethod
    def describe_limits(cls, plan: ExecutionPlan, state: dict[str, Any]) -> dict[str, str]:
        r, c = plan.resources, plan.container
        assert c is not None
        engine = c.engine
        memory = f"{engine} --memory {r.memory} (swap not allowed beyond it)"
        gpus = f"{engine} device requests for exactly the assigned GPUs"
        return {
            "processes": f"the container ({engine}), --init as PID 1, --pids-limit {c.pids_limit}",
            "memory": "none requested" if r.memory is None else memory,
            "cpus": "none requested" if r.cpus is None else f"{engine} --cpus {r.cpus}",
            "gpus": gpus if plan.gpus else "none: no device is passed to the container",
        }

    @classmethod
    def describe_security(cls, plan: ExecutionPlan) -> dict[str, Any]:
        c = plan.container
        assert c is not None
        published = [
            f"{b.host_ip}:{b.host_port}->{b.container_port}/{b.protocol}" for b in plan.ports
        ]
        return {
            "engine": c.engine,
            "capabilities": {"drop": ["ALL"], "add": list(c.cap_add)},
            "no_new_privileges": True,
            "read_only_root": c.read_only_root,
            "tmpfs": ["/tmp"] if c.read_only_root else [],
            "user": c.user,
            "network": "bridge, published: " + ", ".join(published) if published else "none",
            "pids_limit": c.pids_limit,
            "init": True,
            "privileged": False,
            "pull": "never",
            "engine_socket_mounted": False,
        }

    @classmethod
    def preload(cls) -> None:
        """The engine layer, hashlib (the run's labels) and socket (the engine's API)."""
        import hashlib  # noqa: F401
        import socket  # noqa: F401

        from localaistack.runtime import engines  # noqa: F401

    @classmethod
    def describe_run(cls, state: dict[str, Any], pid: int | None) -> str:
        cid = str(state.get("container") or "")
        return f"container {cid[:12]}" if cid else f"pid {pid}"

    @classmethod
    def preflight(cls, plan: ExecutionPlan) -> None:
        """The volumes' sources exist, the engine answers and has the image (las never
        pulls at run time)."""
        from localaistack.osutil import which
        from localaistack.runtime import engines

        c = plan.container
        assert c is not None
        for v in c.volumes:
            if not os.path.exists(v.source):
                raise StartFailed(
                    f"volume source {v.source} does not exist",
                    hint="create it, or fix the parameter that names it",
                )
        if which(c.engine) and engines.image_listed(c.engine, os.environ, c.image):
            return  # found in the engine's image store, without its CLI
        engine = engines.Engine(c.engine, global_args=c.engine_args)
        try:
            present = engine.image_exists(c.image)
        except engines.EngineError as exc:
            raise StartFailed(exc.message, hint=exc.hint) from exc
        if not present:
            raise StartFailed(
                f"image {c.image} is not present in {c.engine}; las never pulls at run time",
                hint=f"get it with `{c.engine} pull {c.image}` (or build/import it), then retry",
            )

    @classmethod
    def _labelled(cls, key: str, value: str) -> list[engines.ContainerState]:
        """The engine's containers labelled ``key=value``; none when the engine is not
        installed or cannot be asked."""
        from localaistack.osutil import which
        from localaistack.runtime import engines

        if not which(cls.name):
            return []
        try:
            return engines.Engine(cls.name).list_labelled(key, value)
        except engines.EngineError:
            return []

    @classmethod
    def unrecorded(cls, label: str, active: set[str], thorough: bool) -> list[Unrecorded]:
        """Running containers labelled ``las.home=LABEL`` (asked only when ``thorough``:
        an engine call)."""
        if not thorough:
            return []
        out = []
        for st in cls._labelled("las.home", label):
            run_id = st.labels.get("las.run", "")
            if not st.running or not run_id or run_id in active:
                continue
            what = f"{cls.name} container {st.name} ({st.id[:12]})"
            out.append(Unrecorded(run_id, cls.name, st.pid or None, what))
        return out

    @classmethod
    def end_unrecorded(cls, label: str, run_id: str, timeout: float, thorough: bool) -> str | None:
        """The engine stops the container (its stop signal, SIGKILL after ``timeout``) and
        removes it."""
        from localaistack.runtime import engines

        if not any(u.run_id == run_id for u in cls.unrecorded(label, set(), thorough)):
            return None
        engine = engines.Engine(cls.name)
        for st in engine.list_labelled("las.run", run_id):
            if st.labels.get("las.home") != label:
                continue
            try:
                engine.stop(st.id, timeout)
                engine.remove(st.id)
            except engines.EngineError as exc:
                raise StartFailed(
                    f"cannot end container {st.id[:12]}: {exc.message}", hint=exc.hint
                ) from exc
            return f"?{run_id}: stopped and removed {cls.name} container {st.name}"
        return None

    @classmethod
    def sweep_orphans(cls, label: str, active: set[str], grace: float) -> list[Orphan]:
        """Containers labelled ``las.home=LABEL`` whose run is not active (its shim died
        before it could remove it, or the run ended while the engine was down)."""
        from localaistack.runtime import engines

        engine = engines.Engine(cls.name)
        try:
            found = engine.list_labelled("las.home", label)
        except engines.EngineError:
            return []
        out = []
        for st in found:
            if st.labels.get("las.run") in active:
                continue
            age = _age(st.started_at or "")
            what = f"{cls.name} container {st.name} ({st.id[:12]}) has no active run"
            instance = st.labels.get("las.instance", "-")
            if age is not None and age < grace:
                out.append(Orphan(instance, f"{what}; removed after {grace:g}s", False))
                continue
            with contextlib.suppress(engines.EngineError):
                engine.remove(st.id)
            out.append(Orphan(instance, f"{what}; removed", True))
        return out

    def extra_run_options(self) -> dict[str, Any]:
        """Options of ``engines.ContainerRunSpec`` this engine adds (podman: ulimits)."""
        return {}

    def _started(self) -> Started:
        state = {
            "container": self.cid,
            "container_name": self.container_name,
            "engine": self.engine.name,
        }
        return Started(
            Handle(self.name, HANDLE_VERSION, state), None, None, f"container {self.cid[:12]}"
        )

    def start(self) -> Started:
        from localaistack.runtime import engines

        c, plan, ctx = self.spec, self.ctx.plan, self.ctx
        res = plan["resources"]
        try:
            spec = engines.ContainerRunSpec(
                name=self.container_name,
                image=c["image"],
                argv=c["argv"],
                env=[(v["name"], v["value"]) for v in c["env"] if not v.get("secret")],
                secret_env=[(v["name"], v["value"]) for v in c["env"] if v.get("secret")],
                workdir=c.get("workdir"),
                user=c.get("user"),
                volumes=[
                    engines.VolumeMount(v["source"], v["target"], v["read_only"])
                    for v in c["volumes"]
                ],
                ports=[
                    engines.PublishedPort(
                        p["host_ip"], p["host_port"], p["container_port"], p["protocol"]
                    )
                    for p in plan["ports"]
                ],
                memory=res.get("memory"),
                cpus=res.get("cpus"),
                pids_limit=int(c.get("pids_limit", 1024)),
                gpus=[(g["vendor"], g["uuid"]) for g in plan["gpus"]],
                cap_add=c.get("cap_add", ()),
                read_only_root=bool(c.get("read_only_root", True)),
                labels={
                    "las.instance": ctx.instance,
                    "las.run": ctx.run_id,
                    "las.home": home_label(ctx.db_path),
                },
                stop_signal=plan["stop"]["signal"],
                **self.extra_run_options(),
            )
            self.cid = self.engine.run(spec)
        except engines.EngineError as exc:
            raise StartFailed(  # the engine's message may quote argv or env: masked
                f"could not start: {ctx.hide(exc.message)}"
                + (f" ({ctx.hide(exc.hint)})" if exc.hint else "")
            ) from None
        # Its helpers (`logs --follow`, `wait`) start at ``attach``, once `running` is
        # reported: they are engine CLIs that would compete with `las run` for the CPU on
        # its way out. Nothing is missed meanwhile: `logs` replays the output from the
        # start (or from --since), and `wait` on an ended container returns at once.
        return self._started()

    def current(self) -> Started:
        return self._started()

    def recover(self, handle: Handle) -> RunStatus:
        from localaistack.runtime import engines

        cid = str(handle.state.get("container") or "")
        if not cid:
            raise RecoveryFailed("the stored handle names no container")
        self.cid = cid
        self.container_name = str(handle.state.get("container_name") or self.container_name)
        try:
            return self.inspect()
        except engines.EngineError as exc:
            raise RecoveryFailed(
                f"{self.engine.name} cannot be asked about container {cid[:12]}: {exc.message}"
            ) from None

    def inspect(self) -> RunStatus:
        """The container now (EngineError: the engine cannot be asked; RecoveryFailed: the
        container is gone)."""
        st = self.engine.inspect(self.cid)
        what = f"container {self.cid[:12]}"
        if st is None:
            raise RecoveryFailed(f"container {self.cid[:12]} is gone")
        if st.running:
            return RunStatus(True, st.pid or None, None, what)
        return RunStatus(False, None, ExitStatus(code=st.exit_code), what)

    def _spawn_helper(self, argv: list[str], pipes: bool) -> subprocess.Popen[bytes]:
        """A short-lived helper (engine CLI) that dies with the shim."""
        import subprocess

        me = self.ctx.shim_pid
        out = subprocess.PIPE if pipes else subprocess.DEVNULL
        proc = subprocess.Popen(
            argv,
            env=self.engine.subprocess_env(),
            cwd=self.engine.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=lambda: procs.child_setup(me),  # noqa: PLW1509 (single-threaded)
        )
        proc.returncode = 0  # reaped by the shim, not by Popen
        self.helpers.append(proc)
        return proc

    def attach(self, since: str | None = None) -> Attachment:
        """Start the container's helpers: its output (``logs --follow``) and its end
        (``wait``: its exit is the container's end). StartFailed if they cannot start (the
        engine CLI vanished): the container is then removed."""
        import subprocess

        from localaistack.runtime import engines

        engine, cid = self.engine, self.cid
        # The helpers' orphans come back to the shim. Not before: on the start path the
        # engine's own processes (conmon) are not ours, as after a `podman run -d` by hand.
        procs.become_subreaper()
        try:
            logs = self._spawn_helper(engine.logs_args(cid, follow=True, since=since), True)
            waiter = self._spawn_helper([*engine.base_args(), "wait", cid], False)
        except (OSError, subprocess.SubprocessError, engines.EngineError) as exc:
            with contextlib.suppress(engines.EngineError):
                engine.remove(cid)
            raise StartFailed(
                f"lost: cannot follow container {cid[:12]} ({exc}); it was removed"
            ) from None
        assert logs.stdout is not None and logs.stderr is not None
        self.wait_pid = waiter.pid
        return Attachment(waiter.pid, {logs.stdout.fileno(): "O", logs.stderr.fileno(): "E"})

    def host_pid(self) -> tuple[int, int | None] | None:
        """The container's init as the host sees it (one engine call)."""
        from localaistack.runtime import engines

        try:
            st = self.engine.inspect(self.cid)
        except engines.EngineError:
            return None
        if st is None or not st.pid:
            return None
        return st.pid, procs.start_time(st.pid)

    def probe_setup(
        self, spec: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, str], Callable[[], None] | None]:
        spec = dict(spec)
        if spec["kind"] == "command":
            spec["command"] = self.engine.exec_args(self.cid, spec["command"])
        return spec, self.engine.subprocess_env(), None

    def stop(self, signal_name: str, grace: float) -> None:
        """`ENGINE stop` sends the stop signal set at `run` and SIGKILLs after ``grace``;
        run as a helper so that the shim's loop keeps reading the output meanwhile."""
        self._spawn_helper(
            [*self.engine.base_args(), "stop", "-t", str(max(0, round(grace))), self.cid], False
        )

    def kill(self) -> None:
        from localaistack.runtime import engines

        if self.cid:
            with contextlib.suppress(engines.EngineError):
                self.engine.kill(self.cid)

    def detach(self) -> None:
        for p in self.helpers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        self.helpers = []

    def exit_status(self, wait_status: int) -> ExitStatus:
        """The container's exit as the engine recorded it, and whether it was OOM-killed."""
        from localaistack.runtime import engines

        engine, cid = self.engine, self.cid
        try:
            st = engine.final_state(cid)
        except engines.EngineError as exc:
            st = None
            error: str | None = self.ctx.hide(exc.message)  # the engine's words
        else:
            error = None
        if st is None or st.exit_code is None:
            return ExitStatus(lost=f"lost: the container {cid[:12]} is gone", inspect_error=error)
        code = st.exit_code
        sig = procs.signal_name(code - 128) if code > 128 else None
        limit = self.ctx.plan["resources"].get("memory")
        oom, how = engine.oom_detected(st, limit)
        verdict = None
        if oom:
            verdict = (
                f"out of memory (limit {engines.format_bytes(limit or st.memory_limit)}; {how})"
            )
        return ExitStatus(
            code=code, signal=sig, killed=code == 137, oom=verdict, inspect_error=error
        )

    def cleanup(self) -> list[str]:
        from localaistack.runtime import engines

        if self.cid:
            with contextlib.suppress(engines.EngineError):
                self.engine.remove(self.cid)
        return []


def _age(started: str) -> float | None:
    """Seconds since an engine timestamp (RFC 3339, any fraction), or None if unreadable."""
    import time
    from datetime import datetime

    try:
        text = started.replace("Z", "+00:00")
        if "." in text:  # engines give nanoseconds; Python takes microseconds
            head, rest = text.split(".", 1)
            digits = "".join(ch for ch in rest if ch.isdigit())
            zone = rest[len(digits) :]
            text = f"{head}.{digits[:6]}{zone}"
        return time.time() - datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
