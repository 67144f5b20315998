"""The planner: manifest -> hardware capability -> policy -> user preference -> ExecutionPlan.

The planner is a pure function of its inputs (the manifest, a hardware profile, a policy,
the user's choices, and two injected look-ups: free ports and executables on PATH). Every
choice it makes is recorded as a :class:`~localaistack.plan.Decision` with its reason and
the alternatives it rejected. It never falls back silently: a ``--mode`` that hardware or
policy rules out is an error naming the rule.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from localaistack.control import trust
from localaistack.control.hardware import GpuInfo, HardwareProfile
from localaistack.control.manifest import (
    TEMPLATE_RE,
    CommandItem,
    EnvValue,
    LoadedManifest,
    Manifest,
    NativeSection,
)
from localaistack.control.policy import Policy, Tier
from localaistack.errors import (
    NoCompatibleMode,
    PlanningError,
    PolicyViolation,
    RequirementUnmet,
    UsageError,
)
from localaistack.masking import MASK, mask
from localaistack.plan import (
    MODES,
    RESTART_POLICIES,
    ContainerSpec,
    Decision,
    EngineName,
    EnvVar,
    ExecutionPlan,
    GpuAssignment,
    HealthSpec,
    LogSpec,
    Mode,
    ModuleRef,
    NativeSpec,
    Parameter,
    ParamSource,
    PinnedFile,
    PortBinding,
    ProbeKind,
    Rejected,
    Resources,
    RestartPolicyName,
    RestartSpec,
    ShownText,
    StopSpec,
    Volume,
)
from localaistack.units import format_size

PortAllocator = Callable[[str, str], int]
"""``(host_ip, port_name) -> host port``: chooses a free port for a named port."""

# Passed from the caller's environment to native workloads; everything else must be
# declared by the manifest, so that the plan shows the workload's whole environment.
PASSTHROUGH_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR")
GPU_ENV_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
SECRET_MARKERS = ("_KEY", "_TOKEN", "PASSWORD", "SECRET")
SETUP_USER = "scripts/setup-user"  # creates the policy's native_user (docs/native-runtime.md)
# Device nodes a sandboxed workload gets when a GPU of that vendor is assigned to it.
GPU_DEVICE_NODES = {"nvidia": ("/dev/nvidia*",), "amd": ("/dev/kfd", "/dev/dri")}


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for."""

    mode: str | None = None
    sets: Mapping[str, str] | None = None
    # VRAM the ledger holds per GPU uuid for other instances (admitted or running), which
    # the driver may not show as used yet: a model still loading. The choice counts it.
    gpu_held: Mapping[str, int] | None = None
    # The user's restart policy (`las run --restart`); None: the manifest's.
    restart: str | None = None


@dataclass
class _ModeCheck:
    mode: str
    ok: bool
    reason: str
    rule: str = ""  # which rule rejected it, for error messages


def looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(m in upper for m in SECRET_MARKERS)


def _secret_env(name: str, template: str, secret_params: set[str]) -> bool:
    """An env var is secret when its name says so or its value uses a secret parameter."""
    if looks_secret(name):
        return True
    used = {m.group(1).strip() for m in TEMPLATE_RE.finditer(template) if m.group(0) != "$$"}
    return bool(used & secret_params)


def _check_requirements(m: Manifest, hw: HardwareProfile) -> list[str]:
    """Unmet hardware requirements, each as a sentence naming the requirement."""
    unmet = []
    req = m.hardware
    if req.cpu.cores_min and hw.cpu.cores < req.cpu.cores_min:
        unmet.append(
            f"hardware.cpu.cores_min is {req.cpu.cores_min}; this machine has "
            f"{hw.cpu.cores} core(s)"
        )
    ram = req.memory.required
    if ram and hw.memory.total < ram:
        unmet.append(
            f"hardware.memory.ram_min is {format_size(ram)}; this machine has "
            f"{format_size(hw.memory.total)}"
        )
    vram = req.gpu.required_vram
    needs_gpu = (vram > 0 or req.gpu.count_min > 0 or m.runtime.resources.gpus > 0) and not (
        req.gpu.optional
    )
    if needs_gpu:
        if not hw.gpus:
            unmet.append(
                "this module requires a GPU"
                + (f" with {format_size(vram)} of VRAM" if vram else "")
                + f"; {_no_gpu(hw)}"
            )
        else:
            best = max(g.memory_total for g in hw.gpus)
            total = sum(g.memory_total for g in hw.gpus)
            usable = total if req.gpu.multi_gpu else best
            if vram and usable < vram:
                unmet.append(
                    f"hardware.gpu.vram_min is {format_size(vram)}; the "
                    + ("GPUs together have" if req.gpu.multi_gpu else "largest GPU has")
                    + f" {format_size(usable)}"
                    + ("" if req.gpu.multi_gpu else " (multi_gpu is false)")
                )
            wanted = max(req.gpu.count_min, m.runtime.resources.gpus)
            if wanted > len(hw.gpus):
                unmet.append(f"the module needs {wanted} GPU(s); this machine has {len(hw.gpus)}")
            if wanted > 1 and not req.gpu.multi_gpu:
                unmet.append(
                    f"the module asks for {wanted} GPUs but hardware.gpu.multi_gpu is false"
                )
    return unmet


def _no_gpu(hw: HardwareProfile) -> str:
    """Why the profile has no GPU, as far as it is known: what the probes said, or that a
    saved profile lists none (las probed nothing here)."""
    if hw.source != "detected":
        return (
            f"this machine has none, according to the hardware profile {hw.source} "
            f"(collected {hw.collected_at}; not probed by las)"
        )
    why = "; ".join(f"{n.source}: {n.detail}" for n in hw.gpu_detection)
    return "this machine has none that las found" + (f" ({why})" if why else "")


