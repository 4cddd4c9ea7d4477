"""Generation backends. The HTTP layer needs one call: `load_generator`.

Importing this package is cheap; onnxruntime-genai is only imported by the runner
process that serves a model (see runner.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ortserve.server.engine.base import TextGenerator
    from ortserve.core.store import ModelEntry


async def load_generator(
    entry: "ModelEntry",
    *,
    num_ctx: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    parallel: int | None = None,
    prefill_chunk: int | None = None,
) -> "TextGenerator":
    """Start a runner process for `entry` and return once its model is loaded (the event loop keeps running).

    num_ctx: context served (capped at the model's); device: "auto" or one of ortserve.server.engine.devices.DEVICES;
    threads: intra-op threads (default: physical cores, or $ORTSERVE_THREADS);
    parallel: requests generating at once (default 4, or $ORTSERVE_NUM_PARALLEL);
    prefill_chunk: prompt tokens per scheduler step (default 128, or $ORTSERVE_PREFILL_CHUNK).
    Raises BackendError if the model cannot be loaded, NotSupportedError for a device not available here.
    """
    import asyncio

    from ortserve.server.engine import devices
    from ortserve.server.engine.genai import GenaiGenerator

    # "auto" chosen (the device the model was built for, if here), or a 501 saying what is missing; off the
    # event loop, since it may read package metadata and run `nvidia-smi`
    resolved = await asyncio.to_thread(devices.resolve_device, device, built_for=entry.manifest.get("device"))
    generator = GenaiGenerator(
        entry, num_ctx=num_ctx, device=resolved, threads=threads, parallel=parallel, prefill_chunk=prefill_chunk
    )
    await generator.start()
    return generator
