"""How much GPU memory a llama.cpp server needs for a GGUF model, from the file's metadata.

``estimate(path, ...)`` reads the GGUF header with the ``gguf`` package (imported only
inside the call: it pulls numpy, and other ``las`` commands must stay fast) and adds up
three terms, each in bytes:

``weights``
    The tensor data that lands on the GPU. A tensor named ``blk.N.*`` belongs to layer N;
    llama.cpp offloads the *last* ``n_gpu_layers`` layers, so those layers' tensors count.
    The other tensors (``token_embd``, ``output``, ``output_norm``, ...) count only when
    every layer is offloaded. That is conservative: llama.cpp keeps ``token_embd`` in host
    memory, but a model with tied embeddings (no ``output.weight``) gets a GPU copy of it
    as its output matrix, and ``-ngl`` equal to the layer count leaves ``output`` on the
    CPU (``-ngl 99`` moves it), details this estimate does not try to follow.

``kv_cache``
    ``sum over offloaded layers of ctx_size × n_head_kv × (key_length + value_length) ×
    kv_type_bytes`` which, for the usual ``key_length == value_length == head_dim``, is
    ``2 (K and V) × offloaded_layers × ctx_size × n_head_kv × head_dim × kv_type_bytes``.
    ``head_dim`` is ``<arch>.attention.key_length`` / ``value_length`` when present, else
    ``embedding_length / head_count``; ``n_head_kv`` is ``<arch>.attention.head_count_kv``
    (a number, or one number per layer) else ``head_count``. ``kv_type_bytes`` is 2.0 for
    llama.cpp's default f16 cache (``-ctk``/``-ctv``), 1.0625 for q8_0, 0.5625 for q4_0.
    ``parallel`` (llama-server's ``-np``) does not multiply the cache: llama-server splits
    its ``-c`` context among the ``-np`` slots (each slot gets ``ctx / np`` tokens, or all
    slots share one ``ctx``-token cache with ``--kv-unified``), so the cache always holds
    ``ctx_size`` cells in total; ``parallel`` only shows up in ``how``. Sliding-window
    layers (Gemma, ...) and MLA (DeepSeek) keep smaller caches than this formula says;
    llama.cpp may also round ``ctx_size`` up to a multiple of 256. The estimate errs high.

``overhead``
    The compute buffers llama.cpp reserves for one micro-batch (``-ub``, 512 tokens by
    default) of f32 activations::

        max(64 MiB, 512 × 4 B × (n_vocab + n_head × ctx_size + 2 × (n_embd + n_ff)))

    ``n_vocab`` is for the logits of the batch, ``n_head × ctx_size`` for the attention
    scores of one layer (without flash attention, the worst case), ``2 × (n_embd + n_ff)``
    for the hidden state and the feed-forward intermediates (``n_ff`` is
    ``<arch>.feed_forward_length``, else ``4 × n_embd``). Compared with what llama.cpp's
    CUDA backend reports this is high (more so with flash attention), never low, and floors
    at 64 MiB for tiny models. It is reported even with ``n_gpu_layers=0``: a GPU build of
    llama.cpp keeps a compute buffer on the GPU to run big matrix products there.

``total = weights + kv_cache + overhead``. The CUDA context itself (per process, outside
llama.cpp's control) is not included.

Every problem with the file (missing, not a GGUF, truncated, corrupt, lacking the
metadata the formula needs) raises :class:`~localaistack.errors.PlanningError` naming the
file; no exception from the ``gguf`` package's internals escapes.
"""

from __future__ import annotations

import importlib
import math
import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localaistack.errors import PlanningError
from localaistack.units import format_size

__all__ = [
    "DEFAULT_UBATCH",
    "GGUF_MAGIC",
    "MIN_OVERHEAD",
    "VramEstimate",
    "estimate",
    "is_gguf",
]

MIB = 1 << 20
GGUF_MAGIC = b"GGUF"
DEFAULT_UBATCH = 512  # llama.cpp's default -ub (physical batch size)
MIN_OVERHEAD = 64 * MIB
_F32 = 4
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor_count, kv_count
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")
_KV_TYPE_NAMES = {4.0: "f32", 2.0: "f16", 1.0625: "q8_0", 0.5625: "q4_0", 0.625: "q5_0"}
_HINT_BAD_FILE = "Point at a complete .gguf model file (re-download it if it was cut short)."


