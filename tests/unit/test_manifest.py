"""Manifests: loading, every validation error with file, line and field, legacy manifests.

Each bad manifest is a file of its own under tests/data/manifests/bad/ (its first line says
what is wrong); BAD lists what `las validate` must report for it.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localaistack.cli.app import cli
from localaistack.control.manifest import (
    check_name,
    load_manifest_file,
    parse_manifest,
    template_refs,
)
from localaistack.errors import ManifestError

MANIFESTS = Path(__file__).resolve().parent.parent / "data" / "manifests"
PROFILES = Path(__file__).resolve().parent.parent / "data" / "profiles"
GOOD = sorted((MANIFESTS / "good").glob("*.yaml"))
LEGACY = sorted((MANIFESTS / "legacy").glob("*.yaml"))
GIB = 1 << 30

# file -> (field named in the error, line number or None, a phrase of the message)
BAD: dict[str, tuple[str, int | None, str]] = {
    "yaml-syntax.yaml": ("YAML syntax error", 5, "expected ','"),
    "unknown-mode.yaml": ("runtime.modes", 4, "unknown mode 'warp'"),
    "native-no-command.yaml": ("runtime.modes", 4, "runtime.native.command is missing"),
    "native-empty-command.yaml": ("runtime.native.command", 6, "at least 1 item"),
    "container-no-image.yaml": ("runtime.modes", 4, "runtime.container.image is missing"),
    "container-section-no-image.yaml": ("runtime.container.image", 5, "Field required"),
    "negative-size.yaml": ("runtime.resources.memory", 6, "must not be negative"),
    "malformed-size.yaml": ("runtime.resources.memory", 7, "invalid size 'lots'"),
    "malformed-duration.yaml": ("runtime.health.interval", 10, "invalid duration 'soon'"),
    "undeclared-parameter.yaml": ("runtime.native.command[2]", 6, "parameter 'model'"),
    "health-undeclared-port.yaml": ("runtime.health.http.port", 9, "port 'admin'"),
    "undeclared-port-ref.yaml": ("runtime.native.command[4]", 6, "port 'grpc'"),
    "duplicate-ports.yaml": ("runtime.ports[1].name", 8, "duplicate port name(s): http"),
    "name-slash.yaml": ("name", 2, "must not contain '/'"),
    "name-dotdot.yaml": ("name", 2, "must not contain '..'"),
    "name-space.yaml": ("name", 2, "no spaces"),
    "empty.yaml": ("(top level)", 1, "found nothing"),
    "list.yaml": ("(top level)", 1, "found a list"),
    "preferred-undeclared.yaml": ("runtime.preferred", 5, "not in modes"),
    "bad-port-number.yaml": ("runtime.ports[0].port", 7, "less than or equal to 65535"),
    "missing-runtime.yaml": ("runtime", None, "Field required"),
    "env-when-undeclared.yaml": (
        "runtime.native.env.SERVER_TOKEN.when",
        8,
        "'token' is not a declared parameter",
    ),
}


def test_every_bad_fixture_has_an_expectation() -> None:
    on_disk = {p.name for p in (MANIFESTS / "bad").glob("*.yaml")}
    assert on_disk == set(BAD)
    for name in on_disk:
        first = (MANIFESTS / "bad" / name).read_text().splitlines()[0]
        assert first.startswith("# Bad: "), f"{name} does not say what is wrong"


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


# --- las validate: good, bad, several ------------------------------------------------------


@pytest.mark.parametrize("path", GOOD + LEGACY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_validate_accepts_good_manifests(las, path: Path) -> None:
    res = las("validate", str(path))
    assert res.code == 0, res.err
    assert res.out.startswith(f"{path}: ok (")
    assert "error" not in res.err


def _validate_in_process(*paths: Path) -> tuple[int, str, str]:
    """`las validate` through click in this process: quick enough to run once per file.

    The real command line (a subprocess) runs over all bad files in one call below.
    """
    result = CliRunner().invoke(cli, ["validate", *map(str, paths)])
    assert isinstance(result.exception, SystemExit | None), result.exc_info
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(("name", "expected"), sorted(BAD.items()))
def test_validate_names_file_field_and_line(name: str, expected: tuple) -> None:
    field, line, phrase = expected
    path = MANIFESTS / "bad" / name
    code, out, err = _validate_in_process(path)
    assert code == 1
    assert out == ""
    errors = _error_lines(err)
    prefix = f"error: {path}:{line}: " if line else f"error: {path}"
    hits = [e for e in errors if e.startswith(prefix) and field in e and phrase in e]
    assert hits, f"no error line starting {prefix!r} naming {field!r} / {phrase!r}:\n{err}"
    assert "Traceback" not in err
    assert "1 of 1 manifest(s) invalid" in err


@pytest.mark.parametrize(("name", "expected"), sorted(BAD.items()))
def test_load_raises_manifest_error_listing_the_problem(name: str, expected: tuple) -> None:
    field, line, phrase = expected
    path = MANIFESTS / "bad" / name
    with pytest.raises(ManifestError) as exc:
        load_manifest_file(path)
    problems = exc.value.problems
    assert problems, "a ManifestError from a manifest file must list its problems"
    assert all(p.startswith(str(path)) for p in problems)
    where = f"{path}:{line}: " if line else str(path)
    assert any(p.startswith(where) and field in p and phrase in p for p in problems), problems


def test_validate_lists_errors_for_every_bad_file(las) -> None:
    """The real CLI, all bad files in one call: each one's error, no traceback, exit 1."""
    res = las("validate", *(str(MANIFESTS / "bad" / n) for n in sorted(BAD)))
    assert res.code == 1
    errors = _error_lines(res.err)
    for name, (field, line, phrase) in BAD.items():
        path = MANIFESTS / "bad" / name
        prefix = f"error: {path}:{line}: " if line else f"error: {path}"
        assert any(e.startswith(prefix) and field in e and phrase in e for e in errors), (
            f"{name} not reported with {field!r}:\n{res.err}"
        )
    assert f"{len(BAD)} of {len(BAD)} manifest(s) invalid" in res.err
    assert res.out == ""