def _engine_choice(hw: HardwareProfile, policy: Policy) -> tuple[str | None, str, list[Rejected]]:
    """The container engine to use, why, and the engines rejected."""
    rejected: list[Rejected] = []
    wanted = (
        ("podman", "docker") if policy.container_engine == "auto" else (policy.container_engine,)
    )
    for name in ("podman", "docker"):
        info = hw.engine(name)
        if name not in wanted:
            rejected.append(
                Rejected(
                    option=name, reason=f"policy container_engine is {policy.container_engine!r}"
                )
            )
            continue
        if info is None:
            rejected.append(Rejected(option=name, reason="not in the hardware profile"))
            continue
        if not info.probed:
            rejected.append(Rejected(option=name, reason="not probed"))
            continue
        if not info.installed:
            rejected.append(Rejected(option=name, reason=info.reason or "not found on PATH"))
            continue
        if not info.usable:
            rejected.append(Rejected(option=name, reason=f"not usable: {info.reason}"))
            continue
        how = (
            "first usable engine (policy container_engine: auto)"
            if (policy.container_engine == "auto")
            else "policy container_engine"
        )
        return name, f"{name} {info.version or ''}".strip() + f": {how}", rejected
    return None, "", rejected


def _untrusted(name: str, policy: Policy) -> str | None:
    """Why ``policy`` does not trust this module for native execution; None if it does.

    A pinned entry (``sha256``) trusts the module too; the pin is checked against the
    resolved executable once the plan knows it (see ``_check_pin``).
    """
    if any(t.module == name for t in policy.trusted_native):
        return None
    return f"module {name!r} is not in policy trusted_native ({policy.source})"


def _check_pin(
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    workdir: str | None,
    policy: Policy,
    which: Callable[[str, str | None], str | None],
    secrets: Sequence[str] = (),
) -> tuple[Decision | None, tuple[PinnedFile, ...]]:
    """Verify a ``trusted_native`` sha256 pin against what the plan runs: the executable,
    and for an interpreter the files it executes and its argv digest (control/trust.py).

    Raises:
        PolicyViolation: no pin matches (naming each pinned and actual digest).
        PlanningError: a file the pin covers cannot be read.
    """
    entries = [t for t in policy.trusted_native if t.module == name]
    if not entries or any(t.sha256 is None for t in entries):
        return None, ()
    now = trust.measure(trust.analyse(argv, env, workdir, which, secrets))
    how = trust.check(name, now, entries, policy.source)
    reason = f"{how} in policy trusted_native ({policy.source}); not covered: {trust.NOT_COVERED}"
    for note in now.scope.notes:
        reason += f"; {note}"
    pinned = tuple(PinnedFile(path=p, sha256=d) for p, d in now.pinned_files())
    return Decision(topic="trust", choice="; ".join(now.lines()), reason=reason), pinned


@dataclass(frozen=True)
class _NativeUser:
    name: str
    uid: int
    gid: int
    home: str
    groups: frozenset[int]


def _native_user(
    module: str,
    policy: Policy,
    euid: int,
    getpwnam: Callable[[str], Any],
    local: bool,
) -> tuple[_NativeUser | None, Decision]:
    """Whom the native workload runs as, and why; None: as the supervisor (las's own user).

    Raises:
        PolicyViolation: las runs as root and the policy's ``native_user`` does not exist.
    """
    user = policy.native_user
    if not local:
        return None, Decision(
            topic="native user",
            choice=user,
            reason="when las runs as root there, unless policy native_allow_root lists "
            "the module (not resolved: this plan is for another machine)",
        )
    if euid != 0:
        return None, Decision(
            topic="native user",
            choice=f"uid {euid}",
            reason="las does not run as root: the workload runs as the user who runs las",
        )
    if module in policy.native_allow_root:
        return None, Decision(
            topic="native user",
            choice="root",
            reason=f"policy native_allow_root lists {module} ({policy.source})",
            rejected=(Rejected(option=user, reason="policy native_user, not needed"),),
        )
    try:
        pw = getpwnam(user)
    except KeyError:
        raise PolicyViolation(
            f"las runs as root and runs native workloads as the policy's native_user "
            f"{user!r}, which does not exist on this machine ({policy.source})",
            hint=f"create it with {SETUP_USER} (a system user without a home or login shell), "
            f"or list {module} in the policy's native_allow_root to run it as root",
        ) from None
    groups = frozenset(os.getgrouplist(user, pw.pw_gid))
    return _NativeUser(user, pw.pw_uid, pw.pw_gid, pw.pw_dir, groups), Decision(
        topic="native user",
        choice=f"{user} (uid {pw.pw_uid}, gid {pw.pw_gid})",
        reason=f"las runs as root; policy native_user ({policy.source})",
        rejected=(Rejected(option="root", reason=f"policy native_allow_root lacks {module}"),),
    )


def _permits(st: os.stat_result, user: _NativeUser, bits: int) -> bool:
    """Whether the mode bits give ``user`` the ``bits`` (4 read, 1 execute/search)."""
    if st.st_uid == user.uid:
        shift = 6
    elif st.st_gid in user.groups:
        shift = 3
    else:
        shift = 0
    return (st.st_mode >> shift) & bits == bits


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _denied(path: str, user: _NativeUser, bits: int) -> str | None:
    """Why ``user`` cannot reach ``path`` (search on every directory, ``bits`` on the last);
    None if it can, or if the path does not exist (other checks report that).

    Mode bits only (no ACLs): a false refusal is possible where ACLs grant access.
    """
    for candidate in dict.fromkeys((Path(path).absolute(), Path(path).resolve())):
        chain = [*reversed(candidate.parents), candidate]
        for i, part in enumerate(chain):
            try:
                st = os.stat(part)
            except OSError:
                return None
            if not _permits(st, user, bits if i == len(chain) - 1 else 1):
                return f"{part} is {st.st_mode & 0o7777:04o}, owned by {_owner(st.st_uid)}"
    return None


def _check_user_access(
    argv: Sequence[str],
    workdir: str | None,
    user: _NativeUser,
    show: Mapping[str, str] | None = None,
) -> None:
    """Refuse a plan whose executable, workdir or path arguments the user cannot reach.

    ``show`` maps a path holding a secret parameter to its shown form (for the message).

    Raises:
        PlanningError: naming the path, what blocks it, and the user.
    """
    checks = [(argv[0], 5, "execute")]
    if workdir is not None:
        checks.append((workdir, 1, "enter"))
    for arg in argv[1:]:
        if arg.startswith("/") and os.path.exists(arg):
            checks.append((arg, 5 if os.path.isdir(arg) else 4, "read"))
    for path, bits, verb in checks:
        why = _denied(path, user, bits)
        if why is not None:
            raise PlanningError(
                f"the native workload runs as {user.name}, which cannot {verb} "
                f"{(show or {}).get(path, path)}: {why}",
                hint="install it where that user can read it, or list the module in the "
                "policy's native_allow_root to run it as root",
            )


