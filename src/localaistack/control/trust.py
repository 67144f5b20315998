"""What a ``trusted_native`` pin covers: the files and words that decide what a native
workload runs (docs/policy.md, "What a pin covers").

A pin always covers argv[0], the executable, by its sha256. When what runs is an
interpreter (``python3 script.py``, ``sh -c CODE``, ``/usr/bin/env perl x.pl``...), the
executable's bytes say little about the program: the pin then also covers

* every file the interpreter (or a launcher such as ``env``) will execute: the script, an
  interpreter found through ``env``, a file preloaded by path (``node -r ./x.js``);
* the *argv digest*: the literal words that choose the program: the launcher's and the
  interpreter's options and any inline code (``-c``, ``-e``), up to the script or the code
  (arguments after them are the program's input: not covered), and the values of the
  environment variables that load code (``LD_PRELOAD``, ``PYTHONPATH``, ``BASH_ENV``...).

Recognised by name (of argv[0] as given, else as resolved through symlinks): the
interpreters in ``_KINDS`` and the launchers in ``_LAUNCHERS``. Anything else is a plain
executable: its arguments are its data, and the pin covers its bytes (and the loader
environment, when set).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from localaistack.control.policy import TrustEntry
from localaistack.errors import PlanningError, PolicyViolation
from localaistack.masking import mask

# Environment variables that make a program load code it does not name in argv.
LOADER_ENV = (
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "BASH_ENV",
    "ENV",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONINSPECT",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "RUBYOPT",
    "RUBYLIB",
    "NODE_OPTIONS",
    "NODE_PATH",
)
MAX_CHAIN = 8  # launchers in a row (env nice python3 ...): more is refused

_KINDS = {
    "python": re.compile(r"^(python|pypy)[0-9.]*$"),
    "sh": re.compile(r"^(sh|bash|dash|zsh|ksh|ksh93|mksh|ash|yash|posh|hush)$"),
    "perl": re.compile(r"^perl[0-9.]*$"),
    "ruby": re.compile(r"^ruby[0-9.]*$"),
    "node": re.compile(r"^(node|nodejs)$"),
    "awk": re.compile(r"^(awk|gawk|mawk|nawk|original-awk)$"),
}
_LAUNCHERS = ("env", "nice", "nohup", "setsid", "timeout", "stdbuf", "busybox")
NOT_COVERED = (
    "files the program imports, requires or sources itself, modules it loads by name, "
    "and code it downloads or generates"
)


@dataclass
class Scope:
    """What runs, as far as a pin can cover it."""

    executable: str  # argv[0], absolute
    files: list[tuple[str, str]] = field(default_factory=list)  # (role, absolute path)
    words: list[str] = field(default_factory=list)  # pinned literally (the argv digest)
    loader_env: list[str] = field(default_factory=list)  # NAME=VALUE, pinned literally
    interpreters: list[str] = field(default_factory=list)  # kinds met on the way, in order
    notes: list[str] = field(default_factory=list)  # what runs that the pin cannot cover
    secrets: list[str] = field(default_factory=list)  # values never shown (digested only)

    @property
    def needs_full_pin(self) -> bool:
        """Whether an executable-only pin leaves what runs uncovered."""
        return bool(self.interpreters or self.files or self.loader_env)

    @property
    def argv_digest(self) -> str | None:
        if not self.needs_full_pin:
            return None
        return argv_digest(self.words, self.loader_env)


def argv_digest(words: Sequence[str], loader_env: Sequence[str]) -> str:
    """sha256 of the JSON array ``[WORDS, ENV]`` (compact, UTF-8): docs/policy.md."""
    text = json.dumps([list(words), list(loader_env)], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: str) -> str:
    """The file's sha256 (following symlinks).

    Raises:
        PlanningError: it cannot be read, or is a directory (a pin covers files).
    """
    if os.path.isdir(path):
        raise PlanningError(
            f"cannot pin {path}: it is a directory, and a trust pin covers files",
            hint="run the file itself by its path (e.g. its __main__.py)",
        )
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise PlanningError(
            f"cannot verify the trust pin: {path}: {exc.strerror}",
            hint="the policy pins this module: every file it runs must be readable",
        ) from exc
    return digest.hexdigest()


def kind_of(path: str) -> str | None:
    """The interpreter or launcher ``path`` is, by its name (as given, then resolved)."""
    for name in dict.fromkeys((os.path.basename(path), os.path.basename(os.path.realpath(path)))):
        if name in _LAUNCHERS:
            return name
        for kind, pattern in _KINDS.items():
            if pattern.match(name):
                return kind
    return None


def analyse(
    argv: Sequence[str],
    env: Mapping[str, str],
    workdir: str | None,
    which: Callable[[str, str | None], str | None],
    secrets: Sequence[str] = (),
) -> Scope:
    """What a pin of ``argv`` (argv[0] resolved) must cover, run with ``env`` in ``workdir``.
    ``secrets``: values that messages show as ``***`` (the digest covers them as they are).

    Raises:
        PlanningError: a program a launcher names cannot be found, or the chain is too long.
    """
    scope = Scope(executable=argv[0], secrets=[v for v in secrets if v])

    def where(raw: str) -> str:
        """A file argument's absolute path, as the workload will open it."""
        if raw.startswith("/"):
            return raw
        if workdir is None:
            # Relative to the cwd of whoever runs las: the stored plan started again from
            # elsewhere (`las start`) would run another file than the one checked.
            raise PlanningError(
                f"cannot pin {raw!r}: a relative path without a workdir depends on where las runs",
                hint="name it by its absolute path, or set runtime.native.workdir",
            )
        return os.path.join(workdir, raw)

    scope.loader_env = [f"{k}={env[k]}" for k in LOADER_ENV if k in env]
    path_env = env.get("PATH")
    prog, args, kind = argv[0], list(argv[1:]), kind_of(argv[0])
    for _ in range(MAX_CHAIN):
        if kind == "busybox":  # busybox APPLET ...: the applet decides
            if not args:
                return scope
            kind = args[0] if args[0] in _LAUNCHERS else kind_of(args[0])
            scope.words.append(args[0])
            args = args[1:]
            if kind is None or kind == "busybox":
                return scope  # a built-in applet: its code is busybox's own (pinned)
            continue
        if kind in _LAUNCHERS:
            scope.interpreters.append(kind)
            rest, assigned = _launcher(kind, args, scope)
            if rest is None:
                return scope
            name = args[rest]
            search = assigned.get("PATH", path_env)
            found = name if "/" in name else which(name, search)
            if found is None:
                raise PlanningError(
                    f"{prog} runs {name!r}, which is not found on PATH: it cannot be pinned",
                    hint="name the program by its absolute path",
                )
            found = where(found)
            scope.words.append(name)
            scope.files.append((f"program run by {os.path.basename(prog)}", found))
            prog, args, kind = found, args[rest + 1 :], kind_of(found)
            continue
        if kind is None:
            return scope  # a plain executable: its arguments are its data
        scope.interpreters.append(kind)
        _interpreter(kind, args, scope, where, path_env, which)
        return scope
    raise PlanningError(
        f"{argv[0]}: more than {MAX_CHAIN} launchers in a row: the trust pin cannot follow",
        hint="run the program directly",
    )