def test_validate_mix_of_good_and_bad_exits_1_and_still_reports_ok(las) -> None:
    good = MANIFESTS / "good" / "minimal-native.yaml"
    bad = MANIFESTS / "bad" / "negative-size.yaml"
    res = las("validate", str(bad), str(good))
    assert res.code == 1
    assert f"{good}: ok (minimal-native 0.0.0)" in res.out
    assert str(bad) not in res.out
    assert any(str(bad) in e for e in _error_lines(res.err))
    assert "1 of 2 manifest(s) invalid" in res.err


def test_validate_missing_file_and_directory(las, tmp_path: Path) -> None:
    res = las("validate", str(tmp_path / "nope.yaml"), str(tmp_path))
    assert res.code == 1
    assert f"{tmp_path / 'nope.yaml'}: no such file" in res.err
    assert f"{tmp_path}: is a directory" in res.err
    assert "2 of 2 manifest(s) invalid" in res.err


def test_validate_lists_several_problems_of_one_manifest(las, tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        "name: ok-name\n"
        "runtime:\n"
        "  modes: [native]\n"
        "  native: {command: [x]}\n"
        "  resources: {memory: lots, vram: -1GiB}\n"
        "  stop: {timeout: soon, signal: SIGWHAT}\n"
    )
    res = las("validate", str(path))
    assert res.code == 1
    errors = _error_lines(res.err)
    for field in (
        "runtime.resources.memory",
        "runtime.resources.vram",
        "runtime.stop.timeout",
        "runtime.stop.signal",
    ):
        assert any(f"{path}:" in e and field in e for e in errors), f"{field}:\n{res.err}"


# --- load_manifest_file / parse_manifest in-process -------------------------------------------


def test_truly_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("  \n")
    with pytest.raises(ManifestError, match="the file is empty") as exc:
        load_manifest_file(path)
    assert exc.value.problems and str(path) in exc.value.problems[0]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest_file(path)