def _sandbox(
    policy: Policy,
    paths: Sequence[str],
    ports: Sequence[PortBinding],
    gpus: Sequence[GpuAssignment],
    path_env: str | None,
    which: Callable[[str, str | None], str | None],
    dev_glob: Callable[[str], list[str]],
    local: bool,
    show: Mapping[str, str] | None = None,
) -> tuple[tuple[str, ...], Decision]:
    """The bwrap argv prefix the policy asks for (empty: none), and the decision.

    ``paths`` are the workload's executable, workdir and absolute path arguments: none may
    be under /tmp, which the sandbox replaces with its own. ``show`` maps a path holding a
    secret parameter to its shown form (for the message).

    Raises:
        PlanningError: the policy asks for bwrap and it is not installed (never a silent
            run without the sandbox), or a path would be hidden by its private /tmp.
    """
    if policy.native_sandbox == "none":
        return (), Decision(
            topic="sandbox", choice="none", reason=f"policy native_sandbox: none ({policy.source})"
        )
    bwrap = which("bwrap", path_env) if local else "bwrap"
    if bwrap is None:
        raise PlanningError(
            f"policy native_sandbox is bwrap ({policy.source}), but bwrap is not installed "
            "(not found on PATH)",
            hint="install bubblewrap (apt-get install bubblewrap), or set native_sandbox: none",
        )
    hidden = [(show or {}).get(p, p) for p in paths if p == "/tmp" or p.startswith("/tmp/")]
    if hidden:
        raise PlanningError(
            f"policy native_sandbox is bwrap ({policy.source}), whose private /tmp hides "
            f"{', '.join(hidden)} from the workload",
            hint="move it out of /tmp, or set native_sandbox: none",
        )
    prefix = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    prefix += ["--tmpfs", "/tmp", "--die-with-parent"]
    if ports:
        net = "the host's network: it listens on " + ", ".join(
            f"{p.host_ip}:{p.host_port}" for p in ports
        )
    else:
        prefix.append("--unshare-net")
        net = "no network (only lo): the module declares no ports"
    nodes: list[str] = []
    for vendor in dict.fromkeys(g.vendor for g in gpus):
        for pattern in GPU_DEVICE_NODES[vendor]:
            nodes += sorted(dev_glob(pattern))
    for node in nodes:
        prefix += ["--dev-bind", node, node]
    devices = ("GPU device nodes " + ", ".join(nodes)) if nodes else "no GPU device nodes"
    return (*prefix, "--"), Decision(
        topic="sandbox",
        choice="bwrap",
        reason=f"policy native_sandbox: bwrap ({policy.source}): read-only root, private /tmp, "
        f"its own /dev and /proc, dies with its supervisor; {net}; {devices}",
    )


def _container_refusal(m: Manifest, policy: Policy) -> str | None:
    """Why the policy refuses what the manifest's container asks beyond the defaults."""
    c = m.runtime.container
    if c is None:
        return None
    cp = policy.containers
    if c.wants_root and m.name not in cp.allow_root:
        return f"the container asks to run as {c.user}; policy containers.allow_root lacks {m.name}"
    if c.writable_root and m.name not in cp.allow_writable_root:
        return (
            f"the container asks for a writable root filesystem; policy "
            f"containers.allow_writable_root lacks {m.name}"
        )
    extra = sorted(set(c.cap_add) - set(cp.allow_capabilities.get(m.name, [])))
    if extra:
        return (
            f"the container asks for capabilities {', '.join(extra)}; policy "
            f"containers.allow_capabilities does not grant them to {m.name}"
        )
    return None


def _check_modes(
    m: Manifest, hw: HardwareProfile, policy: Policy, tier: Tier | None, requested: str | None
) -> tuple[dict[str, _ModeCheck], tuple[str | None, str, list[Rejected]]]:
    engine = _engine_choice(hw, policy)
    untrusted = _untrusted(m.name, policy)
    checks: dict[str, _ModeCheck] = {}
    for mode in m.runtime.executable_modes:
        if mode not in policy.allowed_modes:
            checks[mode] = _ModeCheck(
                mode, False, f"policy allowed_modes is {policy.allowed_modes}", "allowed_modes"
            )
        elif (
            tier is not None
            and tier.allow.runtimes is not None
            and (mode not in tier.allow.runtimes)
        ):
            checks[mode] = _ModeCheck(
                mode,
                False,
                f"policy tier {tier.name!r} allows runtimes {tier.allow.runtimes}",
                "tier",
            )
        elif mode == "native" and untrusted is not None:
            checks[mode] = _ModeCheck(mode, False, untrusted, "trusted_native")
        elif mode == "container" and _container_refusal(m, policy) is not None:
            checks[mode] = _ModeCheck(
                mode, False, _container_refusal(m, policy) or "", "container_privileges"
            )
        elif mode == "container" and engine[0] is None and _unprobed(engine[2]):
            # las did not ask the engines (--mode native): nothing is known about them.
            why = (
                f"--mode {requested} asked for"
                if requested
                else "the container engines were not probed"
            )
            checks[mode] = _ModeCheck(mode, False, f"not considered: {why}", "not_probed")
        elif mode == "container" and engine[0] is None:
            why = "; ".join(f"{r.option}: {r.reason}" for r in engine[2])
            where = (
                ""
                if hw.source == "detected"
                else f", according to the hardware profile {hw.source} (collected "
                f"{hw.collected_at}; not probed by las)"
            )
            checks[mode] = _ModeCheck(
                mode, False, f"no usable container engine ({why}){where}", "hardware"
            )
        else:
            checks[mode] = _ModeCheck(mode, True, "")
    return checks, engine


def _unprobed(rejected: Sequence[Rejected]) -> bool:
    """Whether an engine las did not ask is among those rejected (then the container
    mode's availability is unknown, and no claim about it is made)."""
    return any(r.reason == "not probed" for r in rejected)


