"""GET /openapi.json (issue #18): a valid OpenAPI 3.1 document, generated from the protocol models, that
names exactly the routes the app answers (so it cannot drift from them)."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from ortserve.core.store import ModelStore
from ortserve.server.app import create_app
from ortserve.server.openapi import OPERATIONS


@pytest.fixture
def store(settings) -> ModelStore:
    """An empty store (the document needs no model; the session's converted store would cost a minute)."""
    return ModelStore(settings.models_dir)


def routes(app) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)  # <path:model> -> {model}
        found |= {(method.lower(), path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return found


async def test_the_document_is_valid_and_names_every_route(settings, client):
    app = create_app(settings, ModelStore(settings.models_dir))
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = await response.get_json()
    validate(document)  # raises on an invalid document
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert documented == routes(app) == {(op.method, op.path) for op in OPERATIONS}
    chat = document["paths"]["/v1/chat/completions"]["post"]
    request = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert "messages" in document["components"]["schemas"][request]["properties"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]


async def test_the_document_needs_no_api_key(settings, store, backend):
    app = create_app(settings.model_copy(update={"api_key": "k"}), store, loader=backend.load)
    async with app.test_app() as test_app:
        assert (await test_app.test_client().get("/openapi.json")).status_code == 200