@dataclass(frozen=True)
class VramEstimate:
    """The GPU memory a llama.cpp server needs for one model, in bytes, and why."""

    weights: int
    kv_cache: int
    overhead: int
    total: int
    layers: int
    offloaded_layers: int
    ctx_size: int
    architecture: str
    how: str


@dataclass(frozen=True)
class _Model:
    """What the estimate needs from a GGUF file, as plain Python values."""

    metadata: dict[str, Any]
    tensors: list[tuple[str, int]]  # (name, n_bytes)
    n_vocab: int | None


def is_gguf(path: str | Path) -> bool:
    """Whether ``path`` is a readable file starting with the 4-byte magic ``GGUF``."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def estimate(
    path: str | Path,
    *,
    ctx_size: int | None = None,
    parallel: int = 1,
    n_gpu_layers: int | None = None,
    kv_type_bytes: float = 2.0,
) -> VramEstimate:
    """Estimate the VRAM llama-server needs to serve the GGUF model at ``path``.

    Args:
        path: the ``.gguf`` file.
        ctx_size: the total context (llama-server ``-c``); default the model's trained
            context, ``<arch>.context_length``.
        parallel: llama-server's ``-np``; the slots share ``ctx_size``, so it does not
            change the numbers (see the module docstring), only the explanation.
        n_gpu_layers: layers offloaded (``-ngl``); ``None`` or anything at least the
            layer count means all of them, ``0`` none (weights and KV cache 0).
        kv_type_bytes: bytes per cached K/V element: 2.0 for f16 (default), 1.0625 q8_0.

    Raises:
        PlanningError: the file is missing, not a GGUF file, truncated or corrupt, lacks
            the metadata needed, or an argument is out of range.
    """
    if ctx_size is not None and ctx_size <= 0:
        raise PlanningError(f"invalid context size {ctx_size}: must be positive")
    if parallel < 1:
        raise PlanningError(f"invalid parallel slot count {parallel}: must be at least 1")
    if n_gpu_layers is not None and n_gpu_layers < 0:
        raise PlanningError(
            f"invalid n_gpu_layers {n_gpu_layers}: must be 0 or more",
            "Leave it unset to offload every layer.",
        )
    if not (kv_type_bytes > 0 and math.isfinite(kv_type_bytes)):
        raise PlanningError(f"invalid kv_type_bytes {kv_type_bytes}: must be positive")

    p = Path(path)
    model = _read(p)
    md = model.metadata

    arch = md.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise _missing(p, "general.architecture")
    layers = _int_key(p, md, f"{arch}.block_count")
    if ctx_size is None:
        ctx_size = _int_key(p, md, f"{arch}.context_length")
        if ctx_size <= 0:
            raise _bad(p, f"{arch}.context_length is {ctx_size}")
    n_embd = _int_key(p, md, f"{arch}.embedding_length")
    heads = _per_layer(p, md, f"{arch}.attention.head_count", layers)
    if heads is None:
        raise _missing(p, f"{arch}.attention.head_count")
    heads_kv = _per_layer(p, md, f"{arch}.attention.head_count_kv", layers) or heads
    key_len = _opt_int(p, md, f"{arch}.attention.key_length")
    value_len = _opt_int(p, md, f"{arch}.attention.value_length")
    n_ff_list = _per_layer(p, md, f"{arch}.feed_forward_length", layers)
    n_ff = max(n_ff_list) if n_ff_list else 4 * n_embd
    n_vocab = model.n_vocab or 0

    offloaded = layers if n_gpu_layers is None else min(n_gpu_layers, layers)
    all_on_gpu = offloaded == layers
    first_gpu_layer = layers - offloaded  # llama.cpp offloads the last layers

    # Weights.
    weights = 0
    for name, n_bytes in model.tensors:
        m = _LAYER_RE.match(name)
        if all_on_gpu or (m is not None and first_gpu_layer <= int(m.group(1)) < layers):
            weights += n_bytes

    # KV cache, layer by layer (head counts may differ per layer).
    kv_elems = 0  # K and V elements per context cell, summed over offloaded layers
    dims_seen: set[tuple[int, int]] = set()
    for i in range(first_gpu_layer, layers):
        head_dim = n_embd // heads[i] if heads[i] > 0 else 0  # 0: attention-free layer
        k_dim = key_len if key_len is not None else head_dim
        v_dim = value_len if value_len is not None else head_dim
        dims_seen.add((k_dim, v_dim))
        kv_elems += heads_kv[i] * (k_dim + v_dim)
    kv_cache = math.ceil(ctx_size * kv_elems * kv_type_bytes)

    max_heads = max(heads) if heads else 0
    compute = DEFAULT_UBATCH * _F32 * (n_vocab + max_heads * ctx_size + 2 * (n_embd + n_ff))
    overhead = max(MIN_OVERHEAD, compute)
    total = weights + kv_cache + overhead

    how = (
        f"weights {format_size(weights)} ({offloaded}/{layers} layers on GPU)"
        f" + KV cache {format_size(kv_cache)} ("
        + _kv_terms(offloaded, ctx_size, heads_kv[first_gpu_layer:], dims_seen, kv_type_bytes)
        + (f", shared by {parallel} slots of {ctx_size // parallel}" if parallel > 1 else "")
        + f") + compute {format_size(overhead)} ("
        + _overhead_terms(compute, n_vocab, max_heads, ctx_size, n_embd, n_ff)
        + f") = {format_size(total)}"
    )
    return VramEstimate(
        weights=weights,
        kv_cache=kv_cache,
        overhead=overhead,
        total=total,
        layers=layers,
        offloaded_layers=offloaded,
        ctx_size=ctx_size,
        architecture=arch,
        how=how,
    )


# --------------------------------------------------------------------------- reading


def _read(path: Path) -> _Model:
    """Read what the estimate needs; every failure becomes a PlanningError naming ``path``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise PlanningError(
            f"GGUF model file not found: {path}", "Check the model path (download it first?)."
        ) from None
    except OSError as exc:
        raise PlanningError(f"cannot read GGUF model file {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise PlanningError(f"GGUF model path {path} is not a regular file", _HINT_BAD_FILE)
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER.size)
    except OSError as exc:
        raise PlanningError(f"cannot read GGUF model file {path}: {exc.strerror or exc}") from None
    if head[:4] != GGUF_MAGIC:
        raise PlanningError(
            f"{path} is not a GGUF file: invalid magic {head[:4]!r} (expected {GGUF_MAGIC!r})",
            "Give a .gguf model file (llama.cpp format), not a safetensors/bin checkpoint.",
        )
    if len(head) < _HEADER.size:
        raise _bad(path, f"truncated: only {size} bytes, shorter than a GGUF header")
    _magic, version, n_tensors, n_kv = _HEADER.unpack(head)
    if version not in (2, 3):
        raise _bad(path, f"unsupported GGUF version {version} (las reads versions 2 and 3)")
    # Each tensor info and each key/value takes well over one byte: counts beyond the file
    # size mean a corrupt header (and would make the reader loop for a very long time).
    if n_tensors > size or n_kv > size:
        raise _bad(path, f"corrupt header ({n_tensors} tensors, {n_kv} metadata keys)")

    try:
        gguf: Any = importlib.import_module("gguf")
    except ImportError:
        raise PlanningError(
            "the 'gguf' Python package is needed to read GGUF files",
            "Install it: pip install 'gguf>=0.10'.",
        ) from None

    try:
        with warnings.catch_warnings():
            # numpy overflow/cast warnings only arise from garbage values: make them errors.
            warnings.simplefilter("error", RuntimeWarning)
            reader = gguf.GGUFReader(str(path), "r")
            metadata: dict[str, Any] = {}
            n_vocab: int | None = None
            for key, field in reader.fields.items():
                if key == "tokenizer.ggml.tokens":
                    n_vocab = len(field.data)  # no need to decode every token
                elif not key.startswith("tokenizer."):
                    metadata[key] = _field_value(gguf, field)
            tensors = [(str(t.name), int(t.n_bytes)) for t in reader.tensors]
            ends = [(int(t.data_offset) + int(t.n_bytes), str(t.name)) for t in reader.tensors]
            if n_vocab is None:
                n_vocab = _vocab_from_tensors(reader.tensors)
            del reader
    except Exception as exc:  # the gguf package raises ValueError, IndexError, KeyError...
        raise _bad(path, _describe(exc)) from None
    # gguf's reader views every tensor's data and fails on a short file by itself; this
    # check keeps the message right should a reader version map tensor data lazily.
    if ends:
        end, name = max(ends)
        if end > size:
            raise _bad(
                path, f"truncated: tensor {name} ends at byte {end} but the file has {size} bytes"
            )
    arch = metadata.get("general.architecture")
    if isinstance(arch, str):
        vocab_key = metadata.get(f"{arch}.vocab_size")
        if isinstance(vocab_key, int) and vocab_key > 0:
            n_vocab = vocab_key
    return _Model(metadata=metadata, tensors=tensors, n_vocab=n_vocab)


