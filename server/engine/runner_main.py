"""The runner process's entry point (`main`, the "spawn" target): load the model, pick its scheduler, serve.

One runner process per loaded chat model. Why a process: `og.Generator.append_tokens` holds the GIL for
the whole prefill, so inside the server process it would stall the event loop. Here it stalls nobody.
A paged-attention model is served by og.Engine (engine_scheduler.py); a model on the CPU by our batched
decoder (batched_scheduler.py); every other model by our own scheduler over one og.Generator per request
(generator_scheduler.py).

The server process imports this module for `main`, so it imports nothing heavy at import time; the
runner loads CUDA's libraries for a model on CUDA (`devices.load_libraries`), then imports onnxruntime-genai
(through the scheduler's module) in `main`.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from ortserve.server.engine import ipc


def main(folder: str, options: ipc.RunnerOptions, requests: Any, events: Any) -> None:
    """Entry point of the runner process."""
    # Ctrl-C reaches the whole process group; the server decides when runners stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ortserve.server.engine import devices

    try:  # CUDA's libraries from their wheels, before onnxruntime-genai is imported (Windows looks them up then)
        devices.load_libraries(options.device, "generation")
    except Exception as exc:  # the library, its package and the command, as the load error
        events.send((ipc.FAILED, f"{type(exc).__name__}: {exc}"))
        return
    from ortserve.server.engine import engine_scheduler

    if engine_scheduler.uses_engine(Path(folder)):
        load, scheduler = engine_scheduler.load, engine_scheduler.EngineScheduler
    else:
        from ortserve.server.engine import batched_scheduler, generator_scheduler

        if batched_scheduler.batched_unavailable(Path(folder), options) is None:
            load, scheduler = batched_scheduler.load, batched_scheduler.BatchedScheduler  # type: ignore[assignment]
        else:
            load, scheduler = generator_scheduler.load, generator_scheduler.GeneratorScheduler  # type: ignore[assignment]
    try:
        model, info = load(Path(folder), options)
    except Exception as exc:  # a broken model must not look like a crash: say why
        events.send((ipc.FAILED, f"{type(exc).__name__}: {exc}"))
        return
    events.send((ipc.READY, info))
    scheduler(model, options, requests, events).serve()
