"""A trust pin covers what actually runs (issue #17, item 4).

Real files, real `las trust`, `las plan`, `las run`: a pinned module whose interpreter runs a
script, inline code or a program found through `env` is refused (exit 3, both digests, the
re-pin hint) as soon as any of them changes; unchanged, it runs. The supervisor hashes the
pinned files again right before exec (a stored plan started again).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import Las, wait_until

PYTHON = "/usr/bin/python3"
SH = "/usr/bin/sh"
BASH = "/usr/bin/bash"
PERL = "/usr/bin/perl"
ENTRY_MARK = "# add (or replace) this entry under trusted_native in your policy file:\n"


def sha(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def argv_sha(words: list[str], env: list[str] | None = None) -> str:
    """The argv digest as docs/policy.md defines it (computed here independently)."""
    text = json.dumps([words, env or []], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def module(tmp_path: Path, name: str, command: list[str], **native: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    native = {"command": command, **native}
    spec = {"name": name, "runtime": {"modes": ["native"], "native": native}}
    path.write_text(yaml.safe_dump(spec))
    return path


def write_policy(las: Las, name: str, entries: list[dict[str, Any]]) -> None:
    las.home.mkdir(mode=0o700, exist_ok=True)
    # As root the workload would run as las-workload, which cannot enter pytest's tmp dirs.
    policy = {"trusted_native": entries, "native_allow_root": [name]}
    (las.home / "policy.yaml").write_text(yaml.safe_dump(policy))


def pin(las: Las, name: str, manifest: Path) -> tuple[str, dict[str, Any]]:
    """`las trust`'s output and the entry it prints, written into the test's policy."""
    out = las.ok("trust", str(manifest)).out
    assert ENTRY_MARK in out
    (entry,) = yaml.safe_load(out.split(ENTRY_MARK, 1)[1])
    write_policy(las, name, [entry])
    return out, entry


def runs(las: Las, manifest: Path, name: str) -> None:
    """The pinned module starts and runs; then it is removed."""
    las.ok("run", "-d", str(manifest), "--name", name)
    wait_until(lambda: las.state(name) == "running", 60, message=f"{name} running")
    las.ok("rm", "-f", name)


def refused(las: Las, manifest: Path, name: str, *digests: str) -> str:
    """`las plan` and `las run` refuse with exit 3, naming every digest; nothing starts."""
    for cmd in (("plan", str(manifest)), ("run", "-d", str(manifest), "--name", name)):
        res = las(*cmd)
        assert res.code == 3, res
        assert res.err.startswith(f"error: policy trusted_native pins {name!r}"), res.err
        for d in digests:
            assert d in res.err, (d, res.err)
        assert f"hint: if the change is intended, re-pin: `las trust {name}`" in res.err
        assert res.out == ""
    assert las.ps() == {}
    return res.err


def test_python_script_edited_is_refused(las: Las, tmp_path: Path) -> None:
    script = tmp_path / "srv.py"
    script.write_text("import time\ntime.sleep(300)\n")
    manifest = module(tmp_path, "pyscript", [PYTHON, "-u", str(script), "--port", "1"])
    out, entry = pin(las, "pyscript", manifest)
    # `las trust` prints each file it pins with its digest, and the argv digest.
    assert f"#   executable {PYTHON}: sha256 {sha(PYTHON)}\n" in out
    assert f"#   script {script}: sha256 {sha(script)}\n" in out
    assert f'#   argv: sha256 {argv_sha(["-u"])} of [["-u"], []]\n' in out
    assert "#   not covered: files the program imports" in out
    assert entry == {
        "module": "pyscript",
        "sha256": sha(PYTHON),
        "files": {str(script): sha(script)},
        "argv_sha256": argv_sha(["-u"]),
    }
    runs(las, manifest, "pyscript")
    pinned = sha(script)
    script.write_text("import os\nos.system('id')\nimport time\ntime.sleep(300)\n")
    err = refused(las, manifest, "pyscript", pinned, sha(script))
    assert f"{script}: pinned sha256 {pinned}, now sha256 {sha(script)}" in err


def test_script_replaced_by_a_symlink_to_another_is_refused(las: Las, tmp_path: Path) -> None:
    script, other = tmp_path / "srv.py", tmp_path / "other.py"
    script.write_text("import time\ntime.sleep(300)\n")
    other.write_text("print('not what was pinned')\nimport time\ntime.sleep(300)\n")
    manifest = module(tmp_path, "linked", [PYTHON, str(script)])
    pin(las, "linked", manifest)
    runs(las, manifest, "linked")
    pinned = sha(script)
    script.unlink()
    script.symlink_to(other)
    err = refused(las, manifest, "linked", pinned, sha(other))
    assert f"{script}: pinned sha256 {pinned}, now sha256 {sha(other)}" in err


@pytest.mark.parametrize(
    ("interpreter", "flag", "code", "changed"),
    [
        (PYTHON, "-c", "import time; time.sleep(300)", "import os; os.system('id')"),
        (BASH, "-c", "exec sleep 300", "id; exec sleep 300"),
        (PERL, "-e", "sleep 300", "system('id'); sleep 300"),
    ],
)
def test_inline_code_changed_is_refused(
    las: Las, tmp_path: Path, interpreter: str, flag: str, code: str, changed: str
) -> None:
    if not Path(interpreter).exists():
        pytest.skip(f"{interpreter} is not installed")
    name = f"inline-{Path(interpreter).name}"
    # Arguments after the code are its input: a port may change them without a re-pin.
    manifest = module(tmp_path, name, [interpreter, flag, code, "arg0", "8080"])
    _, entry = pin(las, name, manifest)
    assert entry["files"] == {}
    assert entry["argv_sha256"] == argv_sha([flag, code])
    runs(las, manifest, name)
    module(tmp_path, name, [interpreter, flag, code, "arg0", "9090"])
    runs(las, manifest, name)
    module(tmp_path, name, [interpreter, flag, changed, "arg0", "8080"])
    err = refused(las, manifest, name, argv_sha([flag, code]), argv_sha([flag, changed]))
    assert "argv (options, inline code, loader environment): pinned sha256" in err


def test_an_extra_file_argument_is_refused(las: Las, tmp_path: Path) -> None:
    script, extra = tmp_path / "srv.py", tmp_path / "extra.py"
    script.write_text("import time\ntime.sleep(300)\n")
    extra.write_text("import time\ntime.sleep(300)\n")
    manifest = module(tmp_path, "extra", [PYTHON, str(script)])
    pin(las, "extra", manifest)
    runs(las, manifest, "extra")
    # The interpreter now runs extra.py (srv.py becomes its argument).
    module(tmp_path, "extra", [PYTHON, str(extra), str(script)])
    err = refused(las, manifest, "extra", sha(script), sha(extra))
    assert f"{script}: pinned sha256 {sha(script)}, now not run" in err
    assert f"{extra}: pinned nothing (not in the pin), now sha256 {sha(extra)}" in err
    # An option that changes what the interpreter does: the argv digest differs.
    module(tmp_path, "extra", [PYTHON, "-i", str(script)])
    refused(las, manifest, "extra", argv_sha([]), argv_sha(["-i"]))


def test_interpreter_through_env(las: Las, tmp_path: Path) -> None:
    script = tmp_path / "srv.py"
    script.write_text("import time\ntime.sleep(300)\n")
    env = {"PATH": "/usr/bin:/bin"}  # python3 is found on the workload's PATH
    manifest = module(tmp_path, "viaenv", ["/usr/bin/env", "python3", str(script)], env=env)
    out, entry = pin(las, "viaenv", manifest)
    found = shutil.which("python3", path="/usr/bin:/bin")
    assert found is not None
    assert f"#   program run by env {found}: sha256 {sha(found)}\n" in out
    assert entry["sha256"] == sha("/usr/bin/env")
    assert entry["files"] == {found: sha(found), str(script): sha(script)}
    assert entry["argv_sha256"] == argv_sha(["python3"])
    runs(las, manifest, "viaenv")
    pinned = sha(script)
    script.write_text("import time\ntime.sleep(299)\n")
    refused(las, manifest, "viaenv", pinned, sha(script))
    # Another program named to env: a different file runs.
    script.write_text("import time\ntime.sleep(300)\n")
    module(tmp_path, "viaenv", ["/usr/bin/env", "perl", str(script)], env=env)
    refused(las, manifest, "viaenv", sha(found), sha(shutil.which("perl") or PERL))


def test_sh_script_edited_is_refused(las: Las, tmp_path: Path) -> None:
    script = tmp_path / "srv.sh"
    script.write_text("exec sleep 300\n")
    manifest = module(tmp_path, "shscript", [SH, str(script)])
    _, entry = pin(las, "shscript", manifest)
    assert entry["files"] == {str(script): sha(script)}
    runs(las, manifest, "shscript")
    pinned = sha(script)
    script.write_text("id\nexec sleep 300\n")
    refused(las, manifest, "shscript", pinned, sha(script))


def test_an_executable_only_pin_on_an_interpreter_is_refused(las: Las, tmp_path: Path) -> None:
    script = tmp_path / "srv.py"
    script.write_text("import time\ntime.sleep(300)\n")
    manifest = module(tmp_path, "oldpin", [PYTHON, str(script)])
    write_policy(las, "oldpin", [{"module": "oldpin", "sha256": sha(PYTHON)}])
    err = refused(las, manifest, "oldpin", sha(PYTHON), sha(script), argv_sha([]))
    assert (
        f"the pin covers only the executable {PYTHON} (pinned sha256 {sha(PYTHON)}, now "
        f"{sha(PYTHON)}), which is an interpreter or launcher (python): that pin no longer "
        "covers what runs" in err
    )


def test_an_executable_only_pin_on_a_binary_still_works(las: Las, tmp_path: Path) -> None:
    binary = tmp_path / "server"
    shutil.copy("/usr/bin/sleep", binary)
    manifest = module(tmp_path, "binary", [str(binary), "300"])
    out, _ = pin(las, "binary", manifest)
    assert out.endswith(f"  - {{module: binary, sha256: {sha(binary)}}}\n")  # no argv digest
    write_policy(las, "binary", [{"module": "binary", "sha256": sha(binary)}])
    runs(las, manifest, "binary")
    # Code loaded through the environment is not covered by that pin: refused.
    module(tmp_path, "binary", [str(binary), "300"], env={"LD_PRELOAD": "/nonexistent.so"})
    err = refused(las, manifest, "binary", sha(binary))
    assert "run with a loader environment" in err


def test_the_supervisor_hashes_pinned_files_before_exec(las: Las, tmp_path: Path) -> None:
    """A stored plan started again (`las start`, no planning): the edit is caught at exec."""
    script = tmp_path / "srv.py"
    script.write_text("import time\ntime.sleep(300)\n")
    manifest = module(tmp_path, "toctou", [PYTHON, str(script)])
    pin(las, "toctou", manifest)
    las.ok("run", "-d", str(manifest), "--name", "toctou")
    wait_until(lambda: las.state("toctou") == "running", 60, message="running")
    las.ok("stop", "toctou")
    pinned = sha(script)
    script.write_text("import os\nos.system('id')\n")
    res = las("start", "toctou")
    assert res.code != 0
    info = wait_until(
        lambda: (i := las.ps()["toctou"])["state"] == "failed" and i, 60, message="failed"
    )
    reason = info["reason"]
    assert f"{script} changed: pinned sha256 {pinned}, now {sha(script)}" in reason
    assert "re-pin with `las trust toctou`" in reason
    assert pinned in res.err and sha(script) in res.err
