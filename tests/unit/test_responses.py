"""/v1/responses over the fake engine (tests/unit/fake_app.py): the request's mapping onto the chat pipeline,
errors naming the Responses field, the named stream events, and the stored responses' SQLite file (bounded,
expiring, read again by a new store as after a restart)."""

from __future__ import annotations

import json
import math

import pytest

from ortserve.core.store import ModelStore
from ortserve.server.responses_store import ResponseStore
from tests.unit.fake_app import add_model, assert_error

URL = "/v1/responses"


@pytest.fixture
def store(settings) -> ModelStore:
    store = ModelStore(settings.models_dir)
    add_model(store, "tiny")
    return store


def events_of(raw: str) -> list[dict]:
    """The named SSE events of a Responses stream: `event: TYPE` and `data: {...}` whose type is TYPE."""
    out = []
    for block in (b for b in raw.split("\n\n") if b):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        event = json.loads(data[len("data: ") :])
        assert event["type"] == name[len("event: ") :]
        out.append(event)
    return out


async def test_a_string_input_answers_one_message_and_is_stored(client, backend):
    response = await client.post(URL, json={"model": "tiny", "input": "hello there", "instructions": "Be brief."})
    assert response.status_code == 200
    body = await response.get_json()
    assert body["id"].startswith("resp_") and body["object"] == "response" and body["status"] == "completed"
    [message] = body["output"]
    assert message["type"] == "message" and message["content"][0] == {
        "type": "output_text",
        "text": "Hello!",
        "annotations": [],
        "logprobs": [],
    }
    usage = body["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] == 3
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"] == {"cached_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    messages = backend.generators[0].requests[0].prompt.messages
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    assert await (await client.get(f"{URL}/{body['id']}")).get_json() == body


async def test_previous_response_id_continues_the_conversation_without_its_instructions(client, backend):
    first = await (await client.post(URL, json={"model": "tiny", "input": "one", "instructions": "Sys."})).get_json()
    follow = {"model": "tiny", "input": [{"role": "user", "content": "two"}], "previous_response_id": first["id"]}
    second = await client.post(URL, json=follow)
    assert second.status_code == 200
    assert backend.generators[0].requests[1].prompt.messages == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "two"},
    ]
    unknown = await client.post(URL, json={**follow, "previous_response_id": "resp_nope"})
    assert unknown.status_code == 404
    assert_error(
        await unknown.get_json(),
        type="invalid_request_error",
        param="previous_response_id",
        code="previous_response_not_found",
    )


async def test_get_and_delete_unknown_and_not_stored(client):
    for method in (client.get, client.delete):
        response = await method(f"{URL}/resp_unknown")
        assert response.status_code == 404
        assert_error(await response.get_json(), type="invalid_request_error", param="response_id", code="not_found")
    body = await (await client.post(URL, json={"model": "tiny", "input": "hi", "store": False})).get_json()
    assert body["store"] is False and (await client.get(f"{URL}/{body['id']}")).status_code == 404
    kept = await (await client.post(URL, json={"model": "tiny", "input": "hi"})).get_json()
    deleted = await client.delete(f"{URL}/{kept['id']}")
    assert await deleted.get_json() == {"id": kept["id"], "object": "response", "deleted": True}
    assert (await client.get(f"{URL}/{kept['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("fields", "param", "status"),
    [
        ({"temprature": 0.5}, "temprature", 400),  # unknown fields are named, never ignored
        ({"background": True}, "background", 400),
        ({"truncation": "auto"}, "truncation", 400),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type", 400),
        ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "array"}}]}, "tools.0.parameters", 400),
        ({"tool_choice": "required"}, "tool_choice", 400),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", 400),
        ({"max_output_tokens": 0}, "max_output_tokens", 400),
        ({"input": [{"type": "input_file"}]}, "input.0.type", 400),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input.0.content.0.type",
            400,
        ),
        (
            {"input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.content.0",
            400,
        ),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input.0.call_id", 400),
        ({"input": []}, "input", 400),
    ],
)
async def test_bad_requests_name_the_responses_field(client, fields, param, status):
    response = await client.post(URL, json={"model": "tiny", "input": "hi", **fields})
    assert response.status_code == status, await response.get_json()
    body = await response.get_json()
    assert body["error"]["param"] == param, body
    assert "'messages." not in body["error"]["message"] and "response_format" not in body["error"]["message"]


async def test_the_fake_engine_cannot_constrain_so_text_format_is_a_501_naming_it(client):
    text = {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}
    response = await client.post(URL, json={"model": "tiny", "input": "hi", "text": text})
    assert response.status_code == 501
    assert (await response.get_json())["error"]["param"] == "text.format"


async def test_a_stream_is_named_events_in_sequence_that_rebuild_the_response(client):
    response = await client.post(URL, json={"model": "tiny", "input": "hi", "stream": True})
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = events_of((await response.get_data()).decode())
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Hello!"
    assert final["output"] == [events[-2]["item"]] and final["output"][0]["status"] == "completed"
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []


async def test_a_reply_cut_by_max_output_tokens_is_incomplete(client):
    response = await client.post(URL, json={"model": "tiny", "input": "hi", "max_output_tokens": 2, "stream": True})
    events = events_of((await response.get_data()).decode())
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize("settings", [{"max_request_bytes": 4096}], indirect=True)
async def test_a_failure_inside_a_stream_is_an_error_event_then_response_failed(client, backend):
    backend.options = {"fail_at": 1}
    response = await client.post(URL, json={"model": "tiny", "input": "hi", "stream": True})
    events = events_of((await response.get_data()).decode())
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] is None and "crashed" in events[-2]["message"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    stored = await client.get(f"{URL}/{failed['id']}")
    assert (await stored.get_json())["status"] == "failed"


# ---- the SQLite file --------------------------------------------------------------------------------------
def response(n: int) -> dict:
    return {"id": f"resp_{n}", "object": "response", "output": [], "pad": "x" * 100}


async def test_stored_responses_survive_a_new_store_on_the_same_file(tmp_path):
    path = tmp_path / "home" / "responses.db"
    store = ResponseStore(path, ttl=math.inf, max_count=10, max_bytes=10**6)
    await store.put(response(1), [{"role": "user", "content": "hi"}])
    await store.close()
    again = ResponseStore(path, ttl=math.inf, max_count=10, max_bytes=10**6)
    stored = await again.get("resp_1")
    assert stored is not None and stored.response == response(1)
    assert stored.conversation == [{"role": "user", "content": "hi"}]
    assert await again.delete("resp_1") and await again.get("resp_1") is None and not await again.delete("resp_1")
    await again.close()


async def test_the_file_is_bounded_by_count_bytes_and_age(tmp_path):
    store = ResponseStore(tmp_path / "r.db", ttl=math.inf, max_count=3, max_bytes=10**6)
    for n in range(5):
        await store.put(response(n), [])
    assert [await store.get(f"resp_{n}") is not None for n in range(5)] == [False, False, True, True, True]
    await store.close()
    small = ResponseStore(tmp_path / "s.db", ttl=math.inf, max_count=100, max_bytes=400)
    for n in range(4):
        await small.put(response(n), [])
    assert [await small.get(f"resp_{n}") is not None for n in range(4)] == [False, False, True, True]
    await small.put({**response(9), "pad": "x" * 1000}, [])  # larger than the whole budget: not stored
    assert await small.get("resp_9") is None and await small.get("resp_3") is not None
    await small.close()
    expired = ResponseStore(tmp_path / "t.db", ttl=0, max_count=100, max_bytes=10**6)
    await expired.put(response(1), [])
    assert await expired.get("resp_1") is None
    await expired.close()
