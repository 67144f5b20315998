"""models.yaml (control/models.py): what a user writes, and how a mistake is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from localaistack.control.models import load_models, parse_models
from localaistack.errors import ModelsError

GOOD = """\
smollm2:
  module: llama.cpp
  set: {model: /m/smol.gguf, ctx_size: 4096, parallel: 2}
  ttl: 10m
  aliases: [smol, "smollm2:135m"]
gemma3:
  module: llama.cpp
  mode: native
  set: {model: /m/gemma.gguf}
  ttl: never
  pin: true
  max_concurrency: 2
  max_queue: 0
"""


def test_a_good_file_is_read_with_its_defaults() -> None:
    models = parse_models(GOOD, "models.yaml")
    smol, gemma = models.specs["smollm2"], models.specs["gemma3"]
    assert smol.set == {"model": "/m/smol.gguf", "ctx_size": "4096", "parallel": "2"}
    assert smol.ttl == 600.0 and not smol.pin and smol.max_concurrency is None
    assert smol.max_queue == 64 and smol.mode is None
    assert gemma.ttl is None and gemma.pin and gemma.max_concurrency == 2
    assert gemma.max_queue == 0 and gemma.mode == "native"
    assert models.resolve("smol") == "smollm2"
    assert models.resolve("smollm2:135m") == "smollm2"
    assert models.resolve("gemma3") == "gemma3"
    assert models.resolve("nope") is None


def test_problems_name_the_file_the_line_and_the_field() -> None:
    text = "a:\n  module: llama.cpp\n  ttl: -5s\nb:\n  modul: x\nc:\n  module: y\n  pin: maybe\n"
    with pytest.raises(ModelsError) as err:
        parse_models(text, "/h/models.yaml")
    problems = err.value.problems
    assert any(p.startswith("/h/models.yaml:3: a.ttl:") for p in problems), problems
    assert any(p.startswith("/h/models.yaml:5: b.modul:") for p in problems), problems
    assert any(p.startswith("/h/models.yaml:4: b.module: Field required") for p in problems)
    assert any(p.startswith("/h/models.yaml:8: c.pin:") for p in problems), problems
    assert err.value.hint


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("- a\n- b\n", "is a mapping of model names"),
        ("'bad name!':\n  module: x\n", "is not valid"),
        ("a: 3\n", "a model is a mapping"),
        ("a:\n  module: x\n  aliases: [b]\nb:\n  module: y\n", "'b' already names the model 'a'"),
        ("a:\n  module: x\n  ttl: 1000h\n", "too long"),
        ("a:\n  module: x\n  max_concurrency: 0\n", "max_concurrency"),
        ("a:\n  module: x\n  set: {k: [1, 2]}\n", "a.set.k"),
        ("a: [unclosed\n", "models.yaml:2: YAML syntax error"),
    ],
)
def test_each_mistake_is_told(text: str, words: str) -> None:
    with pytest.raises(ModelsError) as err:
        parse_models(text, "models.yaml")
    assert words in err.value.message


def test_no_file_is_no_models_but_a_named_file_must_exist(tmp_path: Path) -> None:
    assert load_models(tmp_path).specs == {}
    with pytest.raises(ModelsError, match="no such file"):
        load_models(tmp_path, tmp_path / "other.yaml")
    (tmp_path / "models.yaml").write_text(GOOD)
    assert set(load_models(tmp_path).specs) == {"smollm2", "gemma3"}
    (tmp_path / "models.yaml").write_bytes(b"a:\n  module: \x00x\n")
    with pytest.raises(ModelsError):
        load_models(tmp_path)


def test_the_error_crosses_the_api_with_its_problems() -> None:
    from localaistack.ops.problems import error_of, problem_of

    with pytest.raises(ModelsError) as err:
        parse_models("a:\n  modul: x\n", "models.yaml")
    status, body = problem_of(err.value)
    assert status == 422 and body["type"].endswith(":models-error")
    back = error_of(status, body)
    assert isinstance(back, ModelsError)
    assert back.message == err.value.message and back.problems == err.value.problems