def _launcher(kind: str, args: list[str], scope: Scope) -> tuple[int | None, dict[str, str]]:
    """Index in ``args`` of the program a launcher runs (None: none), its options pinned
    as words; and env's assignments."""
    i, assigned = 0, dict[str, str]()
    with_value = {
        "env": ("-u", "--unset", "-C", "--chdir"),
        "nice": ("-n", "--adjustment"),
        "timeout": ("-s", "--signal", "-k", "--kill-after"),
        "stdbuf": ("-i", "-o", "-e", "--input", "--output", "--error"),
    }.get(kind, ())
    while i < len(args):
        a = args[i]
        if a == "--":
            scope.words.append(a)
            i += 1
            break
        if kind == "env" and (a in ("-S", "--split-string") or a.startswith("--split-string=")):
            # One argument split into many: the whole rest is pinned literally.
            scope.words += args[i:]
            scope.notes.append("env -S: the rest of argv is pinned as words, not followed")
            return None, assigned
        if kind == "env" and (a in ("-", "-i") or (a.startswith("-") and len(a) > 1)):
            pass
        elif kind == "env" and "=" in a and not a.startswith("="):
            assigned[a.split("=", 1)[0]] = a.split("=", 1)[1]
        elif a.startswith("-") and len(a) > 1:
            pass
        else:
            if kind != "timeout" or "duration" in assigned:
                break
            assigned["duration"] = a  # timeout's first operand is the duration
        scope.words.append(a)
        if a in with_value and i + 1 < len(args):
            scope.words.append(args[i + 1])
            i += 1
        i += 1
    if kind == "env":
        scope.loader_env += [f"{k}={assigned[k]}" for k in LOADER_ENV if k in assigned]
    return (i if i < len(args) else None), assigned


