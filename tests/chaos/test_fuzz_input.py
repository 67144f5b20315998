"""A fuzz over the *bytes* of manifests, policies and hardware profiles (issue #17, item 2).

Not only valid structures: random bytes, valid documents mutated byte by byte, and soups of
YAML tokens (anchors, aliases, merges, tags, flow and block nesting, escapes). Each case goes
through the in-process parse/validate functions that every command uses: it must give a
result or the project's own error (ManifestError, PolicyError, HardwareProfileError), never
another exception, and stay within the bounds (CPU time per case, memory growth overall).
Deterministic: derandomized, no example database.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localaistack.control.hardware import load_profile
from localaistack.control.manifest import parse_manifest
from localaistack.control.policy import parse_policy
from localaistack.errors import HardwareProfileError, ManifestError, PolicyError

PROFILES = Path(__file__).resolve().parent.parent / "data" / "profiles"
MANIFESTS = Path(__file__).resolve().parent.parent / "data" / "manifests"
BUILTIN = Path(__file__).resolve().parent.parent.parent / "src" / "localaistack" / "modules"
CASE_CPU_S = 2.0
GROWTH_KB = 200 * 1024  # the test process's peak RSS may not grow by more over a fuzz

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SEEDS_MANIFEST = [
    p.read_bytes()
    for p in [*sorted((MANIFESTS / "good").glob("*.yaml")), *sorted(BUILTIN.glob("*.yaml"))]
]
SEEDS_POLICY = [
    b"allowed_modes: [container, native]\ndefault_mode: container\n"
    b"trusted_native: [echo-http, {module: vllm, sha256: " + b"a" * 64 + b"}]\n"
    b"network: {host: 127.0.0.1, expose: {open-webui: 0.0.0.0}}\n"
    b"reserve: {memory: 2GiB, vram: 512MiB}\ncontainers: {allow_capabilities: {x: [NET_RAW]}}\n",
    b"policies:\n  - name: big\n    conditions: {gpu_vram_min: 24GiB, gpu_count_min: 2}\n"
    b"    allow: {runtimes: [native]}\n    deny: [x]\n",
]
SEEDS_PROFILE = [p.read_bytes() for p in sorted(PROFILES.glob("*.json"))]

TOKENS = [
    "&a ", "*a", "&b ", "*b", "<<: ", "[", "]", "{", "}", ", ", ": ", "- ", "? ", "\n", "\n  ",
    "\n    ", "---\n", "...\n", "#c", "!!binary ", "!!python/object ", "!!set ", "!!int ",
    "!!float ", "!!timestamp ", "!!str ", "!local ", "%YAML 1.1\n", '"\\0"', '"\\x1b"',
    '"\\uD800"', "'", '"', "|\n  ", ">-\n  ", "name", "runtime", "modes", "native", "command",
    "env", "ports", "port", "health", "interval", "stop", "timeout", "policies", "allowed_modes",
    "trusted_native", "reserve", "memory", "0", "-1", "true", "~", "1e999", ".inf", ".nan",
    "0x1F", "0o7", "1_000", "2001-13-40", "12:30:00", "9" * 50, "8GiB", "10s", "${x}", "$$",
    "A=B", "\t", "\r\n", "\ufeff", "\u202e", "é",
]  # fmt: skip


KEYS = ["name", "runtime", "x", "allowed_modes", "reserve", "network", "policies", "<<", "? [1]"]
SCALARS = [
    "2001-13-40", "2001-02-30 25:61:61", "9" * 50, "-" + "9" * 30, "0x" + "f" * 40, "1e999",
    "-.inf", ".nan", "!!binary '!!'", "!!timestamp nope", "!!int x", "!!float y", "!!set [1]",
    "!!python/name:os.system", '"\\0"', '"\\udc80"', "&a [*a]", "{a: *a}", "*undefined",
    "[1, [2, [3, [4]]]]", "{1: 2, null: 3, [1]: 4}", "~", "''", "0o" + "7" * 30, "1:2:3:4",
]  # fmt: skip


def mutate(seed: bytes, ops: list[tuple[int, int, int, bytes]]) -> bytes:
    """Apply (kind, position, length, bytes) edits: delete, insert, replace, duplicate."""
    data = bytearray(seed)
    for kind, where, length, chunk in ops:
        if not data:
            data += chunk
            continue
        pos = where % len(data)
        end = min(len(data), pos + length)
        if kind == 0:
            del data[pos:end]
        elif kind == 1:
            data[pos:pos] = chunk
        elif kind == 2:
            data[pos:end] = chunk
        else:
            data[pos:pos] = data[pos:end] * 3
    return bytes(data)


OPS = st.lists(
    st.tuples(
        st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 64), st.binary(max_size=8)
    ),
    min_size=1,
    max_size=6,
)


def documents(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=512),  # any bytes at all
        st.builds(mutate, st.sampled_from(seeds), OPS),  # valid documents, damaged
        st.lists(st.sampled_from(TOKENS), max_size=60).map(lambda t: "".join(t).encode()),
        st.lists(  # mappings of odd scalars, at the top level or under real keys
            st.tuples(st.sampled_from(KEYS), st.sampled_from(SCALARS)), min_size=1, max_size=8
        ).map(lambda kv: "".join(f"{k}: {v}\n" for k, v in kv).encode()),
        st.builds(  # alias fan-out of random shape: a bomb or a harmless repeat
            lambda width, depth: (
                "a0: &a0 [x]\n"
                + "".join(
                    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]\n"
                    for i in range(1, depth + 1)
                )
            ).encode(),
            st.integers(1, 12),
            st.integers(1, 12),
        ),
        st.builds(  # nesting of random depth, flow or block
            lambda depth, flow: (
                ("x: " + "[" * depth + "]" * depth)
                if flow
                else "x:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(depth))
            ).encode(),
            st.integers(1, 300),
            st.booleans(),
        ),
    )


class _Bounds:
    """Per-case CPU time; memory growth of this process over the whole fuzz."""

    def __init__(self) -> None:
        self.rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def case(self, fn: Callable[[], None]) -> None:
        t0 = time.process_time()
        fn()
        spent = time.process_time() - t0
        assert spent < CASE_CPU_S, f"{spent:.2f}s of CPU for one case"

    def check_memory(self) -> None:
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.rss0
        assert grown < GROWTH_KB, f"peak RSS grew by {grown} KiB"


MANIFEST_BOUNDS = _Bounds()
POLICY_BOUNDS = _Bounds()
PROFILE_BOUNDS = _Bounds()


def _manifest(raw: bytes) -> None:
    try:
        loaded = parse_manifest(raw, Path("fuzz.yaml"))
    except ManifestError as exc:
        assert exc.message.startswith("fuzz.yaml")
        assert all(p.startswith("fuzz.yaml") for p in exc.problems), exc.problems
        assert exc.problems and len(exc.problems) <= 51
    else:
        assert loaded.manifest.runtime.modes


def _policy(raw: bytes) -> None:
    try:
        parse_policy(raw, "fuzz-policy.yaml")
    except PolicyError as exc:
        assert exc.message.startswith("fuzz-policy.yaml")
        assert exc.hint
        assert len(exc.message) < 5000


@FUZZ
@given(documents(SEEDS_MANIFEST))
def test_manifest_bytes_give_a_manifest_or_a_manifest_error(raw: bytes) -> None:
    MANIFEST_BOUNDS.case(lambda: _manifest(raw))
    MANIFEST_BOUNDS.check_memory()


@FUZZ
@given(documents(SEEDS_POLICY))
def test_policy_bytes_give_a_policy_or_a_policy_error(raw: bytes) -> None:
    POLICY_BOUNDS.case(lambda: _policy(raw))
    POLICY_BOUNDS.check_memory()


@settings(FUZZ, max_examples=60)
@given(
    st.one_of(
        st.binary(max_size=256),
        st.builds(mutate, st.sampled_from(SEEDS_PROFILE), OPS),
    )
)
def test_profile_bytes_give_a_profile_or_a_profile_error(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-profile.json"
    path.write_bytes(raw)

    def load() -> None:
        try:
            load_profile(path)
        except HardwareProfileError as exc:
            assert str(path) in exc.message and exc.hint

    PROFILE_BOUNDS.case(load)
    PROFILE_BOUNDS.check_memory()