def _select_mode(
    m: Manifest, policy: Policy, checks: dict[str, _ModeCheck], requested: str | None
) -> Decision:
    rejected = tuple(Rejected(option=c.mode, reason=c.reason) for c in checks.values() if not c.ok)
    if requested is not None:
        if requested not in MODES:
            raise UsageError(f"unknown mode {requested!r}", hint="use --mode native or container")
        if requested not in checks:
            declared = ", ".join(m.runtime.executable_modes)
            raise NoCompatibleMode(
                f"module {m.name!r} does not declare mode {requested!r} (declared: {declared})",
                hint="choose a declared mode or leave --mode out",
            )
        check = checks[requested]
        if not check.ok:
            err = (
                PolicyViolation
                if check.rule in ("allowed_modes", "tier", "trusted_native", "container_privileges")
                else NoCompatibleMode
            )
            hint = {
                "trusted_native": f"add {m.name} to trusted_native in your policy "
                "(`las trust` prints the entry), or run it in a container",
                "allowed_modes": "allow the mode in the policy's allowed_modes",
                "tier": "the hardware tier of the policy decides; choose another mode",
                "hardware": "install and start Podman or Docker, or use --mode native",
                "not_probed": "plan on this machine (without --hardware) to probe the engines",
                "container_privileges": "allow it in the policy's containers section, or "
                "change the manifest",
            }[check.rule]
            raise err(f"--mode {requested} is not possible: {check.reason}", hint=hint)
        others = tuple(r for r in rejected if r.option != requested)
        alt = tuple(
            Rejected(option=c.mode, reason="not requested")
            for c in checks.values()
            if c.ok and c.mode != requested
        )
        return Decision(
            topic="mode", choice=requested, reason="requested with --mode", rejected=others + alt
        )
    order: list[str] = []
    if m.runtime.preferred in checks:
        order.append(m.runtime.preferred)
    if policy.default_mode in checks and policy.default_mode not in order:
        order.append(policy.default_mode)
    order += [mode for mode in m.runtime.executable_modes if mode not in order]
    for mode in order:
        if checks[mode].ok:
            if mode == m.runtime.preferred:
                reason = "the manifest's preferred mode"
            elif m.runtime.preferred in checks and not checks[m.runtime.preferred].ok:
                reason = (
                    f"the manifest prefers {m.runtime.preferred}, which is unavailable "
                    f"({checks[m.runtime.preferred].reason}); {mode} is declared and "
                    "allowed"
                )
            elif mode == policy.default_mode:
                reason = f"the policy's default mode ({policy.source})"
            else:
                default = checks.get(policy.default_mode)
                why = default.reason if default else "not declared by the manifest"
                reason = (
                    f"the only usable declared mode (policy default {policy.default_mode}: {why})"
                )
            alt = tuple(
                Rejected(option=c.mode, reason="lower in preference")
                for c in checks.values()
                if c.ok and c.mode != mode
            )
            return Decision(topic="mode", choice=mode, reason=reason, rejected=rejected + alt)
    detail = "; ".join(f"{c.mode}: {c.reason}" for c in checks.values())
    raise NoCompatibleMode(
        f"module {m.name!r} cannot run here: {detail}",
        hint="change the policy, install a container engine, or trust the module for native "
        "execution",
    )


def _resolve_parameters(
    m: Manifest, sets: Mapping[str, str], *, with_gpu: bool = False
) -> tuple[Parameter, ...]:
    unknown = sorted(set(sets) - set(m.parameters))
    if unknown:
        known = ", ".join(sorted(m.parameters)) or "none"
        raise UsageError(
            f"unknown parameter(s) for {m.name}: {', '.join(unknown)}",
            hint=f"parameters of {m.name}: {known}",
        )
    out = []
    for name, spec in m.parameters.items():
        secret = spec.secret or looks_secret(name)
        source: ParamSource
        if name in sets:
            raw: str | None = sets[name]
            source = "set"
        elif with_gpu and spec.default_with_gpu is not None:
            d = spec.default_with_gpu
            raw = str(d).lower() if isinstance(d, bool) else str(d)
            source = "default"
        elif spec.default is not None:
            d = spec.default
            raw = str(d).lower() if isinstance(d, bool) else str(d)
            source = "default"
        else:
            if spec.required:
                raise UsageError(
                    f"missing required parameter {name!r} for {m.name}"
                    + (f" ({spec.description})" if spec.description else ""),
                    hint=f"pass --set {name}=VALUE",
                )
            out.append(Parameter(name=name, value=None, source="unset", secret=secret))
            continue
        assert raw is not None
        value = _coerce(name, spec.type, raw, spec.choices, secret)
        out.append(Parameter(name=name, value=value, source=source, secret=secret))
    return tuple(out)


def _coerce(name: str, kind: str, raw: str, choices: list[str] | None, secret: bool = False) -> str:
    shown = "***" if secret else repr(raw)  # an error never quotes a secret
    if "\x00" in raw:
        raise UsageError(
            f"parameter {name!r} contains a NUL byte",
            hint="no process can take a NUL in an argument, a variable or a path: remove it",
        )
    if choices is not None and raw not in choices:
        raise UsageError(f"parameter {name!r} must be one of {', '.join(choices)}; got {shown}")
    try:
        if kind == "int":
            return str(int(raw))
        if kind == "float":
            return repr(float(raw))
        if kind == "bool":
            low = raw.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return "true" if low in ("true", "1", "yes") else "false"
    except ValueError as exc:
        raise UsageError(f"parameter {name!r} must be {kind}; got {shown}") from exc
    if kind == "path":
        return str(Path(raw).expanduser().absolute())
    return raw


