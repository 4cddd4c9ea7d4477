"""Schemathesis over every route of /openapi.json against the real server (issue #18): bodies and
parameters generated from the document, a bounded number per route; no 5xx, and every answer conforms to
the document (its status, content type and schema). Requests the validation refuses beyond what a JSON
schema can say (a tool message without content) are fine: they get a documented 400."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
EXAMPLES = 15


@pytest.fixture(scope="module")
def operations(server):
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    return {f"{op.method.upper()} {op.path}": op for op in (result.ok() for result in schema.get_all_operations())}


def test_every_route_is_exercised(operations):
    assert {"POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings", "GET /v1/models"} <= set(
        operations
    )


# every route but those that change the store (copy, delete, create, pull): the session server is shared
ROUTES = [
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/embeddings",
    "POST /v1/responses",
    "GET /v1/responses/{response_id}",
    "DELETE /v1/responses/{response_id}",
    "GET /v1/models",
    "GET /v1/models/{model}",
    "GET /api/ps",
    "GET /health",
    "GET /metrics",
    "GET /",
    "GET /api/version",
    "POST /api/chat",
    "POST /api/generate",
    "POST /api/embed",
    "POST /api/embeddings",
    "GET /api/tags",
    "POST /api/show",
]


@pytest.mark.parametrize("name", ROUTES)
def test_generated_requests_get_documented_answers(server, operations, name):
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(operations[name].as_strategy())
    def run(case):
        response = case.call(base_url=server.base_url, timeout=60)
        case.validate_response(response, checks=CHECKS)

    run()
