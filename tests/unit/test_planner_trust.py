"""What a trust pin covers (control/trust.py): the files and words read from argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from localaistack.control import trust
from localaistack.errors import PlanningError

BINS = {"python3": "/usr/bin/python3", "perl": "/usr/bin/perl", "bash": "/usr/bin/bash"}


def which(cmd: str, path: str | None) -> str | None:
    return BINS.get(cmd)


def scope(*argv: str, env: dict[str, str] | None = None) -> trust.Scope:
    return trust.analyse(list(argv), env or {}, "/w", which)


@pytest.mark.parametrize(
    ("argv", "files", "words"),
    [
        (["/x/python3", "-u", "s.py", "--port", "1"], ["/w/s.py"], ["-u"]),
        (
            ["/x/python3", "-X", "dev", "-W", "error", "/s.py"],
            ["/s.py"],
            ["-X", "dev", "-W", "error"],
        ),
        (["/x/python3", "-Bc", "print(1)", "a.py"], [], ["-Bc", "print(1)"]),
        (["/x/python3", "-cprint(1)", "x"], [], ["-cprint(1)"]),
        (["/x/python3", "--", "-s.py"], ["/w/-s.py"], ["--"]),
        (["/x/python3.11", "-m", "http.server", "80"], [], ["-m", "http.server"]),
        (["/bin/sh", "-e", "run.sh", "a"], ["/w/run.sh"], ["-e"]),
        (
            ["/bin/bash", "-o", "pipefail", "-c", "exec x", "n", "1"],
            [],
            ["-o", "pipefail", "-c", "exec x"],
        ),
        (["/bin/bash", "-xc", "exec x"], [], ["-xc", "exec x"]),
        (["/bin/dash", "-s", "a"], [], ["-s"]),
        (["/usr/bin/perl", "-w", "-e", "a", "-e", "b", "arg"], [], ["-w", "-e", "a", "-e", "b"]),
        (["/usr/bin/perl", "-Ilib", "x.pl", "y.pl"], ["/w/x.pl"], ["-Ilib"]),
        (
            ["/usr/bin/ruby", "-r", "./pre.rb", "app.rb"],
            ["/w/./pre.rb", "/w/app.rb"],
            ["-r", "./pre.rb"],
        ),
        (
            ["/usr/bin/node", "--require=/p.js", "app.js", "9"],
            ["/p.js", "/w/app.js"],
            ["--require=/p.js"],
        ),
        (["/usr/bin/node", "-e", "code", "x.js"], [], ["-e", "code"]),
        (["/usr/bin/awk", "-F:", "{print}", "f"], [], ["-F:", "{print}"]),
        (["/usr/bin/gawk", "-f", "p.awk", "data"], ["/w/p.awk"], ["-f", "p.awk"]),
        (
            ["/usr/bin/env", "-u", "X", "A=1", "python3", "s.py"],
            ["/usr/bin/python3", "/w/s.py"],
            ["-u", "X", "A=1", "python3"],
        ),
        (
            ["/usr/bin/nice", "-n", "5", "bash", "-c", "c"],
            ["/usr/bin/bash"],
            ["-n", "5", "bash", "-c", "c"],
        ),
        (
            ["/usr/bin/timeout", "-s", "INT", "5", "perl", "x.pl"],
            ["/usr/bin/perl", "/w/x.pl"],
            ["-s", "INT", "5", "perl"],
        ),
        (["/bin/busybox", "sh", "run.sh"], ["/w/run.sh"], ["sh"]),
    ],
)
def test_files_and_words(argv: list[str], files: list[str], words: list[str]) -> None:
    s = scope(*argv)
    assert [p for _, p in s.files] == files
    assert s.words == words
    assert s.needs_full_pin and s.argv_digest == trust.argv_digest(words, [])


def test_a_plain_executable_needs_only_its_bytes() -> None:
    s = scope("/opt/llama-server", "--model", "/m.gguf", "-c", "4096")
    assert s.files == [] and s.words == [] and not s.needs_full_pin and s.argv_digest is None
    assert scope("/bin/busybox", "httpd", "-f").needs_full_pin is False


def test_the_loader_environment_is_pinned() -> None:
    s = scope("/opt/srv", env={"LD_PRELOAD": "/x.so", "HOME": "/h"})
    assert s.needs_full_pin and s.loader_env == ["LD_PRELOAD=/x.so"]
    assert s.argv_digest == trust.argv_digest([], ["LD_PRELOAD=/x.so"])
    via_env = scope("/usr/bin/env", "NODE_OPTIONS=-r /e.js", "/opt/srv")
    assert via_env.loader_env == ["NODE_OPTIONS=-r /e.js"]


def test_notes_say_what_is_not_covered() -> None:
    assert "not covered" in scope("/x/python3", "-m", "mod").notes[0]
    assert "standard input" in scope("/x/python3").notes[0]
    assert "env -S" in scope("/usr/bin/env", "-S", "python3 -c x").notes[0]


def test_relative_files_need_a_workdir() -> None:
    with pytest.raises(PlanningError, match="relative path without a workdir"):
        trust.analyse(["/x/python3", "s.py"], {}, None, which)
    assert trust.analyse(["/x/python3", "/a/s.py"], {}, None, which).files == [
        ("script", "/a/s.py")
    ]


def test_a_program_env_cannot_find_is_an_error() -> None:
    with pytest.raises(PlanningError, match="not found on PATH"):
        scope("/usr/bin/env", "nosuch", "x")


def test_a_directory_cannot_be_pinned(tmp_path: Path) -> None:
    with pytest.raises(PlanningError, match="is a directory"):
        trust.sha256_file(str(tmp_path))


def test_secret_values_are_digested_but_never_shown() -> None:
    s = trust.analyse(
        ["/usr/bin/bash", "-c", "tok=s3cr3t; exec srv"],
        {"LD_PRELOAD": "/s3cr3t.so"},
        "/w",
        which,
        ["s3cr3t"],
    )
    shown = trust.describe_words(s)
    assert "s3cr3t" not in shown and "***" in shown
    assert s.argv_digest == trust.argv_digest(
        ["-c", "tok=s3cr3t; exec srv"], ["LD_PRELOAD=/s3cr3t.so"]
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"module": "m", "sha256": "a" * 64, "files": {"s.py": "b" * 64}}, "absolute path"),
        ({"module": "m", "files": {"/s.py": "b" * 64}}, "needs sha256"),
        ({"module": "m", "sha256": "a" * 64, "argv_sha256": "xyz"}, "64 hexadecimal"),
        ({"module": "m", "sha256": "a" * 64, "files": {"/s.py": "B" * 63}}, "64 hexadecimal"),
    ],
)
def test_malformed_pins_are_policy_errors(entry: dict[str, object], message: str) -> None:
    import yaml

    from localaistack.control.policy import parse_policy
    from localaistack.errors import PolicyError

    with pytest.raises(PolicyError, match=message) as exc:
        parse_policy(yaml.safe_dump({"trusted_native": [entry]}), "p.yaml")
    assert exc.value.message.startswith("p.yaml: invalid policy: trusted_native.0")


def test_a_full_pin_round_trips() -> None:
    import yaml

    from localaistack.control.policy import parse_policy

    entry = {
        "module": "m",
        "sha256": "A" * 64,
        "files": {"/s.py": "b" * 64},
        "argv_sha256": "c" * 64,
    }
    (t,) = parse_policy(yaml.safe_dump({"trusted_native": [entry]}), "p.yaml").trusted_native
    assert (t.sha256, t.files, t.argv_sha256) == ("a" * 64, {"/s.py": "b" * 64}, "c" * 64)
