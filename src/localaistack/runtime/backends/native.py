"""The native backend: the workload as a child of the shim, in its own session, process
group and cgroup (memory and CPU limits where this process may write them; else CPU
affinity, and the shim samples the tree's RSS), dying with the shim (``PR_SET_PDEATHSIG``),
its trust pins hashed again right before exec.

A native run does not outlive its shim (no recovery): the next las command ends what is
left of it (``end_lost``, called by runtime/supervision.py's ``mark_lost``: from the cgroup
or, without one, the processes recorded in the handle by ``watch``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from typing import TYPE_CHECKING, Any

from localaistack.errors import RecoveryFailed, StartFailed
from localaistack.runtime import cgroups, procs
from localaistack.runtime.backend import (
    HANDLE_VERSION,
    Attachment,
    Backend,
    Capabilities,
    ExitStatus,
    Handle,
    RunContext,
    RunStatus,
    Started,
    Unrecorded,
    format_size,
)
from localaistack.store.db import home_label

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

    from localaistack.plan import ExecutionPlan

SWEEP_LIMIT = 5.0  # seconds the end of a run goes on killing what is left of the run


def pin_changed(pinned: Any) -> str | None:
    """How a trust pin's file differs from its planned sha256 now (None: none does).

    Hashed right before exec, to narrow the window between the planner's check and the
    exec (docs/policy.md).
    """
    import hashlib

    for item in pinned:
        path, want = item["path"], item["sha256"]
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        except OSError as exc:
            return f"{path} cannot be read ({exc.strerror}): pinned sha256 {want}"
        if digest.hexdigest() != want:
            return f"{path} changed: pinned sha256 {want}, now {digest.hexdigest()}"
    return None


def child_setup(
    shim_pid: int,
    cgroup_procs: list[str] | None,
    creds: tuple[int, int, list[int]] | None = None,
    cpus: list[int] | None = None,
) -> None:
    """Runs in the forked child, before exec: its cgroup (joined first, while the child may
    still write it: no descendant is ever outside it), its CPUs (where no cgroup quota holds
    the CPU limit; inherited by every thread and child), then ``procs.child_setup``."""
    if cgroup_procs is not None:
        with contextlib.suppress(OSError):  # the process group still reaches descendants
            cgroups.join(cgroup_procs)
    if cpus is not None:
        with contextlib.suppress(OSError):  # the shim reads it back and says so
            os.sched_setaffinity(0, cpus)
    procs.child_setup(shim_pid, creds)


def describe_start_error(
    exc: OSError, argv0: str, workdir: str | None, shown_workdir: str | None = None
) -> str:
    """Why the exec failed; ``argv0`` and ``shown_workdir`` as shown (secrets masked),
    ``workdir`` the real one (to tell which path failed)."""
    name = errno.errorcode.get(exc.errno or 0, "")
    what = exc.strerror or str(exc)
    if exc.filename is not None and workdir is not None and str(exc.filename) == workdir:
        return f"could not start: workdir {shown_workdir or workdir}: {what} ({name})"
    if exc.errno == errno.ENOENT:
        return f"could not start: executable not found: {argv0} ({what})"
    if exc.errno == errno.EACCES:
        return f"could not start: permission denied: {argv0} ({what})"
    return f"could not start: {argv0}: {what} ({name})"


def _remove_cgroup(cg: cgroups.RunCgroup | None) -> str:
    """Remove the run's cgroup; what stays, as a reason's suffix ("" when all went)."""
    failed = cg.remove() if cg else []
    return f"; cgroup not removed: {', '.join(failed)}" if failed else ""


def _affinity_read_back(pid: int, pin: list[int], note: str) -> str:
    """The note, unless the workload's affinity is not what the child set (then why)."""
    try:
        got = sorted(os.sched_getaffinity(pid))
    except OSError:  # already gone: the child set it before exec or failed to start
        return note
    if got == pin:
        return note
    why = note.partition("; ")[2]  # "no cgroup CPU quota: ..."
    return (
        f"not enforced: the workload's CPU affinity is cpu {cgroups.cpu_list(got)}, "
        f"not cpu {cgroups.cpu_list(pin)}; {why}"
    )


