"""Human output for plans, hardware profiles and tables: formatting only, no decisions.

Every form of a plan (text and JSON) is made from its shown form (``masked_plan_dict``):
what can hold a secret is read from there, never from the plan itself.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from localaistack.masking import masked
from localaistack.plan import ExecutionPlan
from localaistack.units import format_duration, format_size

if TYPE_CHECKING:
    from localaistack.control.hardware import HardwareProfile


def masked_plan_dict(plan: ExecutionPlan) -> dict[str, Any]:
    """The plan as JSON data with each secret shown as ``***`` where it sits (as stored)."""
    return masked(plan.model_dump(mode="json"))


def plan_json(plan: ExecutionPlan) -> str:
    data = masked_plan_dict(plan)
    data["plan_id"] = plan.plan_id
    return json.dumps(data, indent=2)


def _env_line(env: Sequence[dict[str, Any]]) -> str:
    shown = [f"{v['name']}={v['value']}" for v in env]  # shown form: secrets are ***
    return " ".join(shlex.quote(s) for s in shown) or "(none)"


def plan_lines(plan: ExecutionPlan) -> list[str]:
    """A short explanation of a plan, one decision per line, then what will run."""
    data = masked_plan_dict(plan)
    m = plan.module
    out = [f"Plan {plan.plan_id} for {m.name} {m.version} ({m.source}): mode {plan.mode}", ""]
    out.append("Decisions:")
    width = max((len(d.topic) for d in plan.decisions), default=8)
    for d in data["decisions"]:
        out.append(f"  {d['topic']:<{width}}  {d['choice']}")
        out.append(f"  {'':<{width}}    because {d['reason']}")
        for r in d["rejected"]:
            out.append(f"  {'':<{width}}    not {r['option']}: {r['reason']}")
    out.append("")
    out.append("Execution:")
    if data.get("native"):
        n = data["native"]
        out.append(f"  argv     {shlex.join(n['argv'])}")
        out.append(f"  env      {_env_line(n['env'])}")
        if n["workdir"]:
            out.append(f"  workdir  {n['workdir']}")
    if data.get("container"):
        c = data["container"]
        out.append(f"  engine   {c['engine']}")
        out.append(f"  image    {c['image']}")
        out.append(f"  argv     {shlex.join(c['argv']) or '(image default)'}")
        if c["env"]:
            out.append(f"  env      {_env_line(c['env'])}")
        for v in c["volumes"]:
            out.append(
                f"  volume   {v['source']} -> {v['target']}"
                f"{' (read-only)' if v['read_only'] else ''}"
            )
    for b in plan.ports:
        inside = f" -> container {b.container_port}" if plan.container is not None else ""
        out.append(f"  port     {b.name}: {b.host_ip}:{b.host_port}/{b.protocol}{inside}")
    h = data.get("health")
    if h:
        what = {
            "http": f"GET {h['path']} on port {h['port']}",
            "tcp": f"connect to port {h['port']}",
            "command": shlex.join(h["command"]),  # the shown form: a secret in it is ***
        }[h["kind"]]
        out.append(
            f"  health   {h['kind']}: {what}; start within {format_duration(h['start_timeout'])}, "
            f"every {format_duration(h['interval'])}, timeout {format_duration(h['timeout'])}, "
            f"unhealthy after {h['failure_threshold']} failures"
        )
    else:
        out.append("  health   none declared (health is 'unknown')")
    r = plan.resources
    mem = format_size(r.memory) if r.memory else "no limit"
    out.append(f"  limits   memory {mem}; cpus {r.cpus or 'no limit'}")
    gpus = ", ".join(f"{g.vendor} GPU {g.index} ({g.uuid})" for g in plan.gpus) or "none"
    out.append(f"  gpus     {gpus}")
    rs = plan.restart
    out.append(
        f"  restart  {rs.policy}"
        + (
            f" (at most {rs.max_restarts}, backoff {format_duration(rs.backoff)})"
            if rs.policy != "never"
            else ""
        )
    )
    out.append(
        f"  stop     {plan.stop.signal}, then SIGKILL after {format_duration(plan.stop.timeout)}"
    )
    out.append(f"  logs     rotate at {format_size(plan.logs.max_size)}, keep {plan.logs.keep}")
    return out


def hardware_lines(profile: HardwareProfile) -> list[str]:
    """``las hw``: a short human summary of a hardware profile, one line per fact."""
    cpu, mem = profile.cpu, profile.memory
    lines = [
        f"Host: {profile.hostname} ({profile.source}, collected {profile.collected_at})",
        f"CPU: {cpu.model} ({cpu.cores} cores, {cpu.threads} threads, {cpu.arch})",
        f"RAM: {format_size(mem.total)} total, {format_size(mem.available)} available",
    ]
    for g in profile.gpus:
        parts = [
            f"GPU {g.index}: {g.vendor} {g.name}",
            f"{format_size(g.memory_total)} total / {format_size(g.memory_free)} free",
        ]
        if g.driver:
            parts.append(f"driver {g.driver}")
        if g.compute_capability:
            parts.append(f"compute {g.compute_capability}")
        parts.append(f"uuid {g.uuid}")
        lines.append(", ".join(parts))
    if not profile.gpus:
        why = "; ".join(f"{n.source}: {n.detail}" for n in profile.gpu_detection)
        lines.append(f"GPUs: none ({why})" if why else "GPUs: none")
    for e in profile.engines:
        if not e.probed:
            lines.append(f"{e.name}: not probed")
        elif e.usable:
            lines.append(f"{e.name}: usable, {e.version or 'version unknown'}")
        elif e.installed:
            version = f" {e.version}" if e.version else ""
            lines.append(f"{e.name}: installed{version}, not usable: {e.reason or 'unknown'}")
        else:
            lines.append(f"{e.name}: not installed ({e.reason or 'not found on PATH'})")
    cg = profile.cgroup
    label = "v1 (hybrid)" if cg.version == "hybrid" else cg.version
    line = f"cgroup: {label}; controllers writable: {', '.join(cg.controllers) or 'none'}"
    lines.append(f"{line}; {cg.detail}" if cg.detail else line)
    return lines