def _interpreter(
    kind: str,
    args: list[str],
    scope: Scope,
    where: Callable[[str], str],
    path_env: str | None,
    which: Callable[[str, str | None], str | None],
) -> None:
    """Record what ``kind`` runs from ``args``: the words up to the script (or through the
    inline code) and the files it executes."""
    parse = {
        "python": _python,
        "sh": _sh,
        "perl": _perl,
        "ruby": _ruby,
        "node": _node,
        "awk": _awk,
    }[kind]
    end, files, script = parse(args, scope)
    scope.words += args[:end]
    for role, raw in files:
        scope.files.append((role, where(raw)))
    if script is not None and script < len(args):
        raw = args[script]
        if kind == "ruby" and "-S" in args[:end] and "/" not in raw:
            found = which(raw, path_env)  # ruby -S: the script is looked up on PATH
            raw = found or raw
        scope.files.append(("script", where(raw)))
    elif script is None:
        pass
    else:
        scope.notes.append(f"{kind} reads its program from standard input (las gives it none)")


Parsed = tuple[int, list[tuple[str, str]], int | None]
"""(words end, files by role, index of the script operand or None when there is none)."""


def _value(args: list[str], i: int, rest: str) -> tuple[str | None, int]:
    """An option's value: attached (``-cCODE``) or the next argument; and the next index."""
    if rest:
        return rest, i + 1
    return (args[i + 1] if i + 1 < len(args) else None), i + 2


def _python(args: list[str], scope: Scope) -> Parsed:
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return i + 1, [], i + 1
        if a == "-":
            return i + 1, [], len(args) + 1  # stdin
        if a.startswith("--"):
            i += 2 if a == "--check-hash-based-pycs" else 1
            continue
        if not a.startswith("-") or len(a) == 1:
            return i, [], i  # the script
        j, nxt = 1, i + 1
        while j < len(a):
            ch, rest = a[j], a[j + 1 :]
            if ch == "c":
                _, nxt = _value(args, i, rest)
                return nxt, [], None  # inline code: what follows is sys.argv
            if ch == "m":
                mod, nxt = _value(args, i, rest)
                scope.notes.append(
                    f"python -m {mod}: the module's file is found on sys.path when it runs "
                    "(workdir, PYTHONPATH, site-packages): it is not covered"
                )
                return nxt, [], None
            if ch in "WX":
                _, nxt = _value(args, i, rest)
                break
            j += 1
        i = nxt
    return i, [], len(args) + 1


def _sh(args: list[str], scope: Scope) -> Parsed:
    i, code, stdin = 0, False, False
    while i < len(args):
        a = args[i]
        if a in ("--", "-"):
            i += 1
            break
        if a.startswith("--"):
            i += 2 if a in ("--rcfile", "--init-file") else 1
            continue
        if a[:1] in ("-", "+") and len(a) > 1:
            letters = a[1:]
            code = code or (a[0] == "-" and "c" in letters)
            stdin = stdin or "s" in letters
            i += 1 + letters.count("o") + letters.count("O")  # -o NAME, -O NAME
            continue
        break
    if code:
        return min(i + 1, len(args)), [], None  # the command string; then $0, $1...
    if stdin:
        return i, [], len(args) + 1
    return i, [], i if i < len(args) else len(args) + 1