def _substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace ``${name}`` by its value in one pass (values are never re-scanned)."""

    def repl(match: object) -> str:
        import re

        assert isinstance(match, re.Match)
        if match.group(0) == "$$":
            return "$"
        return values[match.group(1).strip()]

    return TEMPLATE_RE.sub(repl, text)


def _pick_gpus(
    m: Manifest,
    hw: HardwareProfile,
    estimated: int = 0,
    held: Mapping[str, int] | None = None,
    reserve: int = 0,
) -> tuple[tuple[GpuAssignment, ...], Decision]:
    wanted = max(m.runtime.resources.gpus, m.hardware.gpu.count_min)
    vram_need = max(m.runtime.resources.vram, m.hardware.gpu.required_vram, estimated)
    if wanted == 0 and vram_need == 0:
        return (), Decision(
            topic="gpus",
            choice="none",
            reason="the manifest asks for no GPU; GPU variables are set empty so "
            "the workload cannot reach one",
        )
    if not hw.gpus:
        return (), Decision(
            topic="gpus",
            choice="none",
            reason=f"{_no_gpu(hw)} (hardware.gpu.optional allows running without one)",
        )
    held = held or {}

    def free(g: GpuInfo) -> int:
        """Free now, and not promised to another instance by the ledger."""
        return min(g.memory_free, g.memory_total - reserve - held.get(g.uuid, 0))

    count = max(wanted, 1)
    if m.hardware.gpu.multi_gpu and wanted == 0:
        # No GPU count given: as few GPUs as hold the VRAM together (the requirement check
        # accepts the GPUs' total when multi_gpu is true).
        frees = sorted((free(g) for g in hw.gpus), reverse=True)
        count = next((k for k in range(1, len(frees) + 1) if frees[k - 1] >= vram_need // k), 1)
    per_gpu = vram_need // count if m.hardware.gpu.multi_gpu and count > 1 else vram_need
    fits = [g for g in hw.gpus if free(g) >= per_gpu]
    # Best fit: the GPUs with the least free memory that still fits, so large ones stay free.
    fits.sort(key=lambda g: (free(g), g.index))
    busy = ""
    if len(fits) < count:
        if m.hardware.gpu.optional:
            return (), Decision(
                topic="gpus",
                choice="none",
                reason=f"no GPU has {format_size(per_gpu)} free; the module "
                "runs without one (hardware.gpu.optional)",
            )
        capable = [g for g in hw.gpus if g.memory_total - reserve >= per_gpu]
        if len(capable) < count:
            sizes = ", ".join(f"GPU {g.index}: {format_size(g.memory_total)}" for g in hw.gpus)
            raise RequirementUnmet(
                f"{m.name} needs {count} GPU(s) with {format_size(per_gpu)} each; this "
                f"machine's GPUs are too small ({sizes})",
                hint="plan for another machine with --hardware",
            )
        # Large enough, but in use now: admission refuses it, naming who holds the memory.
        fits = sorted(capable, key=lambda g: (-free(g), g.index))
        busy = " (in use now: admission decides, naming who holds it)"
    chosen: list[GpuInfo] = fits[:count]
    rejected = tuple(
        Rejected(
            option=f"GPU {g.index} ({g.name})",
            reason=f"{format_size(free(g))} free"
            + (" is less than needed" if free(g) < per_gpu else ", a larger fit"),
        )
        for g in hw.gpus
        if g not in chosen
    )
    assignment = tuple(
        GpuAssignment(index=g.index, uuid=g.uuid, vendor=g.vendor, vram=per_gpu) for g in chosen
    )
    names = ", ".join(f"GPU {g.index} ({g.name}, {format_size(free(g))} free)" for g in chosen)
    counted = " after what other instances hold" if any(held.get(g.uuid) for g in hw.gpus) else ""
    return assignment, Decision(
        topic="gpus",
        choice=names,
        reason=f"best fit for {format_size(per_gpu)} of VRAM per GPU{counted}{busy}",
        rejected=rejected,
    )


def _expand_command(
    items: Sequence[CommandItem], values: Mapping[str, str], is_set: set[str]
) -> list[str]:
    """argv from a manifest command: templates filled, optional arguments kept when set."""
    argv: list[str] = []
    for item in items:
        if isinstance(item, str):
            argv.append(_substitute(item, values))
        elif item.when in is_set:
            argv += [_substitute(a, values) for a in item.args]
    return argv


def _expand_env(
    env: Mapping[str, EnvValue],
    values: Mapping[str, str],
    is_set: set[str],
    secret_params: set[str],
) -> list[EnvVar]:
    """A manifest's env, templates filled; an optional entry only when its parameter is set."""
    out = []
    for name, item in env.items():
        if not isinstance(item, str) and item.when not in is_set:
            continue
        template = item if isinstance(item, str) else item.value
        out.append(
            EnvVar(
                name=name,
                value=_substitute(template, values),
                secret=_secret_env(name, template, secret_params),
            )
        )
    return out


def _shown_texts(
    where: str, real: Sequence[str], shown: Sequence[str], suffix: str = ""
) -> list[ShownText]:
    """The shown entries of a list of strings rendered twice (real values, secrets as ***):
    one for each string that a secret parameter went into."""
    return [
        ShownText(path=f"{where}.{i}{suffix}", text=text)
        for i, (value, text) in enumerate(zip(real, shown, strict=True))
        if value != text
    ]


def _shown_executable(given: str, resolved: str, shown: str, how: str) -> str:
    """The resolved executable as shown, when argv[0] (``given``; ``shown`` with its secret
    as ***) was found on PATH or made absolute: the part resolution added, then ``shown``.
    Where the two cannot be told apart, the whole path is shown as ***."""
    if shown == given or not how.startswith(("given as a path", "found ")):
        return resolved  # no secret in it, or found elsewhere ($VAR, a Python package)
    tail, shown_tail = str(Path(given)), str(Path(shown))
    if resolved == tail:
        return shown_tail
    if resolved.endswith("/" + tail):
        return resolved[: len(resolved) - len(tail)] + shown_tail
    return MASK


def _memory_fraction(gpus: tuple[GpuAssignment, ...], hw: HardwareProfile) -> str:
    """The share of each assigned GPU's memory the reservation amounts to (for vLLM)."""
    if not gpus:
        return "0"
    totals = {g.uuid: g.memory_total for g in hw.gpus}
    fractions = [g.vram / totals[g.uuid] for g in gpus if totals.get(g.uuid)]
    if not fractions or not any(fractions):
        return "0.9"
    return f"{min(0.95, max(0.05, *fractions)):.2f}"


