"""The control commands: hw, modules, validate, plan, trust (they plan; nothing runs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from localaistack.cli.output import shown
from localaistack.cli.planning import parse_sets, plan_options
from localaistack.cli.session import session
from localaistack.errors import UsageError


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@click.option("--save", type=click.Path(path_type=Path), help="Save the profile to FILE.")
def hw(as_json: bool, save: Path | None) -> None:
    """Show this machine's hardware profile (CPU, RAM, GPUs, engines, cgroups).

    With --host, the service's machine's.
    """
    from localaistack.cli.render import hardware_lines
    from localaistack.control import hardware

    with session() as ops:
        profile = hardware.HardwareProfile.model_validate(ops.hardware())
    if save:
        hardware.save_profile(profile, save)
    if as_json:
        click.echo(profile.model_dump_json(indent=2))
    else:
        for line in hardware_lines(profile):
            click.echo(line)
        if save:
            click.echo(f"saved to {save}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def modules(as_json: bool) -> None:
    """List the modules in the catalog (built-in and $LAS_HOME/modules)."""
    import json

    from localaistack.cli.output import table

    with session() as ops:
        data = ops.modules()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rows = []
    for m in data:
        if "error" in m:
            rows.append([m["name"], "-", "-", "invalid manifest", m["source"], m["path"]])
            continue
        modes = ", ".join(m["modes"]) or (
            "not executable (" + ", ".join(m["install_variants"]) + ")"
        )
        rows.append([m["name"], m["version"], m["category"], modes, m["source"], m["description"]])
    rows = [[shown(str(cell)) for cell in row] for row in rows]  # a name or description
    click.echo(table(["name", "version", "category", "modes", "source", "description"], rows))


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Check manifest files; list every problem with file, line and field."""
    from localaistack.control.manifest import FIELDS_HINT, load_manifest_file
    from localaistack.errors import ManifestError

    bad = 0
    fields = False  # a manifest had field problems: one hint for them at the end
    for path in files:
        try:
            loaded = load_manifest_file(path)
        except ManifestError as err:
            bad += 1
            for problem in err.problems or [err.message]:
                click.echo(f"error: {shown(problem)}", err=True)
            if err.hint == FIELDS_HINT:
                fields = True
            elif err.hint:  # about the file as a whole
                click.echo(f"hint: {shown(err.hint)}", err=True)
            continue
        for warning in loaded.warnings:
            click.echo(f"warning: {shown(warning)}", err=True)
        m = loaded.manifest
        click.echo(shown(f"{path}: ok ({m.name} {m.version})"))
    if bad:
        click.echo(f"{bad} of {len(files)} manifest(s) invalid", err=True)
        if fields:
            click.echo(
                "hint: fix the fields named above (docs/manifest.md gives each one's format "
                "and bounds)",
                err=True,
            )
        sys.exit(1)


@click.command()
@click.argument("module")
@plan_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(
    module: str,
    mode: str | None,
    sets: tuple[str, ...],
    hardware_file: Path | None,
    policy_file: Path | None,
    as_json: bool,
) -> None:
    """Show how MODULE (catalog name or manifest path) would run, and why.

    Ports shown are free now; `las run` allocates them again when it starts.
    """
    from localaistack.cli.render import plan_json, plan_lines
    from localaistack.ops.api import PlanRequestBody

    req = PlanRequestBody(
        module=module,
        mode=mode,
        set=parse_sets(sets),
        hardware=_saved_profile(hardware_file),
    )
    with session() as ops:
        p = ops.plan(req, policy_file)
    if as_json:
        click.echo(plan_json(p))
    else:
        click.echo("\n".join(plan_lines(p)))


def _saved_profile(path: Path | None) -> dict[str, Any] | None:
    """A saved profile's data, read and checked here (errors name the file), to plan for."""
    if path is None:
        return None
    from localaistack.control.hardware import load_profile

    return load_profile(path).model_dump(mode="json")


@click.command()
@click.argument("module")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="NAME=VALUE",
    help="Module parameters, as for `las run` (some modules need them to plan).",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(path_type=Path),
    help="Policy file (default: $LAS_HOME/policy.yaml, else built-in).",
)
def trust(module: str, sets: tuple[str, ...], policy_file: Path | None) -> None:
    """Print the trusted_native entry that pins what MODULE runs natively (edits nothing).

    Resolves what a native plan would run and prints each file it pins with its sha256
    (the executable; for an interpreter, the files it executes) and the argv digest where
    it pins one, then the entry to add to trusted_native in your policy. las never edits
    the policy for you.
    """
    import shutil

    import yaml

    from localaistack.control import hardware, trust
    from localaistack.control.catalog import resolve_module
    from localaistack.control.planner import PlanRequest, make_plan
    from localaistack.control.policy import TrustEntry, load_policy
    from localaistack.control.ports import free_port
    from localaistack.store.paths import las_home

    home = las_home()
    loaded = resolve_module(module, home)
    if "native" not in loaded.manifest.runtime.modes:
        raise UsageError(f"module {loaded.manifest.name!r} has no native mode: nothing to trust")
    policy = load_policy(policy_file, home)
    name = loaded.manifest.name
    # Plan as if trusted (without a pin), only to learn what would run.
    probe = policy.model_copy(
        update={
            "trusted_native": [
                *[t for t in policy.trusted_native if t.module != name],
                TrustEntry(module=name),
            ],
            "allowed_modes": ["native", "container"],
            "native_allow_root": [name],  # only what runs matters here, not its user
        }
    )
    plan = make_plan(
        loaded,
        hardware.detect_hardware(probe_engines=False),
        probe,
        PlanRequest(mode="native", sets=parse_sets(sets)),
        lambda host, _n: free_port(host),
    )
    assert plan.native is not None
    env = {v.name: v.value for v in plan.native.env}
    hidden = [p.value or "" for p in plan.parameters if p.secret]
    hidden += [v.value for v in plan.native.env if v.secret]
    scope = trust.analyse(
        plan.native.argv, env, plan.native.workdir, lambda c, p: shutil.which(c, path=p), hidden
    )
    now = trust.measure(scope)
    click.echo(f"# {name}: what runs natively, and what this pin covers:")
    for line in now.lines():
        click.echo(f"#   {line}")
    for note in scope.notes:
        click.echo(f"#   not covered: {note}")
    click.echo(f"#   not covered: {trust.NOT_COVERED}")
    current = policy.trust_for(name)
    if current is not None:
        state = "pinned to " + current.sha256 if current.sha256 else "trusted without a pin"
        click.echo(f"# {policy.source}: {name} is {state}")
    else:
        click.echo(f"# {policy.source}: {name} is not trusted for native execution")
    click.echo("# add (or replace) this entry under trusted_native in your policy file:")
    entry: dict[str, object] = {"module": name, "sha256": now.exe_sha256}
    if now.argv_sha256 is None:
        click.echo(f"  - {{module: {name}, sha256: {now.exe_sha256}}}")
        return
    entry["files"] = now.files
    entry["argv_sha256"] = now.argv_sha256
    text = yaml.safe_dump([entry], sort_keys=False, width=1 << 16, default_flow_style=False)
    click.echo("".join(f"  {line}\n" for line in text.splitlines()), nl=False)


COMMANDS = (hw, modules, validate, plan, trust)