def _perl(args: list[str], scope: Scope) -> Parsed:
    i, code = 0, False
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if a == "-" or not a.startswith("-"):
            break
        j, nxt = 1, i + 1
        while j < len(a):
            ch, rest = a[j], a[j + 1 :]
            if ch in "eE":
                code = True
                _, nxt = _value(args, i, rest)
                break
            if ch in "IMm":
                _, nxt = _value(args, i, rest)
                break
            if ch in "0lidDCxFV":  # options whose value is attached: the rest of the word
                break
            j += 1
        i = nxt
    if code:
        return i, [], None
    if i < len(args) and args[i] == "-":
        return i + 1, [], len(args) + 1
    return i, [], i if i < len(args) else len(args) + 1


def _ruby(args: list[str], scope: Scope) -> Parsed:
    i, code = 0, False
    files: list[tuple[str, str]] = []
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if a == "-" or not a.startswith("-"):
            break
        if a.startswith("--"):
            i += 1
            continue
        j, nxt = 1, i + 1
        while j < len(a):
            ch, rest = a[j], a[j + 1 :]
            if ch == "e":
                code = True
                _, nxt = _value(args, i, rest)
                break
            if ch == "r":
                lib, nxt = _value(args, i, rest)
                _required(lib, files, scope, "ruby -r")
                break
            if ch in "ICE":
                _, nxt = _value(args, i, rest)
                break
            if ch in "0xWKTF":
                break
            j += 1
        i = nxt
    if code:
        return i, files, None
    return i, files, i if i < len(args) else len(args) + 1


def _node(args: list[str], scope: Scope) -> Parsed:
    i = 0
    files: list[tuple[str, str]] = []
    code_opts = ("-e", "--eval", "-p", "--print")
    preload = ("-r", "--require", "--import", "--loader", "--experimental-loader")
    valued = ("--title", "--input-type", "-C", "--conditions", "--env-file")
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if a == "-" or not a.startswith("-"):
            break
        name, eq, attached = a.partition("=")
        if name in code_opts:
            return (i + 1 if eq else i + 2), files, None
        if name in preload:
            lib = attached if eq else (args[i + 1] if i + 1 < len(args) else None)
            _required(lib, files, scope, f"node {name}")
            i += 1 if eq else 2
            continue
        i += 2 if (name in valued and not eq) else 1
    return i, files, i if i < len(args) else len(args) + 1


def _awk(args: list[str], scope: Scope) -> Parsed:
    i, inline = 0, False
    files: list[tuple[str, str]] = []
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if a == "-" or not a.startswith("-"):
            break
        name, eq, attached = a.partition("=")
        if name in ("-f", "--file", "-E", "--exec", "-i", "--include"):
            src = attached if eq else (args[i + 1] if i + 1 < len(args) else None)
            if src is not None:
                files.append(("program file", src))
            i += 1 if eq else 2
            continue
        if name in ("-e", "--source"):  # gawk: inline program text
            inline = True
            i += 1 if eq else 2
            continue
        if a[:2] in ("-f", "-v", "-F") and len(a) > 2:
            if a[:2] == "-f":
                files.append(("program file", a[2:]))
            i += 1
            continue
        i += 2 if name in ("-v", "-F", "--assign", "--field-separator") and not eq else 1
    if files or inline:
        return i, files, None
    return min(i + 1, len(args)), [], None  # the first operand is the program text


def _required(lib: str | None, files: list[tuple[str, str]], scope: Scope, how: str) -> None:
    """A preloaded library: a file when named by path, else a name resolved when it runs."""
    if lib is None:
        return
    if lib.startswith(("/", "./", "../")):
        files.append((f"preloaded by {how}", lib))
    else:
        scope.notes.append(f"{how} {lib}: loaded by name when it runs: not covered")


