"""Plans remembered for ``las run``: the same inputs give the same plan, without planning.

Planning reads the manifest, the policy and the hardware profile, through pydantic models
and the hardware probe: on a small machine that is most of a ``las run`` (about 0.3 s of
0.45 s). A plan made once is kept in ``$LAS_HOME/cache/plans/`` and used again only when
everything it was made from is unchanged; otherwise the module is planned afresh, exactly as
without a cache. ``las plan`` never reads the cache. What a plan is keyed by:

* las's own control code (size and mtime of each of its files), the Python interpreter and
  ``PYTHONPATH`` (a module's executable may come from a Python package);
* the manifest's bytes; for a catalog name, the bytes of every manifest in the catalog's
  directories (a new or changed manifest may change which one the name means);
* the policy file's path and bytes (or that there is none), and the request: mode and
  ``--set`` values (not the instance name: a plan does not depend on it);
* the machine: boot id, the CPUs this process may use, MemTotal, the GPU device nodes,
  this process's cgroup and ``LAS_CGROUP_ROOT``, the effective uid, ``/etc/passwd`` and
  ``/etc/group`` (a native workload's user is resolved at planning), bwrap's binary, and,
  unless ``--mode native``, the container engines' binaries, their environment and whether
  Docker's socket answers;
* every environment variable the planner read, with its value (recorded while planning);
* the executable the plan runs: its device, inode, size, mtime and ctime, so that a
  replaced binary is planned (and its sha256 checked against a trust pin) again; the same
  for every file a trust pin covers (a script; the supervisor also hashes them before exec).

Never cached: plans that hold a secret (a secret is written only to the instance's 0600
secrets file), plans that assign a GPU, and plans made on a machine with GPUs for a module
that can use one (the choice depends on the VRAM free at that moment). The ports of a
cached plan are used again when they are still free and promised to nobody (admission checks
that); else the module is planned again. A cached container plan whose engine check fails
is dropped and planned again. ``LAS_PLAN_CACHE=0`` turns the cache off.

This module imports no pydantic model: the fast path of ``las run`` must not pay for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from localaistack.control.admission import Capacity
from localaistack.control.names import BUILTIN_DIR, is_manifest_path
from localaistack.errors import StoreError
from localaistack.osutil import which
from localaistack.plan import ExecutionPlan
from localaistack.store.paths import private_dir

if TYPE_CHECKING:
    from localaistack.control.hardware import HardwareProfile
    from localaistack.control.manifest import LoadedManifest

FORMAT = 1
KEEP = 64  # entries; the oldest go first
CONTROL_DIR = Path(__file__).resolve().parent
ENGINE_ENV = ("DOCKER_HOST", "DOCKER_CONTEXT", "CONTAINER_HOST", "CONTAINERS_CONF")


def enabled() -> bool:
    return os.environ.get("LAS_PLAN_CACHE", "1") != "0"


class RecordingEnviron(Mapping[str, str]):
    """``os.environ`` as the planner sees it, remembering which variables it read."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.read: dict[str, str | None] = {}

    def __getitem__(self, key: str) -> str:
        self.read[key] = self._env.get(key)
        return self._env[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.read[key] = self._env.get(key)
        return self._env.get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read[key] = self._env.get(key)
        return key in self._env

    def __iter__(self) -> Iterator[str]:
        # Listing it makes the plan depend on all of it: every variable is recorded.
        self.read.update({k: self._env.get(k) for k in self._env})
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


MAX_INPUT = 1 << 20  # what planning reads of a manifest or policy (boundedload.py)


def _read(path: Path) -> str | None:
    """The sha256 of a file's first MAX_INPUT + 1 bytes (a larger one is refused when
    planning). A pipe or device is never the same input twice: a random key, never read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return os.urandom(16).hex()
        with os.fdopen(os.dup(fd), "rb") as f:
            return hashlib.sha256(f.read(MAX_INPUT + 1)).hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat_id(path: str | None) -> list[int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _manifests(module: str, home: Path) -> dict[str, str | None]:
    if is_manifest_path(module):
        path = Path(module).expanduser().absolute()
        return {str(path): _read(path)}
    out = {}
    for directory in (home / "modules", BUILTIN_DIR):
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if name.endswith((".yaml", ".yml")):
                out[str(directory / name)] = _read(directory / name)
    return out


def _gpu_nodes() -> list[str]:
    nodes = []
    for directory, prefixes in (("/dev", ("nvidia", "kfd")), ("/dev/dri", ("render", "card"))):
        try:
            nodes += [f"{directory}/{n}" for n in os.listdir(directory) if n.startswith(prefixes)]
        except OSError:
            continue
    return sorted(nodes)


def _docker_answers() -> bool:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return False
    # _socket, the module under socket: socket's own import (its enums) costs ~4 ms here.
    from _socket import AF_UNIX, SOCK_STREAM, socket

    s = socket(AF_UNIX, SOCK_STREAM)
    try:
        s.settimeout(0.2)
        s.connect(host.removeprefix("unix://"))
    except OSError:
        return False
    finally:
        s.close()
    return True


def _engines() -> dict[str, Any]:
    found = {}
    for name in ("podman", "docker"):
        path = None
        for d in os.environ.get("PATH", "").split(os.pathsep):
            candidate = os.path.join(d, name)
            if os.access(candidate, os.X_OK):
                path = candidate
                break
        found[name] = [path, _stat_id(path)]
    return {
        "binaries": found,
        "env": {k: os.environ.get(k) for k in ENGINE_ENV},
        "docker_answers": found["docker"][0] is not None and _docker_answers(),
    }


def _machine(with_engines: bool) -> dict[str, Any]:
    def text(path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return None

    meminfo = text("/proc/meminfo") or ""
    total = next((line for line in meminfo.splitlines() if line.startswith("MemTotal:")), "")
    return {
        "boot": text("/proc/sys/kernel/random/boot_id"),
        "cpus": [os.cpu_count(), sorted(os.sched_getaffinity(0))],
        "mem": total,
        "gpus": _gpu_nodes(),
        "cgroup": [text("/proc/self/cgroup"), os.environ.get("LAS_CGROUP_ROOT")],
        # who runs las, and the users and groups (a native workload's user is resolved)
        "users": [os.geteuid(), _stat_id("/etc/passwd"), _stat_id("/etc/group")],
        "sandbox": _stat_id(which("bwrap")),
        "engines": _engines() if with_engines else None,
    }


def _code() -> list[Any]:
    files = sorted([*CONTROL_DIR.glob("*.py"), CONTROL_DIR.parent / "plan.py"])
    out: list[Any] = [os.path.realpath(sys.executable), os.environ.get("PYTHONPATH")]
    for f in files:
        st = f.stat()
        out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


class Request(NamedTuple):
    """What ``las run`` was asked to plan: the module, and how."""

    module: str
    mode: str | None
    sets: tuple[str, ...]
    policy_file: Path | None


class Cached(NamedTuple):
    plan: ExecutionPlan
    capacity: Capacity


class PlanCache:
    """The cache under ``home``; ``key`` is computed once per request."""

    def __init__(self, home: Path, request: Request) -> None:
        self.home = home
        self.dir = home / "cache" / "plans"
        self.request = request
        policy = request.policy_file or home / "policy.yaml"
        inputs = {
            "format": FORMAT,
            "code": _code(),
            "manifests": _manifests(request.module, home),
            "policy": [str(policy), _read(policy), request.policy_file is not None],
            "request": [request.module, request.mode, list(request.sets)],
            "machine": _machine(with_engines=request.mode != "native"),
        }
        blob = json.dumps(inputs, sort_keys=True, default=str).encode()
        self.key = hashlib.sha256(blob).hexdigest()[:32]
        self.path = self.dir / f"{self.key}.json"

    def get(self) -> Cached | None:
        """The cached plan, if everything it was made from is unchanged."""
        try:
            entry = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return None
        try:
            if any(os.environ.get(k) != v for k, v in entry["env"].items()):
                return None
            exe = entry["exe"]
            if exe is not None and _stat_id(exe[0]) != exe[1]:
                return None
            # A trust pin's files (a script, an interpreter found by env): changed, they
            # are planned (and checked against the pin) again.
            if any(_stat_id(path) != st for path, st in entry.get("pinned", ())):
                return None
            plan = ExecutionPlan.model_validate_json(entry["plan"])
            capacity = Capacity.from_dict(entry["capacity"])
            workdir = plan.native.workdir if plan.native else None
            if workdir is not None and not os.path.isdir(workdir):
                return None  # planning says why, as it would have without the cache
        except (KeyError, TypeError, ValueError):
            self.drop()
            return None
        return Cached(plan, capacity)

    def put(
        self,
        plan: ExecutionPlan,
        capacity: Capacity,
        loaded: LoadedManifest,
        profile: HardwareProfile,
        env: RecordingEnviron,
    ) -> bool:
        """Remember ``plan`` if it may be used again; returns whether it was stored."""
        if not cacheable(plan, loaded, profile):
            return False
        exe = plan.native.argv[0] if plan.native is not None else None
        entry = {
            "plan": plan.model_dump_json(),
            "capacity": capacity.to_dict(),
            "env": env.read,
            "exe": [exe, _stat_id(exe)] if exe is not None else None,
            "pinned": [[f.path, _stat_id(f.path)] for f in plan.native.pinned]
            if plan.native is not None
            else [],
        }
        try:
            private_dir(self.home, "cache", "plans")
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
            os.replace(tmp, self.path)
            self._prune()
        except (OSError, StoreError):  # private_dir names the cause as a StoreError
            return False  # a cache that cannot be written only costs time
        return True

    def drop(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass

    def _prune(self) -> None:
        entries = sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in entries[:-KEEP]:
            old.unlink(missing_ok=True)


def warm_up(home: Path) -> None:
    """Go once through what a cache hit reads, writing nothing: for the las agent
    (cli/agent.py), whose workers are its forks. They then start with the glob's regular
    expression compiled and this code path's bytecode specialised, and copy fewer pages
    from the agent (~2-3 ms less per handed-over ``las run`` here).

    The key of a module that cannot exist (so never an entry, never a drop), and the
    first cached plan of ``home``, if there is one, read as a hit reads it.
    """
    cache = PlanCache(home, Request(str(home / "cache" / "warm-up.yaml"), None, (), None))
    cache.get()
    for path in sorted(cache.dir.glob("*.json"))[:1]:
        try:
            entry = json.loads(path.read_bytes())
            ExecutionPlan.model_validate_json(entry["plan"])
            Capacity.from_dict(entry["capacity"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a broken entry: the hit path drops it, not this


def cacheable(plan: ExecutionPlan, loaded: LoadedManifest, profile: HardwareProfile) -> bool:
    """Whether the plan may be kept: it holds no secret, and depends only on what the key
    covers (not on the VRAM free now)."""
    if plan.gpus or any(p.secret for p in plan.parameters):
        return False
    spec = plan.native or plan.container
    if spec is not None and any(e.secret for e in spec.env):
        return False
    if not profile.gpus:
        return True
    m = loaded.manifest
    res, gpu = m.runtime.resources, m.hardware.gpu
    wants = max(res.gpus, gpu.count_min) > 0 or max(res.vram, gpu.required_vram) > 0
    return not wants and res.vram_from_gguf is None
