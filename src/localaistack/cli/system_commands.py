"""``las system``: `las serve` as a systemd service (``unit`` prints it, ``install``
writes and enables it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click

from localaistack.errors import ExecutionError, NotSupported, UsageError

UNIT_NAME = "las.service"
UNIT_PATH = Path("/etc/systemd/system") / UNIT_NAME
# Where the engines are found, as the CLI found them: the service must talk to the same.
PASSED_ENV = ("DOCKER_HOST", "CONTAINER_HOST")


def _quoted(word: str, *, command: bool = False) -> str:
    """``word`` as one word of a unit file's value: specifiers (``%``) and, in a command
    line (``command``), variables (``$``) taken literally; in double quotes (C-style
    escapes) when it has blanks or quotes."""
    word = word.replace("%", "%%")
    if command:
        word = word.replace("$", "$$")
    if word and not any(ch in word for ch in " \t\"'\\"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def las_command() -> list[str]:
    """How to run this las by absolute path: the ``las`` script beside this interpreter
    (its virtual environment's), else the one on PATH, else this interpreter with
    ``-m localaistack``."""
    beside = Path(sys.executable).parent / "las"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside.absolute())]
    found = shutil.which("las")
    if found:
        return [str(Path(found).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "localaistack"]


def unit_text(home: Path) -> str:
    """The systemd unit that runs `las serve` for ``home`` (as this user, when not root)."""
    lines = [
        "# las serve: the LocalAIStack runtime's service (`las system unit` wrote this)",
        "[Unit]",
        "Description=LocalAIStack runtime service (las serve)",
        # Container instances started again at the service's start need their engine.
        "After=network-online.target docker.service",
        "Wants=network-online.target",
        # No restart storm: at most 5 starts in 5 minutes, then the unit stays failed.
        "StartLimitIntervalSec=300",
        "StartLimitBurst=5",
        "",
        "[Service]",
        # READY=1 on $NOTIFY_SOCKET once the socket listens (after the instances whose
        # restart policy says so were started again: TimeoutStartSec leaves room for that).
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=" + " ".join(_quoted(w, command=True) for w in [*las_command(), "serve"]),
        "Environment=" + _quoted(f"LAS_HOME={home}"),
    ]
    lines += [
        "Environment=" + _quoted(f"{key}={os.environ[key]}")
        for key in PASSED_ENV
        if os.environ.get(key)
    ]
    if os.geteuid() != 0:
        import pwd

        lines.append("User=" + _quoted(pwd.getpwuid(os.geteuid()).pw_name))
    lines += [
        "Restart=on-failure",
        "RestartSec=2s",
        "TimeoutStartSec=5min",
        "TimeoutStopSec=30s",
        # Only `las serve` itself is signalled on stop, restart or its crash. The
        # supervisors it spawns (and, where las cannot give them cgroups of their own,
        # native workloads) live in this unit's cgroup however they setsid; the default
        # (control-group) would SIGTERM every one of them, and a supervisor's SIGTERM is a
        # stop of its workload: a service restart must never touch a workload
        # (docs/api.md). What is left at shutdown gets systemd's final SIGTERM
        # then, which the supervisors take as a stop not asked by `las stop`:
        # unless-stopped instances come back at the next boot.
        "KillMode=process",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def _home() -> Path:
    from localaistack.store.paths import las_home

    return las_home().absolute()


@click.group()
def system() -> None:
    """Run `las serve` as a systemd service."""


@system.command()
def unit() -> None:
    """Print a systemd unit for `las serve` with this LAS_HOME (Type=notify, restarted on
    failure at most 5 times in 5 minutes; stopping it stops no workload)."""
    click.echo(unit_text(_home()), nl=False)


def _systemd_missing() -> str | None:
    """Why systemd cannot take the unit here (None: it can): not the init system (as
    ``sd_booted()`` tells it), or no ``systemctl``."""
    if not os.path.isdir("/run/systemd/system"):
        try:
            with open("/proc/1/comm") as f:
                init = f.read().strip()
        except OSError:
            init = "unknown"
        return f"systemd is not the init system here (PID 1 is {init!r})"
    if shutil.which("systemctl") is None:
        return "systemctl is not on PATH"
    return None


def _systemctl(*args: str) -> None:
    proc = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ExecutionError(
            f"`systemctl {' '.join(args)}` failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()}",
            hint=f"{UNIT_PATH} is written; `journalctl -u {UNIT_NAME}` may say more",
        )


@system.command()
@click.option("--now", is_flag=True, help="Also start the service now.")
def install(now: bool) -> None:
    """Write /etc/systemd/system/las.service (`las system unit`), reload systemd and enable
    it (started at boot; --now: also now). Needs root and systemd."""
    why = _systemd_missing()
    if why is not None:
        raise NotSupported(
            f"cannot install {UNIT_NAME}: {why}; nothing was written",
            hint="`las system unit` prints the unit, for another service manager to run "
            "`las serve` the same way (or start `las serve` by hand)",
        )
    if os.geteuid() != 0:
        raise UsageError(
            f"`las system install` writes {UNIT_PATH}: run it as root",
            hint=f"or `las system unit > {UNIT_NAME}` and install that as root",
        )
    text = unit_text(_home())
    tmp = UNIT_PATH.with_name(f".{UNIT_NAME}.{os.getpid()}")
    try:
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, UNIT_PATH)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExecutionError(f"cannot write {UNIT_PATH}: {exc.strerror or exc}") from exc
    _systemctl("daemon-reload")
    _systemctl("enable", *(["--now"] if now else []), UNIT_NAME)
    click.echo(f"{UNIT_PATH} written; {UNIT_NAME} enabled{' and started' if now else ''}")


COMMANDS = (system,)