@dataclass(frozen=True)
class Measured:
    """The digests of what runs now."""

    scope: Scope
    exe_sha256: str
    files: dict[str, str]  # absolute path -> sha256
    argv_sha256: str | None

    def pinned_files(self) -> list[tuple[str, str]]:
        """(path, sha256) of every file the runtime verifies again before exec."""
        return [(self.scope.executable, self.exe_sha256), *self.files.items()]

    def lines(self) -> list[str]:
        """What is pinned, one item a line (for ``las trust`` and the plan)."""
        out = [f"executable {self.scope.executable}: sha256 {self.exe_sha256}"]
        roles = dict((p, r) for r, p in self.scope.files)
        out += [f"{roles.get(p, 'file')} {p}: sha256 {d}" for p, d in self.files.items()]
        if self.argv_sha256 is not None:
            out.append(f"argv: sha256 {self.argv_sha256} of {describe_words(self.scope)}")
        return out


def describe_words(scope: Scope) -> str:
    """The argv digest's input, briefly (long words shortened)."""
    words = [w if len(w) <= 40 else f"<{len(w.encode())} bytes>" for w in scope.words]
    env = [e if len(e) <= 60 else e[:57] + "..." for e in scope.loader_env]
    return mask(json.dumps([words, env], ensure_ascii=False), sorted(scope.secrets, key=len)[::-1])


def measure(scope: Scope) -> Measured:
    """Hash what ``scope`` names.

    Raises:
        PlanningError: a file cannot be read.
    """
    files: dict[str, str] = {}
    for _, path in scope.files:
        files.setdefault(path, sha256_file(path))
    return Measured(scope, sha256_file(scope.executable), files, scope.argv_digest)


def _differences(pin: TrustEntry, now: Measured) -> list[str]:
    """How ``now`` differs from a full pin, each naming both digests."""
    out = []
    if pin.sha256 != now.exe_sha256:
        out.append(
            f"executable {now.scope.executable}: pinned sha256 {pin.sha256}, now {now.exe_sha256}"
        )
    pinned = pin.files or {}
    for path in dict.fromkeys([*pinned, *now.files]):
        a, b = pinned.get(path), now.files.get(path)
        if a != b:
            out.append(
                f"{path}: pinned "
                + (f"sha256 {a}" if a else "nothing (not in the pin)")
                + ", now "
                + (f"sha256 {b}" if b else "not run")
            )
    if pin.argv_sha256 != now.argv_sha256:
        out.append(
            "argv (options, inline code, loader environment): pinned "
            + (f"sha256 {pin.argv_sha256}" if pin.argv_sha256 else "nothing")
            + f", now sha256 {now.argv_sha256 or '(none: not an interpreter)'} of "
            + describe_words(now.scope)
        )
    return out


def check(name: str, now: Measured, pins: Sequence[TrustEntry], source: str) -> str:
    """Which pin ``now`` matches (a sentence); every pin given has a ``sha256``.

    A full pin (``files`` or ``argv_sha256`` set) matches when every digest is equal and it
    names exactly the files that run. An executable-only pin matches a plain executable
    by its sha256; for an interpreter it no longer covers what runs and is refused.

    Raises:
        PolicyViolation: no pin matches, naming each pinned and actual digest.
    """
    problems = []
    for pin in pins:
        old_style = pin.files is None and pin.argv_sha256 is None
        if old_style and not now.scope.needs_full_pin:
            if pin.sha256 == now.exe_sha256:
                return "matches the pin of the executable"
            problems.append(
                f"executable {now.scope.executable}: pinned sha256 {pin.sha256}, "
                f"now {now.exe_sha256}"
            )
        elif old_style:
            what = (
                f"an interpreter or launcher ({', '.join(now.scope.interpreters)})"
                if now.scope.interpreters
                else "run with a loader environment"
            )
            covered = "; ".join(now.lines()[1:])
            problems.append(
                f"the pin covers only the executable {now.scope.executable} (pinned sha256 "
                f"{pin.sha256}, now {now.exe_sha256}), which is {what}: that pin no longer "
                f"covers what runs, which is also {covered} (pinned: nothing)"
            )
        else:
            diff = _differences(pin, now)
            if not diff:
                return "matches the pin of the executable, the files it runs and its argv"
            problems.append("; ".join(diff))
    raise PolicyViolation(
        f"policy trusted_native pins {name!r} ({source}), but what it runs does not match: "
        + " | ".join(problems),
        hint=f"if the change is intended, re-pin: `las trust {name}` prints the entry to put "
        "in trusted_native",
    )
