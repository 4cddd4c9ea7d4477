"""Generation backends. The HTTP layer needs one call: `load_generator`.

Importing this package is cheap; onnxruntime-genai is only imported by the runner
process that serves a model (see runner_main.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ortserve.core.store import ModelEntry
    from ortserve.server.engine.generation import TextGenerator

DEFAULT_PARALLEL = 4
DEFAULT_PREFILL_CHUNK = 128  # ~97% of 256's prefill speed; other requests wait half as long per step
DEFAULT_PROMPT_CACHE_BYTES = 1 << 30  # KV of finished requests kept per chat model for prompt reuse


def default_cache_bytes(memory_limit: int) -> int:
    """The prompt cache's default budget: 1 GiB, at most a quarter of the runner's memory ceiling (the kept
    KV must leave room for the requests generating, so the watchdog never stops a runner for its cache)."""
    return min(DEFAULT_PROMPT_CACHE_BYTES, memory_limit // 4) if memory_limit else DEFAULT_PROMPT_CACHE_BYTES


async def load_generator(
    entry: ModelEntry,
    *,
    num_ctx: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    parallel: int | None = None,
    prefill_chunk: int | None = None,
    memory_limit: int | None = None,
    prompt_cache_bytes: int | None = None,
    batched: bool = True,
    kv_cache_bytes: int = 0,
) -> TextGenerator:
    """Start a runner process for `entry` and return once its model is loaded (the event loop keeps running).

    num_ctx: context served (capped at the model's); device: "auto" or one of ortserve.server.engine.devices.DEVICES;
    threads: intra-op threads (None: the physical cores); parallel: requests generating at once (None: 4);
    prefill_chunk: prompt tokens per scheduler step (None: 128); memory_limit: the runner's resident memory
    ceiling in bytes (None: twice the weights plus 2 GiB, see memory_watchdog.py; 0: none); prompt_cache_bytes:
    KV of finished requests kept for a later prompt sharing their prefix (None: default_cache_bytes; 0: none);
    batched: on a CPU, decode every request's next token in one call (False: one og.Generator per request);
    kv_cache_bytes: a paged model's KV pool on the GPU (the registry's share of gpu_memory_budget; 0: the
    builder's gpu_utilization_factor of the free memory).
    Nothing here reads the environment: the server passes its settings.
    Raises BackendError if the model cannot be loaded, NotSupportedError for a device not available here.
    """
    import asyncio

    from ortserve.core.store import weights_size
    from ortserve.server.engine import devices, ipc
    from ortserve.server.engine.memory_watchdog import default_limit
    from ortserve.server.engine.runner_client import RunnerGenerator

    # "auto" chosen (the device the model was built for, if here), or a 501 saying what is missing; off the
    # event loop, since it may read package metadata and run `nvidia-smi`
    resolved = await asyncio.to_thread(devices.resolve_device, device, built_for=entry.manifest.get("device"))
    if memory_limit is None:
        memory_limit = default_limit(await asyncio.to_thread(weights_size, entry.folder))
    options = ipc.RunnerOptions(
        num_ctx=num_ctx,
        device=resolved,
        threads=threads or devices.physical_cores(),
        parallel=parallel or DEFAULT_PARALLEL,
        prefill_chunk=prefill_chunk or DEFAULT_PREFILL_CHUNK,
        memory_limit=memory_limit,
        prompt_cache_bytes=default_cache_bytes(memory_limit) if prompt_cache_bytes is None else prompt_cache_bytes,
        batched=batched,
        kv_cache_bytes=kv_cache_bytes,
    )
    generator = RunnerGenerator(entry, options)
    await generator.start()
    return generator