def _estimate_vram(
    m: Manifest,
    hw: HardwareProfile,
    sets: Mapping[str, str],
    estimator: Callable[..., Any] | None,
    decisions: list[Decision],
) -> int:
    """VRAM the GGUF model needs, from its metadata (0 when not estimated, and why).

    Only when a GPU could be assigned: reading a GGUF's metadata takes seconds.
    """
    vfg = m.runtime.resources.vram_from_gguf
    if vfg is None:
        return 0
    wants = max(m.runtime.resources.gpus, m.hardware.gpu.count_min) > 0
    if not hw.gpus or not wants:
        return 0
    params = _resolve_parameters(m, sets, with_gpu=True)
    values = {p.name: p.value for p in params}
    model = values.get(vfg.model)
    if not model:
        return 0
    secret = any(p.secret for p in params if p.name == vfg.model)
    shown_model = MASK if secret else model  # a decision never quotes a secret
    if estimator is None:
        from localaistack.control.gguf_estimate import estimate

        estimator = estimate
    ctx = values.get(vfg.ctx_size) if vfg.ctx_size else None
    layers = sets.get(vfg.gpu_layers) if vfg.gpu_layers else None
    try:
        est = estimator(
            model, ctx_size=int(ctx) if ctx else None, n_gpu_layers=int(layers) if layers else None
        )
    except PlanningError as exc:
        # The estimator's message quotes the path: the secret in it masked (by value).
        why = mask(exc.message, [model]) if secret else exc.message
        decisions.append(
            Decision(topic="vram estimate", choice="none", reason=f"not estimated: {why}")
        )
        return 0
    decisions.append(
        Decision(
            topic="vram estimate",
            choice=format_size(est.total),
            reason=f"from {shown_model}'s GGUF metadata: {est.how}",
        )
    )
    return int(est.total)


def _gpu_env(gpus: tuple[GpuAssignment, ...]) -> list[EnvVar]:
    nvidia = ",".join(g.uuid for g in gpus if g.vendor == "nvidia")
    amd = ",".join(str(g.index) for g in gpus if g.vendor == "amd")
    return [
        EnvVar(name="CUDA_VISIBLE_DEVICES", value=nvidia),
        EnvVar(name="HIP_VISIBLE_DEVICES", value=amd),
        EnvVar(name="ROCR_VISIBLE_DEVICES", value=amd),
    ]


def _resolve_executable(
    argv0: str,
    path_env: str | None,
    which: Callable[[str, str | None], str | None],
    native: NativeSection | None = None,
    environ: Mapping[str, str] | None = None,
    shown: str | None = None,
) -> tuple[str, str]:
    """argv[0] as an absolute path, and how it was found.

    A path is checked as given. A bare name is looked for in the manifest's
    ``executable_env`` variable, then on PATH, then through ``executable_python``.
    ``shown`` is argv[0] as messages show it (a secret parameter in it as ``***``).
    """
    name = argv0 if shown is None else shown
    if "/" in argv0:
        return _check_executable(argv0, name), "given as a path"
    tried = []
    if native is not None and native.executable_env:
        var = native.executable_env
        value = (environ or {}).get(var)
        if value:
            return _check_executable(value), f"${var}"
        tried.append(f"${var} (unset)")
    found = which(argv0, path_env)
    if found:
        return str(Path(found).absolute()), f"found {name!r} on PATH"
    tried.append("PATH")
    if native is not None and native.executable_python:
        path, why = _from_python_package(native.executable_python)
        if path is not None:
            return _check_executable(path), why
        tried.append(why)
    raise PlanningError(
        f"executable {name!r} not found on PATH"
        + (f" (tried: {'; '.join(tried)})" if len(tried) > 1 else ""),
        hint=f"install {name} or put its directory on PATH",
    )


def _check_executable(path: str, shown: str | None = None) -> str:
    p = Path(path).expanduser().absolute()
    name = path if shown is None else shown  # as messages show it
    if not p.exists():
        raise PlanningError(
            f"executable {name} does not exist", hint="check the module's runtime.native.command"
        )
    if p.is_dir() or not os.access(p, os.X_OK):
        raise PlanningError(
            f"{name} is not an executable file", hint=f"make it executable (chmod +x {name})"
        )
    return str(p)


def _from_python_package(spec: str) -> tuple[str | None, str]:
    """Call ``module:function`` (in this Python) for an executable's path."""
    import importlib

    module, _, func = spec.partition(":")
    try:
        mod = importlib.import_module(module)
        path = getattr(mod, func)()
    except ImportError:
        return None, f"Python package {module} (not installed)"
    except Exception as exc:  # a third-party function: any failure is "not found"
        return None, f"Python package {module} ({func} failed: {exc})"
    return str(path), f"from the Python package {module} ({spec})"


def _default_which(cmd: str, path: str | None) -> str | None:
    return shutil.which(cmd, path=path)