class NativeBackend(Backend):
    name = "native"
    capabilities = Capabilities(
        recover=False,
        enforces_memory=True,  # with a writable cgroup; else sampled by the shim
        assigns_gpus=False,
        detects_oom=True,
        output="pipes",
        kill_after=0.0,
        sees_processes=True,
        stop_margin=0.0,
    )

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.native: dict[str, Any] = ctx.plan["native"]
        self.pid: int | None = None
        self.pid_start: int | None = None
        self.cgroup: cgroups.RunCgroup | None = None
        self.sandboxed = bool(self.native.get("sandbox"))  # bwrap: an argv prefix
        self.creds: tuple[int, int, list[int]] | None = None  # the workload's user
        self.sample_limit: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.state: dict[str, Any] = {}
        self.known: dict[int, int | None] = {}  # members seen by watch -> start time
        self.leftovers: set[int] = set()  # processes other than the main one SIGKILLed
        self.exited_status: int | None = None

    @classmethod
    def describe_limits(cls, plan: ExecutionPlan, state: dict[str, Any]) -> dict[str, str]:
        r = plan.resources
        notes = state.get("limits", {})  # what the start found (cgroup, affinity)
        tree = "process group (session) of the workload"
        if notes.get("processes"):
            tree += f"; {notes['processes']}"
        memory = notes.get("memory") or ("none requested" if r.memory is None else "not started")
        if memory.startswith("not enforced"):
            memory += "; the supervisor samples the process tree's RSS every 0.5s instead"
        return {
            "processes": tree,
            "memory": memory,
            "cpus": notes.get("cpus") or ("none requested" if r.cpus is None else "not started"),
            "gpus": (
                "CUDA_VISIBLE_DEVICES/HIP_VISIBLE_DEVICES/ROCR_VISIBLE_DEVICES set to the "
                "assigned GPUs" + (" (empty: none assigned)" if not plan.gpus else "")
            ),
        }

    @classmethod
    def describe_security(cls, plan: ExecutionPlan) -> dict[str, Any]:
        return {"mode": "native: a host process, its own session, process group and cgroup"}

    @classmethod
    def gone(cls, run_id: str, pid: int, pid_start: int | None) -> bool:
        """The workload's main process is gone and its cgroup (if any) is empty: the run
        dies with its shim."""
        if procs.is_same_process(pid, pid_start):
            return False
        cgroup = cgroups.existing(run_id)
        return cgroup is None or not cgroup.pids()

    @classmethod
    def end_lost(
        cls, run_id: str, state: dict[str, Any], pid: int | None, pid_start: int | None
    ) -> tuple[int, list[str]]:
        """Its cgroup's members (only this run's processes ever join it); where it had
        none, the processes the shim recorded in the handle (``watch``: those that left the
        process group have no parent-death signal) and their descendants; and the
        workload's process group."""
        killed, not_removed = 0, []
        cgroup = cgroups.existing(run_id)
        if cgroup is not None:
            killed += cgroup.kill_all()
            not_removed = cgroup.remove()
        recorded = state.get("descendants") or []
        if isinstance(recorded, list):
            killed += _kill_recorded(recorded)
        if pid is not None:
            killed += procs.kill_group(pid, signal.SIGKILL, pid_start)
        return killed, not_removed

    @classmethod
    def unrecorded(cls, label: str, active: set[str], thorough: bool) -> list[Unrecorded]:
        """The cgroups named for the home's label (``las/LABEL-RUN_ID``) that hold live
        processes (a listing of a directory: asked whether ``thorough`` or not)."""
        out = []
        for run_id, cg in sorted(cgroups.of_home(label).items()):
            pids = cg.pids()
            if run_id in active or not pids:
                continue
            what = f"{len(pids)} process(es) in cgroup {cg.path}"
            out.append(Unrecorded(run_id, cls.name, pids[0], what))
        return out

    @classmethod
    def end_unrecorded(cls, label: str, run_id: str, timeout: float, thorough: bool) -> str | None:
        """SIGTERM to every process of the run's cgroup, SIGKILL after ``timeout``, the
        cgroup removed."""
        import time

        cg = cgroups.of_home(label).get(run_id)
        if cg is None or not cg.pids():
            return None
        for pid in cg.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while cg.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = cg.kill_all() if cg.pids() else 0
        cg.remove()
        how = f"killed {killed} with SIGKILL after {timeout:g}s" if killed else "exited on SIGTERM"
        return f"?{run_id}: stopped (a workload with no record; {how}; cgroup removed)"

    # --- start ---------------------------------------------------------------------------

    def start(self) -> Started:
        import subprocess

        native, plan = self.native, self.ctx.plan
        changed = pin_changed(native.get("pinned", ()))
        if changed is not None:  # a trust pin's file changed since planning: never exec it
            name = plan["module"]["name"]
            raise StartFailed(
                f"refused to start: {changed}; the trust pin covers it (re-pin with "
                f"`las trust {name}` if the change is intended)"
            )
        # Orphaned descendants come back to the shim, which reaps them and ends them.
        procs.become_subreaper()
        env = {v["name"]: v["value"] for v in native["env"]}
        argv = [*native.get("sandbox", ()), *native["argv"]]
        me = self.ctx.shim_pid
        creds = None
        if native.get("uid") is not None:
            uid, gid = int(native["uid"]), int(native["gid"])
            try:  # resolved here, not in the forked child (no NSS look-ups after fork)
                groups = os.getgrouplist(native["user"], gid)
            except (KeyError, OSError):
                groups = [gid]
            creds = (uid, gid, groups)
        self.creds = creds  # command health probes run as the workload's user too
        res = plan["resources"]
        self.cgroup, limit_notes = cgroups.create(
            self.ctx.run_id,
            memory=res.get("memory"),
            cpus=res.get("cpus"),
            home=home_label(self.ctx.db_path),
        )
        cg = self.cgroup
        procs_file = list(cg.procs_files) if cg else None
        if not limit_notes.get("memory", "").startswith("cgroup"):
            self.sample_limit = res.get("memory")  # no cgroup enforces it: sampled
        pin: list[int] | None = None
        if res.get("cpus") is not None and not limit_notes["cpus"].startswith("cgroup"):
            # No cgroup quota: pin to ceil(cpus) CPUs instead (cgroups.affinity_for).
            pin, limit_notes["cpus"] = cgroups.affinity_for(
                float(res["cpus"]), os.sched_getaffinity(0), limit_notes["cpus"]
            )
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=native.get("workdir"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=lambda: child_setup(me, procs_file, creds, pin),  # noqa: PLW1509
                close_fds=True,
            )
        except subprocess.SubprocessError as exc:  # the child's setup failed (not the exec)
            user = f" as {native['user']} (uid {native['uid']})" if creds else ""
            reason = f"could not start{user}: the process setup failed: {exc}"
            raise StartFailed(reason + _remove_cgroup(cg)) from None
        except OSError as exc:
            # Told from the real workdir, shown from the shown plan.
            shown_native = self.ctx.shown["native"]
            shown = [*native.get("sandbox", ()), *shown_native["argv"]]
            reason = describe_start_error(
                exc, shown[0], native.get("workdir"), shown_native.get("workdir")
            )
            raise StartFailed(reason + _remove_cgroup(cg)) from None
        self.pid = self.wait_pid = proc.pid
        self.pid_start = procs.start_time(proc.pid)
        if pin is not None:
            limit_notes["cpus"] = _affinity_read_back(proc.pid, pin, limit_notes["cpus"])
        proc.returncode = 0  # reaped by the shim, not by Popen
        self.proc = proc  # kept: its pipes stay open while it is referenced
        self.state = {"cgroup": cg.paths if cg else None, "limits": limit_notes}
        return Started(self._handle(), self.pid, self.pid_start, f"pid {proc.pid}")

    def current(self) -> Started:
        return Started(self._handle(), self.pid, self.pid_start, f"pid {self.pid}")

    def _handle(self) -> Handle:
        return Handle(self.name, HANDLE_VERSION, dict(self.state))

    def attach(self, since: str | None = None) -> Attachment:
        proc = self.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        return Attachment(proc.pid, {proc.stdout.fileno(): "O", proc.stderr.fileno(): "E"})

    # --- while it runs -------------------------------------------------------------------

    def members(self) -> set[int]:
        """Every process of the run: its cgroup's members, and the shim's descendants but
        its own helpers' (zombies too: see ``_kill_members``)."""
        cg = self.cgroup
        found = cg.members() if cg else set()
        found.update(procs.descendants(self.ctx.shim_pid, self.ctx.own_pids))
        return found

    def unenforced_memory(self) -> int | None:
        return self.sample_limit

    def watches(self) -> bool:
        return self.cgroup is None

    def watch(self, main: int | None) -> Handle | None:
        """No cgroup: keep the run's processes but the main one (pid, start time) in the
        handle, for the next las command to kill should the shim die (they have no
        parent-death signal, and would be re-parented to init). A new handle on a change."""
        if self.cgroup is not None:
            return None
        others = set(procs.descendants(self.ctx.shim_pid, self.ctx.own_pids)) - {main or 0}
        if others == set(self.known):
            return None
        self.known = {p: self.known.get(p) or procs.start_time(p) for p in others}
        self.state["descendants"] = sorted([p, s] for p, s in self.known.items() if s)
        return self._handle()

    def probe_setup(
        self, spec: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, str], Callable[[], None] | None]:
        env = {v["name"]: v["value"] for v in self.native["env"]}
        # As the workload's user, with its privileges and no more, dying with the shim.
        me, creds = self.ctx.shim_pid, self.creds
        return spec, env, lambda: procs.child_setup(me, creds)

    # --- stop ----------------------------------------------------------------------------

    def stop(self, signal_name: str, grace: float) -> None:
        """The stop signal to the process group (led by our live child), then to every other
        member of the run once: those that left the group too (the cgroup's, our
        descendants). bwrap (our child) dies on the stop signal and, with
        --die-with-parent, SIGKILLs the workload at once: it gets none."""
        sig = getattr(signal, signal_name)
        assert self.pid is not None
        if not self.sandboxed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
        for member in self.members():
            st = procs.stat(member)
            if st is None or st.state == "Z" or member == self.pid:
                continue
            if st.pgid == self.pid and not self.sandboxed:
                continue  # the killpg reached it
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, sig)

    def kill(self) -> None:
        """SIGKILL the workload's group and every other member of the run.

        While the workload may still be alive: the shim reaps it; ``sweep`` ends what is
        left. The group id is our own child's pid: while any member lives, the kernel
        cannot reuse it, so one killpg reaches exactly the workload's group.
        """
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._kill_members(exclude=self.pid)

    def _kill_members(self, exclude: int | None = None) -> int:
        """SIGKILL every live member once (counted as leftovers); returns how many."""
        n = 0
        for member in self.members():
            st = procs.stat(member)
            if member == exclude or st is None or st.state == "Z":
                continue  # a zombie runs nothing: its parent (or we) will reap it
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
                self.leftovers.add(member)
                n += 1
        cg = self.cgroup
        if cg is not None and cg.version == "v2" and n:
            with contextlib.suppress(OSError):  # kernel 5.14+: forks since the look too
                cgroups._write(os.path.join(cg.path, "cgroup.kill"), "1")
        return n

    def sweep(self) -> int:
        """The end of a run (the workload has been reaped): SIGKILL what is left of it, and
        again what it forked meanwhile, until nothing is left (at most SWEEP_LIMIT)."""
        import time

        deadline = time.monotonic() + SWEEP_LIMIT
        while True:
            n = self._kill_members()
            procs.reap_children()
            if n == 0:
                break
            if time.monotonic() > deadline:
                self.ctx.note(
                    f"las: processes of the run still alive after {SWEEP_LIMIT:g}s of SIGKILL"
                )
                break
            time.sleep(0.005)
        return len(self.leftovers)

    # --- the end -------------------------------------------------------------------------

    def exit_status(self, wait_status: int) -> ExitStatus:
        self.exited_status = wait_status
        if self.sandboxed and os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) > 128:
            # bwrap exits 128+N when the workload was killed by signal N: say so.
            wait_status = os.WEXITSTATUS(wait_status) - 128
        ex = ExitStatus.from_wait_status(wait_status)
        oom = self._memory_verdict()
        return ex._replace(oom=oom) if oom else ex

    def _memory_verdict(self) -> str | None:
        """Whether the cgroup saw the run killed for memory, and how that is known."""
        cg = self.cgroup
        limit = self.ctx.plan["resources"].get("memory")
        if cg is None or not limit:
            return None
        if cg.has_oom_counter():
            if cg.oom_kills() > 0:
                how = "from the cgroup's OOM kill counter"
                return f"out of memory (limit {format_size(limit)}; {how})"
            return None
        if cg.hit_limit():
            return (
                f"out of memory (limit {format_size(limit)}; the cgroup's memory use reached its "
                "limit: this kernel has no OOM kill counter)"
            )
        return None

    def inspect(self) -> RunStatus:
        if self.pid is None:
            return RunStatus(False)
        if self.exited_status is None and procs.is_same_process(self.pid, self.pid_start):
            return RunStatus(True, self.pid, None, f"pid {self.pid}")
        ex = None
        if self.exited_status is not None:
            ex = ExitStatus.from_wait_status(self.exited_status)
        return RunStatus(False, self.pid, ex, f"pid {self.pid}")

    def recover(self, handle: Handle) -> RunStatus:
        raise RecoveryFailed(
            "a native workload does not outlive its supervisor (it dies with it, or las "
            "ends what is left of it)"
        )

    def cleanup(self) -> list[str]:
        cg, self.cgroup = self.cgroup, None
        return cg.remove() if cg else []


def _kill_recorded(recorded: list[list[int]]) -> int:
    """SIGKILL the processes a shim without a cgroup recorded (those still the same
    process: pid and start time) and their descendants; returns how many."""
    # Stop them first (a stopped process forks no more), walking again until no new one
    # shows up, then kill them all: none re-parented to init between a walk and a kill.
    stopped: set[int] = set()
    for _ in range(50):
        found = {int(p) for p, start in recorded if procs.is_same_process(int(p), int(start))}
        for pid in list(found):
            found.update(procs.descendants(pid))
        new = {p for p in found - stopped if (st := procs.stat(p)) is not None and st.state != "Z"}
        if not new:
            break
        for pid in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
                stopped.add(pid)
    killed: set[int] = set()
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
    return len(killed)
