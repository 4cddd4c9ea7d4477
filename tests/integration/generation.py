"""Running one generation to its end, for the integration tests of the runner (text and images)."""

from __future__ import annotations

import asyncio

from ortserve.server.engine.generation import Finished, Started, TextDelta

HANG = 60  # seconds: only to turn a hang into a failure


async def run(gen, request) -> tuple[Started, list[TextDelta], Finished]:
    """Started, the TextDeltas and Finished of one request (the stream must have exactly that shape)."""

    async def go():
        events = [event async for event in gen.generate(request)]
        assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
        assert all(isinstance(e, TextDelta) for e in events[1:-1])
        return events[0], events[1:-1], events[-1]

    return await asyncio.wait_for(go(), HANG)


def ids_of(deltas) -> list[int]:
    return [t for d in deltas for t in d.token_ids]