def make_plan(
    loaded: LoadedManifest,
    hw: HardwareProfile,
    policy: Policy,
    request: PlanRequest,
    allocate_port: PortAllocator,
    *,
    environ: Mapping[str, str] | None = None,
    which: Callable[[str, str | None], str | None] = _default_which,
    resolve_executables: bool = True,
    estimator: Callable[..., Any] | None = None,
    euid: int | None = None,
    getpwnam: Callable[[str], Any] = pwd.getpwnam,
    dev_glob: Callable[[str], list[str]] = glob.glob,
) -> ExecutionPlan:
    """Decide how to run a module and return the explained plan.

    ``resolve_executables=False`` is for a plan for another machine (``--hardware``):
    argv[0] stays as the manifest names it, and no sha256 pin can be checked. ``euid``
    (default: this process's), ``getpwnam`` and ``dev_glob`` are the look-ups that decide
    the native workload's user and its sandbox's device nodes.

    Raises:
        NoCompatibleMode, PolicyViolation, RequirementUnmet, PlanningError, UsageError:
            each naming the rule or input that stops the plan.
    """
    m = loaded.manifest
    environ = os.environ if environ is None else environ
    decisions: list[Decision] = []

    if not m.runtime.executable_modes:
        raise NoCompatibleMode(
            f"module {m.name!r} declares only install variants "
            f"({', '.join(m.runtime.install_variants)}), which las does not execute",
            hint="add a runtime.native or runtime.container section (manifest format v1)",
        )
    tier = policy.tier_for(hw) if policy.policies else None
    if policy.policies:
        if tier is None:
            raise PolicyViolation(
                "no policy tier matches this hardware",
                hint=f"add a tier without conditions to {policy.source}",
            )
        decisions.append(
            Decision(
                topic="policy tier",
                choice=tier.name,
                reason="the first tier whose conditions hold for this hardware",
            )
        )
        if m.name in tier.deny:
            raise PolicyViolation(
                f"policy tier {tier.name!r} denies module {m.name!r}",
                hint=f"see the tier's deny list in {policy.source}",
            )

    unmet = _check_requirements(m, hw)
    if unmet:
        raise RequirementUnmet(
            f"{m.name} cannot run on {hw.hostname}: " + "; ".join(unmet),
            hint="plan for another machine with --hardware FILE, or change the manifest",
        )
    decisions.append(
        Decision(
            topic="requirements",
            choice="met",
            reason=f"{hw.cpu.cores} cores, {format_size(hw.memory.total)} RAM, "
            f"{len(hw.gpus)} GPU(s) on {hw.hostname} ({hw.source})",
        )
    )

    checks, (engine, engine_reason, engine_rejected) = _check_modes(
        m, hw, policy, tier, request.mode
    )
    mode_decision = _select_mode(m, policy, checks, request.mode)
    decisions.append(mode_decision)
    mode = mode_decision.choice

    estimated = _estimate_vram(m, hw, request.sets or {}, estimator, decisions)
    gpus, gpu_decision = _pick_gpus(m, hw, estimated, request.gpu_held, policy.reserve.vram)
    params = _resolve_parameters(m, request.sets or {}, with_gpu=bool(gpus))
    if params:
        decisions.append(
            Decision(
                topic="parameters",
                choice=", ".join(
                    f"{p.name}={'***' if p.secret and p.value else p.value}" for p in params
                ),
                reason="from --set, else the manifest's defaults",
            )
        )

    host, host_reason = policy.host_for(m.name)
    decisions.append(Decision(topic="host address", choice=host, reason=host_reason))
    ports = []
    for spec in m.runtime.ports:
        host_port = allocate_port(host, spec.name)
        ports.append(
            PortBinding(
                name=spec.name,
                container_port=spec.port,
                host_ip=host,
                host_port=host_port,
                protocol=spec.protocol,
            )
        )
        inside = f" (container port {spec.port})" if mode == "container" else ""
        decisions.append(
            Decision(
                topic=f"port {spec.name}",
                choice=f"{host}:{host_port}{inside}",
                reason="a free port on the host address"
                if resolve_executables
                else f"free on this machine now; not checked on {hw.hostname} ({hw.source})",
            )
        )

    values: dict[str, str] = {"host": host if mode == "native" else "0.0.0.0"}
    for p in params:
        values[p.name] = p.value or ""
    for b in ports:
        values[f"ports.{b.name}"] = str(b.host_port if mode == "native" else b.container_port)
    values["gpus.count"] = str(len(gpus))
    values["gpus.memory_fraction"] = _memory_fraction(gpus, hw)
    decisions.append(gpu_decision)
    is_set = {p.name for p in params if p.value not in (None, "")}
    secret_params = {p.name for p in params if p.secret}
    # The same templates rendered with each secret (set, non-empty) as ***: where a secret
    # parameter is substituted, the plan records that rendering (ExecutionPlan.shown), and
    # text the planner composes from such a string uses it (masking.py).
    shown_values = {**values, **{p.name: MASK for p in params if p.secret and p.value}}
    shown: list[ShownText] = []

    rt = m.runtime
    native_spec = container_spec = None
    if mode == "native":
        assert rt.native is not None
        argv = _expand_command(rt.native.command, values, is_set)
        shown_argv = _expand_command(rt.native.command, shown_values, is_set)
        env: dict[str, EnvVar] = {}
        for name in PASSTHROUGH_ENV:
            if name in environ:
                env[name] = EnvVar(name=name, value=environ[name])
        for var in _expand_env(rt.native.env, values, is_set, secret_params):
            env[var.name] = var
        for var in _gpu_env(gpus):
            env[var.name] = var
        path_env = env["PATH"].value if "PATH" in env else None
        if resolve_executables:
            resolved, how = _resolve_executable(
                argv[0], path_env, which, rt.native, environ, shown_argv[0]
            )
            shown_argv[0] = _shown_executable(argv[0], resolved, shown_argv[0], how)
            argv[0] = resolved
            decisions.append(Decision(topic="executable", choice=shown_argv[0], reason=how))
        else:
            decisions.append(
                Decision(
                    topic="executable",
                    choice=shown_argv[0],
                    reason=f"not resolved: this plan is for another machine ({hw.source})",
                )
            )
        workdir = _substitute(rt.native.workdir, values) if rt.native.workdir else None
        shown_workdir = _substitute(rt.native.workdir, shown_values) if rt.native.workdir else None
        if workdir is not None:  # a relative workdir is the manifest's, not the caller's
            assert shown_workdir is not None
            base = loaded.path.parent.absolute()
            workdir = os.path.normpath(base / Path(workdir).expanduser())
            shown_workdir = os.path.normpath(base / Path(shown_workdir).expanduser())
        # What messages show for a path that holds a secret (whole strings, looked up).
        show = {real: text for real, text in zip(argv, shown_argv, strict=True) if real != text}
        if workdir is not None and shown_workdir != workdir:
            assert shown_workdir is not None
            show[workdir] = shown_workdir
            shown.append(ShownText(path="native.workdir", text=shown_workdir))
        shown += _shown_texts("native.argv", argv, shown_argv)
        if workdir is not None and not Path(workdir).is_dir():
            raise PlanningError(
                f"workdir {shown_workdir} does not exist or is not a directory",
                hint="create it or fix runtime.native.workdir",
            )
        pinned: tuple[PinnedFile, ...] = ()
        if resolve_executables:
            plain_env = {k: v.value for k, v in env.items()}
            hidden = [p.value or "" for p in params if p.secret]
            hidden += [v.value for v in env.values() if v.secret]
            pin, pinned = _check_pin(m.name, argv, plain_env, workdir, policy, which, hidden)
            if pin is not None:
                decisions.append(pin)
        elif (mine := [t for t in policy.trusted_native if t.module == m.name]) and all(
            t.sha256 for t in mine
        ):  # pinned (an unpinned entry beside a pin trusts the module without one)
            decisions.append(
                Decision(
                    topic="trust",
                    choice="pinned, not checked",
                    reason=f"this plan is for another machine ({hw.source}): its files "
                    "are not here to hash; `las run` there checks the pin",
                )
            )
        run_as, user_decision = _native_user(
            m.name, policy, os.geteuid() if euid is None else euid, getpwnam, resolve_executables
        )
        decisions.append(user_decision)
        if run_as is not None:
            _check_user_access(argv, workdir, run_as, show)
            # The caller's identity would be root's: the workload gets its own user's.
            who = (("HOME", run_as.home), ("USER", run_as.name), ("LOGNAME", run_as.name))
            for key, value in who:
                if key in env:
                    env[key] = EnvVar(name=key, value=value)
        paths = [argv[0], *(a for a in argv[1:] if a.startswith("/"))]
        paths += [workdir] if workdir else []
        sandbox, sandbox_decision = _sandbox(
            policy, paths, ports, gpus, path_env, which, dev_glob, resolve_executables, show
        )
        decisions.append(sandbox_decision)
        native_spec = NativeSpec(
            argv=tuple(argv),
            env=tuple(env.values()),
            workdir=workdir,
            user=run_as.name if run_as else None,
            uid=run_as.uid if run_as else None,
            gid=run_as.gid if run_as else None,
            sandbox=sandbox,
            pinned=pinned,
        )
    else:
        assert rt.container is not None and engine is not None
        decisions.append(
            Decision(
                topic="container engine",
                choice=engine,
                reason=engine_reason,
                rejected=tuple(engine_rejected),
            )
        )
        c = rt.container
        cenv = _expand_env(c.env, values, is_set, secret_params)
        volumes = tuple(
            Volume(
                source=_substitute(v.source, values),
                target=_substitute(v.target, values),  # vllm's: "${model}", as the source
                read_only=v.read_only,
            )
            for v in c.volumes
        )
        shown += _shown_texts(
            "container.volumes",
            [v.source for v in volumes],
            [_substitute(v.source, shown_values) for v in c.volumes],
            ".source",
        )
        cargv = _expand_command(c.command, values, is_set)
        shown += _shown_texts(
            "container.argv", cargv, _expand_command(c.command, shown_values, is_set)
        )
        user = c.user or "65534:65534"
        decisions.append(
            Decision(
                topic="container user",
                choice=user,
                reason="asked for by the manifest"
                + (", allowed by policy containers.allow_root" if c.wants_root else "")
                if c.user
                else "a non-root user by default (nobody)",
            )
        )
        engine_args: tuple[str, ...] = ()
        if engine == "podman" and hw.cgroup.version == "hybrid":
            engine_args = ("--runtime", "runc")
            decisions.append(
                Decision(
                    topic="podman runtime",
                    choice="runc",
                    reason="this machine mixes cgroup v1 and v2 (hybrid), which crun refuses",
                )
            )
        container_spec = ContainerSpec(
            engine=cast(EngineName, engine),
            image=c.image,
            argv=tuple(cargv),
            env=tuple(cenv),
            workdir=c.workdir,
            volumes=volumes,
            user=user,
            cap_add=tuple(c.cap_add),
            read_only_root=not c.writable_root,
            engine_args=engine_args,
        )

    health = None
    if rt.health is not None:
        h = rt.health
        kind: ProbeKind = "http" if h.http else "tcp" if h.tcp else "command"
        port_name = h.http.port if h.http else h.tcp.port if h.tcp else None
        command = [_substitute(a, values) for a in (h.command or [])]
        shown_command = [_substitute(a, shown_values) for a in (h.command or [])]
        shown += _shown_texts("health.command", command, shown_command)
        health = HealthSpec(
            kind=kind,
            port=port_name,
            host_port=next((b.host_port for b in ports if b.name == port_name), None),
            path=h.http.path if h.http else "/",
            command=tuple(command),
            start_timeout=h.start_timeout,
            interval=h.interval,
            timeout=h.timeout,
            failure_threshold=h.failure_threshold,
        )

    chosen: str = rt.restart.policy
    asked_by = "the manifest"
    overridden: tuple[Rejected, ...] = ()
    if request.restart is not None and request.restart != chosen:
        if request.restart not in RESTART_POLICIES:
            raise UsageError(
                f"unknown restart policy {request.restart!r}",
                hint="one of: " + ", ".join(RESTART_POLICIES),
            )
        overridden = (Rejected(option=chosen, reason="the manifest's, overridden by the user"),)
        chosen, asked_by = request.restart, "the user (--restart)"
    elif request.restart is not None:
        asked_by = "the user (--restart) and the manifest"
    restart = RestartSpec(
        policy=cast(RestartPolicyName, chosen),  # a manifest's or one of RESTART_POLICIES
        max_restarts=rt.restart.max_restarts,
        backoff=rt.restart.backoff,
        on_unhealthy=rt.restart.on_unhealthy,
        window=rt.restart.window,
        reset_after=rt.restart.reset_after,
    )
    wants_restart = chosen != "never" or rt.restart.on_unhealthy
    if wants_restart and policy.restarts == "deny":
        restart = RestartSpec(policy="never", on_unhealthy=False)
        decisions.append(
            Decision(
                topic="restart",
                choice="never",
                reason=f"policy restarts: deny ({policy.source}); failures are reported only",
                rejected=(Rejected(option=chosen, reason=f"asked for by {asked_by}"),),
            )
        )
    elif wants_restart:
        what = chosen + (" and on unhealthy" if rt.restart.on_unhealthy else "")
        decisions.append(
            Decision(
                topic="restart",
                choice=what,
                reason=f"asked for by {asked_by}: at most "
                f"{rt.restart.max_restarts} within {rt.restart.window:g}s",
                rejected=overridden,
            )
        )
    elif overridden:
        decisions.append(
            Decision(
                topic="restart",
                choice="never",
                reason=f"asked for by {asked_by}",
                rejected=overridden,
            )
        )
    res = rt.resources
    return ExecutionPlan(
        module=ModuleRef(
            name=m.name,
            version=m.version,
            category=m.category,
            source=loaded.source if loaded.source != "file" else str(loaded.path),
            digest=loaded.digest,
        ),
        mode=cast(Mode, mode),
        native=native_spec,
        container=container_spec,
        parameters=params,
        ports=tuple(ports),
        health=health,
        resources=Resources(
            memory=res.memory,
            cpus=res.cpus,
            gpus=len(gpus),
            vram=max(res.vram, m.hardware.gpu.required_vram, estimated) if gpus else 0,
        ),
        gpus=gpus,
        restart=restart,
        stop=StopSpec(signal=rt.stop.signal, timeout=rt.stop.timeout),
        logs=LogSpec(max_size=rt.logs.max_size, keep=rt.logs.keep),
        decisions=tuple(decisions),
        shown=tuple(shown),
    )