@pytest.mark.parametrize(
    "snippet",
    [
        "resources: {memory: .inf}",
        "resources: {cpus: .inf}",
        "resources: {vram: .nan}",
        "stop: {timeout: .inf}",
        "restart: {backoff: .nan}",
    ],
)
def test_non_finite_numbers_are_errors_not_crashes(tmp_path: Path, snippet: str) -> None:
    path = tmp_path / "inf.yaml"
    path.write_text(
        f"name: inf\nruntime:\n  modes: [native]\n  native: {{command: [x]}}\n  {snippet}\n"
    )
    with pytest.raises(ManifestError) as exc:
        load_manifest_file(path)
    assert any(f"{path}:5: runtime." in p for p in exc.value.problems), exc.value.problems


def test_non_finite_legacy_gb_sizes_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "inf.yaml"
    path.write_text(
        "name: inf\nhardware:\n  memory: {ram_min_gb: .inf}\n  gpu: {vram_min_gb: .inf}\n"
        "runtime: {modes: [binary]}\n"
    )
    with pytest.raises(ManifestError) as exc:
        load_manifest_file(path)
    text = "\n".join(exc.value.problems)
    assert "hardware.memory.ram_min_gb" in text
    assert "hardware.gpu.vram_min_gb" in text


def test_good_manifest_fields_are_parsed() -> None:
    loaded = load_manifest_file(MANIFESTS / "good" / "gpu-svc.yaml")
    m = loaded.manifest
    assert loaded.warnings == ()
    assert loaded.source == "file"
    assert m.name == "gpu-svc" and m.version == "2.1.0" and m.category == "service"
    rt = m.runtime
    assert rt.executable_modes == ("native", "container")
    assert rt.install_variants == ()
    assert rt.preferred == "native"
    assert rt.resources.memory == 8 * GIB
    assert rt.resources.vram == 16 * GIB
    assert rt.resources.gpus == 1
    assert rt.health is not None
    assert rt.health.start_timeout == 120.0
    assert rt.health.interval == 0.5
    assert rt.restart.backoff == 2.0
    assert rt.stop.signal == "SIGINT"
    assert rt.stop.timeout == 30.0
    assert rt.native is not None
    assert rt.native.env == {"GPU_SVC_THREADS": "4", "GPU_SVC_VERBOSE": "true"}
    assert m.hardware.gpu.required_vram == 16 * GIB
    assert m.hardware.gpu.optional is True
    assert [p.name for p in rt.ports] == ["api", "metrics"]


def test_digest_is_sha256_of_the_file_bytes() -> None:
    path = MANIFESTS / "good" / "gpu-svc.yaml"
    loaded = load_manifest_file(path)
    assert loaded.digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_builtin_echo_http_is_valid() -> None:
    from localaistack.control.catalog import BUILTIN_DIR

    loaded = load_manifest_file(BUILTIN_DIR / "echo-http.yaml", "builtin")
    assert loaded.manifest.name == "echo-http"
    assert loaded.warnings == ()
    assert loaded.manifest.runtime.executable_modes == ("native", "container")


# --- legacy manifests of the original LocalAIStack ------------------------------------------


def test_legacy_manifest_loads_with_install_variants_and_kept_keys() -> None:
    loaded = load_manifest_file(MANIFESTS / "legacy" / "llama-cpp.yaml")
    m = loaded.manifest
    assert m.name == "llama.cpp"
    assert m.runtime.executable_modes == ()
    assert m.runtime.install_variants == ("binary", "source")
    assert m.legacy_keys == ["homepage", "id", "platforms"]
    assert m.model_extra is not None and m.model_extra["id"] == "runtime.llama-cpp"
    assert m.hardware.memory.required == 4 * GIB  # "4GB" is read as binary, as the original
    assert m.hardware.gpu.required_vram == 6 * GIB
    assert m.hardware.cpu.cores_min == 2
    assert m.dependencies == {"system": ["curl", "cmake"]}
    assert m.interfaces == {"provides": ["local_llm_inference"]}
    text = "\n".join(loaded.warnings)
    for key in ("homepage", "id", "platforms"):
        assert f"{key}: not a manifest v1 field" in text
    assert "only install variants (binary, source)" in text


