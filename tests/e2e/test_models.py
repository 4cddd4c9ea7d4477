"""/v1/models on a real server: names, aliases, and store changes seen while it runs."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import CHAT_MODELS
from tests.e2e.conftest import ALIASES, CHAT_MODEL, EMBEDDER, TERSE


def test_list_has_every_name_and_alias(client, server):
    models = client.models.list().data
    ids = [m.id for m in models]
    assert set(ids) == {*CHAT_MODELS, *ALIASES, TERSE, EMBEDDER}
    assert len(ids) == len(set(ids))
    for model in models:
        assert model.object == "model" and model.owned_by == "library" and isinstance(model.created, int)
    by_id = {m.id: m for m in models}
    assert by_id[ALIASES[0]].created == by_id[CHAT_MODEL].created == server.store.get(CHAT_MODEL).created


@pytest.mark.parametrize("name", [CHAT_MODEL, TERSE, *ALIASES])
def test_retrieve_names_with_colons_and_slashes(client, name):
    model = client.models.retrieve(name)
    assert (model.id, model.object) == (name, "model")


def test_retrieve_unknown(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("org/no-such:model")
    assert info.value.body["code"] == "model_not_found"


def test_store_changes_are_seen_without_a_restart(client, server):
    store = server.store
    store.copy(CHAT_MODEL, "e2e-added")
    try:
        assert "e2e-added" in [m.id for m in client.models.list().data]
        response = client.chat.completions.create(
            model="e2e-added", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert response.model == "e2e-added"
    finally:
        store.remove("e2e-added")
    assert "e2e-added" not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("e2e-added")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="e2e-added", messages=[{"role": "user", "content": "hi"}])
