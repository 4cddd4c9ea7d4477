"""GPU memory arithmetic (server/gpu_memory.py) on the shapes of real models: a model's footprint, a paged
model's KV pool within its share of the budget, and the og.Config overlay that sets that pool."""

from __future__ import annotations

import pytest

from ortserve.server.gpu_memory import (
    CUDA_OVERHEAD,
    KvLayout,
    budget_slice,
    default_budget,
    engine_overlay,
    footprint,
    generator_kv_bytes,
    paged_kv_bytes,
)

GiB = 1024**3
# what the onnxruntime-genai builder writes for Llama-3.2-1B built with --device cuda (paged attention)
LLAMA_1B_PAGED = {
    "model": {
        "context_length": 131072,
        "decoder": {"num_hidden_layers": 16, "num_key_value_heads": 8, "num_attention_heads": 32, "head_size": 64},
    },
    "engine": {"dynamic_batching": {"block_size": 256, "gpu_utilization_factor": 0.6, "max_batch_size": 100}},
}
LLAMA_1B = {"model": LLAMA_1B_PAGED["model"]}  # the same model without paged attention


def test_the_layout_reads_the_kv_shape_and_the_paged_pool_from_genai_config():
    paged, plain = KvLayout.from_genai(LLAMA_1B_PAGED), KvLayout.from_genai(LLAMA_1B)
    assert paged.bytes_per_token == 2 * 16 * 8 * 64 * 2 == 32 * 1024  # keys and values, 16 layers, fp16
    assert paged.paged and paged.block_size == 256 and paged.max_batch == 100
    assert paged.bytes_per_block == 256 * 32 * 1024  # one block of every layer: 8 MiB
    assert not plain.paged and plain.bytes_per_token == paged.bytes_per_token
    assert paged.session_bytes(4000) == 16 * paged.bytes_per_block  # whole blocks: 4000 tokens take 16
    assert plain.session_bytes(4000) == 4000 * 32 * 1024
    grouped = KvLayout.from_genai(
        {"model": {"decoder": {"num_hidden_layers": 2, "num_attention_heads": 4, "head_size": 8}}}
    )
    assert grouped.bytes_per_token == 2 * 2 * 4 * 8 * 2  # no num_key_value_heads: every head keeps K and V


def test_a_paged_model_gets_its_slice_less_its_weights_within_one_and_max_batch_sessions():
    layout = KvLayout.from_genai(LLAMA_1B_PAGED)
    session = layout.session_bytes(4096)  # 128 MiB
    weights = 2 * GiB
    assert paged_kv_bytes(10 * GiB, weights, 4096, layout) == 10 * GiB - weights - CUDA_OVERHEAD  # whole blocks
    assert paged_kv_bytes(1 * GiB, weights, 4096, layout) == session  # no room left: still one full context
    assert paged_kv_bytes(1000 * GiB, weights, 4096, layout) == 100 * session  # never more than it could use
    share = paged_kv_bytes(7 * GiB + 5, weights, 4096, layout)
    assert share % layout.bytes_per_block == 0 and share <= 7 * GiB + 5 - weights - CUDA_OVERHEAD


def test_a_footprint_is_weights_overhead_and_kv():
    paged, plain = KvLayout.from_genai(LLAMA_1B_PAGED), KvLayout.from_genai(LLAMA_1B)
    weights = 2 * GiB
    on_paged = footprint(weights, layout=paged, context=4096, parallel=4, slice_bytes=10 * GiB)
    assert on_paged.kv_cache_bytes == paged_kv_bytes(10 * GiB, weights, 4096, paged)
    assert on_paged.vram == weights + CUDA_OVERHEAD + on_paged.kv_cache_bytes == 10 * GiB  # exactly its slice
    # no budget: the Engine keeps the builder's sizing (a share of whatever is free), which nothing here knows
    assert footprint(weights, layout=paged, context=4096, parallel=4, slice_bytes=0).kv_cache_bytes == 0
    generator = footprint(weights, layout=plain, context=4096, parallel=4, slice_bytes=10 * GiB)
    assert generator.kv_cache_bytes == 0  # og.Generator sizes its own buffers: a full context per request
    assert (
        generator.vram
        == weights + CUDA_OVERHEAD + generator_kv_bytes(4, 4096, plain)
        == weights + CUDA_OVERHEAD + GiB // 2
    )
    assert footprint(weights, layout=None, context=0, parallel=4, slice_bytes=10 * GiB).vram == weights + CUDA_OVERHEAD


def test_the_budget_is_shared_equally_by_the_models_the_server_keeps():
    assert default_budget((80 * GiB, 79 * GiB)) == int(72 * GiB)  # 90% of the GPU
    assert default_budget((80 * GiB, 20 * GiB)) == 20 * GiB  # or what other programs leave free
    assert default_budget(None) == 0 and default_budget((0, 0)) == 0  # unknown: no budget
    assert budget_slice(72 * GiB, 3) == 24 * GiB
    assert budget_slice(72 * GiB, 0) == 72 * GiB  # no limit on models: one may take it all


@pytest.mark.parametrize("kv", [0, 8 * 1024 * 1024 * 100])
def test_the_overlay_sets_the_engine_block_count_of_a_paged_model_only(kv):
    overlay = engine_overlay(LLAMA_1B_PAGED, kv)
    if not kv:
        assert overlay is None  # the model's own sizing
    else:
        assert overlay == {"engine": {"dynamic_batching": {"num_blocks": 100}}}  # 8 MiB per block of every layer
    assert engine_overlay(LLAMA_1B, 10 * GiB) is None  # not paged: og.Generator sizes its own cache


def test_a_request_may_use_the_served_context_or_less_when_the_engine_takes_no_longer_ones():
    """og.EngineCapabilities.max_request_length (a stand-in: the paged Engine runs only on a GPU) caps the
    context a request may use, so a session never asks for more than the KV pool holds; 0 sets no bound (the
    CPU's static Engine answers 0, seen here)."""
    from types import SimpleNamespace

    from ortserve.server.engine.engine_scheduler import session_context

    assert session_context(4096, SimpleNamespace(max_request_length=0)) == 4096
    assert session_context(4096, SimpleNamespace(max_request_length=1536)) == 1536
    assert session_context(4096, SimpleNamespace(max_request_length=131072)) == 4096
    assert session_context(4096, SimpleNamespace()) == 4096  # an og without the field