def test_legacy_gb_spellings_and_optional_gpu() -> None:
    m = load_manifest_file(MANIFESTS / "legacy" / "whisper-gb.yaml").manifest
    assert m.hardware.memory.required == 8 * GIB
    assert m.hardware.gpu.required_vram == 2 * GIB
    assert m.hardware.gpu.optional is True
    assert m.runtime.install_variants == ("cpu", "cuda")


@pytest.mark.parametrize("path", LEGACY, ids=lambda p: p.name)
def test_validate_legacy_warns_install_variants(las, path: Path) -> None:
    res = las("validate", str(path))
    assert res.code == 0, res.err
    assert ": ok (" in res.out
    warnings = [w for w in res.err.splitlines() if w.startswith("warning: ")]
    assert any(
        "runtime.modes: only install variants" in w and "cannot execute" in w for w in warnings
    ), res.err


@pytest.mark.parametrize("path", LEGACY, ids=lambda p: p.name)
def test_plan_legacy_refuses_install_variants(las, path: Path) -> None:
    res = las("plan", str(path), "--hardware", str(PROFILES / "4x80gib.json"))
    assert res.code == 3, res.err
    assert "declares only install variants" in res.err
    assert "which las does not execute" in res.err
    assert res.out == ""


def test_modules_lists_legacy_and_broken_user_manifests(las) -> None:
    modules = las.home / "modules"
    modules.mkdir(parents=True)
    shutil.copy(MANIFESTS / "legacy" / "llama-cpp.yaml", modules / "llama-cpp.yaml")
    shutil.copy(MANIFESTS / "bad" / "unknown-mode.yaml", modules / "unknown-mode.yaml")
    data = {m["name"]: m for m in las.ok("modules", "--json").json()}
    assert data["llama.cpp"]["modes"] == []
    assert data["llama.cpp"]["install_variants"] == ["binary", "source"]
    assert data["llama.cpp"]["source"] == "user"
    assert "unknown-mode" in data and data["unknown-mode"]["error"]
    assert data["echo-http"]["source"] == "builtin"
    table = las.ok("modules").out
    assert "not executable (binary, source)" in table
    assert "invalid manifest" in table


# --- names and templates -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama.cpp", "echo-http", "a", "Model_2.5", "x" * 63])
def test_check_name_accepts(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "a/b", "a\\b", "..", "a..b", "my module", "-x", ".hidden", "x" * 64, "a\x00b"]
)
def test_check_name_rejects(name: str) -> None:
    with pytest.raises(ValueError):
        check_name(name)


def test_template_refs() -> None:
    assert template_refs("${a} $${b} ${ ports.http }") == ["a", "ports.http"]
    assert template_refs("$$ $$$$") == []


def test_double_dollar_is_literal_not_a_reference() -> None:
    loaded = load_manifest_file(MANIFESTS / "good" / "container-only.yaml")
    assert loaded.manifest.runtime.container is not None
    assert loaded.manifest.runtime.container.env == {"GREETING": "pay $$3"}


# --- robustness: any YAML gives a manifest or a ManifestError -------------------------------

_KEYS = st.sampled_from(
    ["name", "runtime", "modes", "native", "container", "command", "image", "ports", "port",
     "health", "http", "interval", "resources", "memory", "vram", "gpus", "parameters",
     "default", "type", "hardware", "gpu", "ram_min_gb", "optional", "env", "preferred", "x"]
)  # fmt: skip
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["native", "container", "binary", "8GiB", "-1", "${x}", "${ports.a}", "1s"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=15,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        _VALUES,
        st.fixed_dictionaries(
            {
                "name": st.sampled_from(["ok", "b c", "x/y"]),
                "runtime": st.dictionaries(_KEYS, _VALUES, max_size=5),
            },
            optional={"hardware": _VALUES, "parameters": _VALUES},
        ),
    )
)
def test_any_yaml_loads_or_raises_manifest_error(data: object) -> None:
    text = yaml.safe_dump(data)
    try:
        loaded = parse_manifest(text, Path("fuzz.yaml"))
    except ManifestError as exc:
        assert exc.problems
        assert all(p.startswith("fuzz.yaml") for p in exc.problems)
    else:
        assert loaded.manifest.runtime.modes
