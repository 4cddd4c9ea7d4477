"""The GPU memory budget in the registry (server/registry.py with server/gpu_memory.py and
server/residency.py) on a real store with a fake loader: which models are unloaded to fit the budget, the
KV pool a paged model is told to make, and what /api/ps reports as `size_vram`.

The engines are fakes (no GPU here): they say they run on the device the model was built for."""

from __future__ import annotations

import json
import os
import sys

import pytest

from ortserve.core.store import MANIFEST, ModelStore
from ortserve.server.gpu_memory import CUDA_OVERHEAD, KvLayout
from tests.unit.registry_fakes import FakeEngine, make, ps, use

MiB = 1024 * 1024
# a tiny paged model: 1 layer, 1 KV head of 8: 32 bytes per token, 8 KiB per 256-token block
GENAI = {
    "model": {
        "context_length": 1024,
        "decoder": {"num_hidden_layers": 1, "num_key_value_heads": 1, "head_size": 8},
    },
    "engine": {"dynamic_batching": {"block_size": 256, "gpu_utilization_factor": 0.6, "max_batch_size": 100}},
}
LAYOUT = KvLayout.from_genai(GENAI)
SESSION = LAYOUT.session_bytes(1024)  # 4 blocks: the least a paged model is given
WEIGHTS = 1000


class GpuLoads:
    """A loader that records the KV pool each load was given; engines run where their model was built for."""

    def __init__(self):
        self.kv: dict[str, int] = {}
        self.engines: list[FakeEngine] = []

    async def __call__(self, entry, *, num_ctx, device, kv_cache_bytes=0):
        self.kv[entry.name] = kv_cache_bytes
        engine = FakeEngine(entry.name)
        engine.device = entry.manifest.get("device", "cpu")
        self.engines.append(engine)
        return engine


@pytest.fixture
def store(tmp_path) -> ModelStore:
    store = ModelStore(tmp_path / "models")
    for name, device in (("a", "cuda"), ("b", "cuda"), ("c", "cuda"), ("small", "cpu")):
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True)
        manifest = {"task": "chat", "precision": "fp16", "device": device}
        (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        genai = GENAI if device == "cuda" else {"model": GENAI["model"]}
        (folder / "genai_config.json").write_text(json.dumps(genai), encoding="utf-8")
        (folder / "model.onnx.data").write_bytes(b"\0" * WEIGHTS)
    return store


def weights(store: ModelStore, name: str) -> int:
    return sum(p.stat().st_size for p in (store.models_dir / name).iterdir())


async def test_loading_past_the_gpu_budget_unloads_the_least_recently_used_gpu_model(store, clock):
    loads = GpuLoads()
    # room for two models on the GPU (each ~512 MiB of overhead), not three; the model count does not limit
    registry = make(store, loads, gpu_memory_budget=1100 * MiB, max_loaded_models=4)
    await use(registry, "a")
    clock.now += 1
    await use(registry, "small")  # on the CPU: takes no GPU memory
    clock.now += 1
    await use(registry, "b")
    assert sorted(registry.loaded()) == ["a", "b", "small"]
    clock.now += 1
    await use(registry, "c")
    # "small" is older than "b" but frees no GPU memory; "a" is the least recently used on the GPU
    assert sorted(registry.loaded()) == ["b", "c", "small"]
    assert [e.closed for e in loads.engines if e.name == "a"] == [True]


async def test_a_paged_model_gets_its_share_of_the_budget_as_its_kv_pool_and_ps_reports_it(store):
    loads = GpuLoads()
    registry = make(store, loads, gpu_memory_budget=2000 * MiB, max_loaded_models=2)
    await use(registry, "a")
    await use(registry, "small")
    share = (1000 * MiB - weights(store, "a") - CUDA_OVERHEAD) // LAYOUT.bytes_per_block * LAYOUT.bytes_per_block
    assert loads.kv["a"] == min(share, 100 * SESSION) == 100 * SESSION  # at most max_batch_size full contexts
    assert loads.kv["small"] == 0  # not paged, not on the GPU: nothing to size
    vram = {m["name"]: m["size_vram"] for m in ps(registry)}
    assert vram == {"a": weights(store, "a") + CUDA_OVERHEAD + 100 * SESSION, "small": 0}


async def test_a_small_budget_still_gives_a_paged_model_one_full_context(store):
    loads = GpuLoads()
    registry = make(store, loads, gpu_memory_budget=600 * MiB, max_loaded_models=3)  # 200 MiB each: < overhead
    await use(registry, "a")
    assert loads.kv["a"] == SESSION  # any request that fits the context can run
    assert ps(registry)[0]["size_vram"] == weights(store, "a") + CUDA_OVERHEAD + SESSION


async def test_no_budget_leaves_the_kv_pool_to_the_model_and_limits_nothing(store):
    loads = GpuLoads()
    registry = make(store, loads, gpu_memory_budget=0, max_loaded_models=4)
    for name in ("a", "b", "c"):
        await use(registry, name)
    assert sorted(registry.loaded()) == ["a", "b", "c"]
    assert loads.kv == {"a": 0, "b": 0, "c": 0}  # the builder's gpu_utilization_factor decides
    assert all(m["size_vram"] == weights(store, m["name"]) + CUDA_OVERHEAD for m in ps(registry))


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script stands in for nvidia-smi")
async def test_without_a_setting_the_budget_is_read_from_nvidia_smi(store, clock, monkeypatch, tmp_path):
    """A stand-in `nvidia-smi` first on PATH (a real process) reports a GPU of 1200 MiB with 1100 free: the
    budget is 90% of it, 1080 MiB, room for two models of ~512 MiB each."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho '1200, 1100'\n", encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    loads = GpuLoads()
    registry = make(store, loads, max_loaded_models=4)
    for name in ("a", "b", "c"):
        await use(registry, name)
        clock.now += 1
    assert sorted(registry.loaded()) == ["b", "c"]


async def test_without_nvidia_smi_there_is_no_budget(store, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to ask
    loads = GpuLoads()
    registry = make(store, loads, max_loaded_models=4)
    for name in ("a", "b", "c"):
        await use(registry, name)
    assert sorted(registry.loaded()) == ["a", "b", "c"] and loads.kv == {"a": 0, "b": 0, "c": 0}
