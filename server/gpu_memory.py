"""How much GPU memory a loaded model takes, and how much KV cache a paged model is given: pure arithmetic
on numbers read elsewhere (the registry reads the files and the GPU; server/residency.py evicts by it).

A model on the GPU takes (an estimate, stated as such in /api/ps):
- its weights: the bytes of its files on disk (fp16 and int4 weights are loaded as they are stored);
- `CUDA_OVERHEAD` for the process's CUDA context, cuBLAS workspaces and onnxruntime's arena;
- its KV cache. A paged model (og.Engine) allocates one pool of blocks when its Engine is made, and the
  server sizes that pool (`paged_kv_bytes`, passed to the runner as `engine.dynamic_batching.num_blocks`);
  without that the builder's `gpu_utilization_factor` (0.6) takes 60% of whatever GPU memory is free at
  that moment, so the first model starves every later one. A non-paged CUDA model (og.Generator) holds a
  full-context KV buffer per request generating (`generator_kv_bytes`).

The budget (`gpu_memory_budget`, by default 90% of the GPU's memory, or less if other programs hold it) is
shared by up to
`max_loaded_models` models: each paged model's KV pool is its equal slice of the budget less its weights
and overhead, at least one full-context session (so any request that fits the context can run) and at
most `max_batch_size` of them (what the Engine could ever use). A model that needs more than its slice
still loads when the budget has room: the least recently used idle models are unloaded first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CUDA_OVERHEAD = 512 * 1024 * 1024  # per model on the GPU: CUDA context, cuBLAS workspaces, ORT arena (estimate)
BUDGET_SHARE = 0.9  # of the GPU's memory, when no budget is set: the rest for the driver and other programs


def default_budget(memory: tuple[int, int] | None) -> int:
    """The budget when none is set, from the GPU's (total, free) bytes before the first load: 90% of its
    memory, or what other programs leave free if that is less; 0 (no budget) when it is unknown."""
    if not memory or not memory[0]:
        return 0
    total, free = memory
    return min(int(total * BUDGET_SHARE), free)


@dataclass(frozen=True)
class KvLayout:
    """The KV cache's shape, from genai_config.json: bytes per token, and the paged pool's block shape."""

    layers: int
    kv_heads: int
    head_size: int
    item_size: int = 2  # fp16 / bf16: what CUDA builds (and paged attention) keep their KV cache in
    block_size: int = 0  # tokens per paged block; 0: not a paged model
    max_batch: int = 0  # the Engine's max_batch_size (paged models)

    @classmethod
    def from_genai(cls, genai: dict[str, Any]) -> KvLayout:
        decoder = genai.get("model", {}).get("decoder", {})
        dynamic = (genai.get("engine") or {}).get("dynamic_batching") or {}
        return cls(
            layers=int(decoder.get("num_hidden_layers", 0)),
            kv_heads=int(decoder.get("num_key_value_heads", decoder.get("num_attention_heads", 0))),
            head_size=int(decoder.get("head_size", 0)),
            block_size=int(dynamic.get("block_size", 0)) if dynamic else 0,
            max_batch=int(dynamic.get("max_batch_size", 100)) if dynamic else 0,
        )

    @property
    def paged(self) -> bool:
        return self.block_size > 0

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_size * self.item_size  # keys and values, every layer

    @property
    def bytes_per_block(self) -> int:
        """One block across every layer (og allocates each layer's pool with the same number of blocks)."""
        return self.bytes_per_token * self.block_size

    def session_bytes(self, context: int) -> int:
        """KV of one session of `context` tokens (whole blocks on a paged model)."""
        if self.paged:
            return -(-context // self.block_size) * self.bytes_per_block
        return context * self.bytes_per_token

    def num_blocks(self, kv_bytes: int) -> int:
        """Blocks per layer that `kv_bytes` holds (at least 1): what the Engine's `num_blocks` takes."""
        return max(1, kv_bytes // self.bytes_per_block)


def paged_kv_bytes(slice_bytes: int, weights: int, context: int, layout: KvLayout) -> int:
    """The KV pool of a paged model given `slice_bytes` of the budget: what is left after its weights and
    overhead, at least one `context`-token session, at most `max_batch` of them; whole blocks."""
    least = layout.session_bytes(context)
    most = least * max(1, layout.max_batch)
    left = slice_bytes - weights - CUDA_OVERHEAD
    share = min(most, max(least, left))
    return layout.num_blocks(share) * layout.bytes_per_block


def generator_kv_bytes(parallel: int, context: int, layout: KvLayout) -> int:
    """KV of a non-paged model on the GPU: a full-context buffer per request generating (og.Generator's
    past/present buffers are sized to max_length)."""
    return parallel * layout.session_bytes(context)


def budget_slice(budget: int, max_models: int) -> int:
    """Each model's equal part of the budget (the whole budget when the number of models is not limited)."""
    return budget // max_models if max_models else budget


@dataclass(frozen=True)
class Footprint:
    """What one model takes on the GPU: its total estimate, and the KV pool the runner is told to make (0:
    none set, the model's own sizing)."""

    vram: int
    kv_cache_bytes: int = 0


def footprint(weights: int, *, layout: KvLayout | None, context: int, parallel: int, slice_bytes: int) -> Footprint:
    """A model's GPU footprint: weights + overhead + KV (`layout` None: no KV cache, an embedding model).
    `slice_bytes` 0: no budget, so a paged model keeps its builder's sizing, not counted here."""
    if layout is None:
        return Footprint(weights + CUDA_OVERHEAD)
    if layout.paged:
        if not slice_bytes:
            return Footprint(weights + CUDA_OVERHEAD)
        kv = paged_kv_bytes(slice_bytes, weights, context, layout)
        return Footprint(weights + CUDA_OVERHEAD + kv, kv)
    return Footprint(weights + CUDA_OVERHEAD + generator_kv_bytes(parallel, context, layout))


def engine_overlay(genai: dict[str, Any], kv_cache_bytes: int) -> dict[str, Any] | None:
    """The og.Config overlay that makes a paged model's Engine allocate `kv_cache_bytes` of KV pool (as a
    block count: og's `gpu_utilization_factor` is a share of whatever is free when the Engine is made, which
    depends on the other models and programs on the GPU); None: keep the model's own sizing."""
    layout = KvLayout.from_genai(genai)
    if not kv_cache_bytes or not layout.paged or not layout.bytes_per_block:
        return None
    return {"engine": {"dynamic_batching": {"num_blocks": layout.num_blocks(kv_cache_bytes)}}}
