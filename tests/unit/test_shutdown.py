"""Graceful shutdown (issue #13, item 4) through the app: after the trigger new requests are 503s, and what
still runs when the grace ends gets an error event and [DONE] (streams) or a 503 JSON (plain requests).
The same with a real server, SIGTERM and 16 streams is in tests/e2e/test_shutdown_e2e.py."""

from __future__ import annotations

import asyncio
import json

from ortserve.core.store import ModelStore
from ortserve.server.app import create_app
from ortserve.server.routes import EXTENSION
from ortserve.server.shutdown import Drain
from tests.unit.fake_app import CHAT, add_model, assert_error, chat_body, sse_data


async def test_the_grace_ends_streams_with_an_error_event_then_done(settings, backend):
    store = ModelStore(settings.models_dir)
    add_model(store, "tiny")
    gate = asyncio.Event()
    backend.options = {"gate": gate}
    app = create_app(settings, store, loader=backend.load)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        stream = asyncio.ensure_future(client.post(CHAT, json=chat_body(model="tiny", stream=True)))
        plain = asyncio.ensure_future(client.post(CHAT, json=chat_body(model="tiny")))
        while len(backend.generators) < 1 or len(backend.generators[0].requests) < 2:
            await asyncio.sleep(0.01)
        fired = asyncio.Event()
        drain = Drain(app.extensions[EXTENSION], grace=0.05, trigger=fired.wait)
        fired.set()
        await drain()  # returns at once: Hypercorn would stop accepting now
        refused = await client.post(CHAT, json=chat_body(model="tiny"))
        assert refused.status_code == 503
        assert_error(await refused.get_json(), type="server_error", code="server_shutting_down")
        events = sse_data(await (await stream).get_data(as_text=True))
        assert events[-1] == "[DONE]"
        assert_error(json.loads(events[-2]), type="server_error", code="server_shutting_down")
        response = await plain
        assert response.status_code == 503
        assert_error(await response.get_json(), type="server_error", code="server_shutting_down")