def _field_value(gguf: Any, field: Any) -> Any:
    """A metadata field as a str, int, float, bool or list of those (nested arrays: None)."""
    types = list(field.types)
    if not types:
        return None
    vt = gguf.GGUFValueType
    main = types[0]
    if main == vt.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    if main == vt.ARRAY:
        sub = types[-1] if len(types) > 1 else None
        if sub is None:
            return []
        if sub == vt.ARRAY:
            return None
        if sub == vt.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [v for i in field.data for v in field.parts[i].tolist()]
    return field.parts[field.data[0]].tolist()[0]


def _vocab_from_tensors(tensors: Sequence[Any]) -> int | None:
    """The vocabulary size from token_embd/output's second dimension (GGML order)."""
    for t in tensors:
        if t.name in ("token_embd.weight", "output.weight") and len(t.shape) >= 2:
            return int(t.shape[1])
    return None


def _describe(exc: BaseException) -> str:
    """What a failure inside the gguf reader means, for a file whose header looked right.

    The reader fails with numpy's IndexError/ValueError when the data stops early (a cut
    download) or is garbage; it cannot tell which, so neither does the message.
    """
    text = str(exc).strip() or "unexpected end of data"
    return f"truncated or corrupt (the GGUF reader stopped with {type(exc).__name__}: {text})"


# --------------------------------------------------------------------------- metadata


def _bad(path: Path, what: str) -> PlanningError:
    return PlanningError(f"cannot read GGUF model file {path}: {what}", _HINT_BAD_FILE)


def _missing(path: Path, key: str) -> PlanningError:
    return PlanningError(
        f"GGUF model file {path} lacks the metadata key {key}; cannot estimate its VRAM",
        "Use a GGUF produced by a recent llama.cpp convert script, or give the size by hand.",
    )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _opt_int(path: Path, md: dict[str, Any], key: str) -> int | None:
    if key not in md:
        return None
    value = _as_int(md[key])
    if value is None or value < 0:
        raise _bad(path, f"{key} is {md[key]!r}, not a count")
    return value


def _int_key(path: Path, md: dict[str, Any], key: str) -> int:
    value = _opt_int(path, md, key)
    if value is None:
        raise _missing(path, key)
    return value


def _per_layer(path: Path, md: dict[str, Any], key: str, layers: int) -> list[int] | None:
    """A count given once for all layers or once per layer, as a list of ``layers`` ints."""
    if key not in md:
        return None
    value = md[key]
    if isinstance(value, list):
        items = [_as_int(v) for v in value]
        if len(items) != layers or any(v is None or v < 0 for v in items):
            raise _bad(path, f"{key} has {len(items)} entries for {layers} layers")
        return [v for v in items if v is not None]
    one = _as_int(value)
    if one is None or one < 0:
        raise _bad(path, f"{key} is {value!r}, not a count")
    return [one] * layers


# --------------------------------------------------------------------------- explanation


def _kv_terms(
    offloaded: int,
    ctx: int,
    heads_kv: Sequence[int],
    dims: set[tuple[int, int]],
    kv_type_bytes: float,
) -> str:
    if offloaded == 0:
        return "no layers on GPU"
    lo, hi = min(heads_kv), max(heads_kv)
    heads = f"{lo} kv heads" if lo == hi else f"{lo}-{hi} kv heads per layer"
    kv_type = _KV_TYPE_NAMES.get(kv_type_bytes, f"{kv_type_bytes:g} bytes")
    if len(dims) == 1 and next(iter(dims))[0] == next(iter(dims))[1]:
        (k_dim, _v), *_ = dims
        return f"2 x {offloaded} layers x {ctx} ctx x {heads} x {k_dim} dims x {kv_type}"
    k = "/".join(str(d) for d in sorted({k for k, _ in dims}))
    v = "/".join(str(d) for d in sorted({v for _, v in dims}))
    return f"{offloaded} layers x {ctx} ctx x {heads} x ({k} K + {v} V dims) x {kv_type}"


def _overhead_terms(
    compute: int, n_vocab: int, n_head: int, ctx: int, n_embd: int, n_ff: int
) -> str:
    formula = (
        f"ubatch {DEFAULT_UBATCH} x f32 x (vocab {n_vocab} + {n_head} heads x {ctx} ctx"
        f" + 2 x ({n_embd} embd + {n_ff} ff))"
    )
    if compute < MIN_OVERHEAD:
        return f"floor {format_size(MIN_OVERHEAD)}, more than {formula}"
    return formula
