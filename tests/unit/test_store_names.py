"""A name never leaves the store (core/store.py `path_of`): '.', '..', separators, drives and UNC forms name no
model, and a settings file's `weights` cannot point outside; through the store and through HTTP, with decoy
models (manifest.json) at the top of the models folder and just above it."""

from __future__ import annotations

import json

import pytest

from ortserve.core.store import MANIFEST, ModelStore, StoreError
from tests.unit.fake_app import CHAT, add_model, assert_error, chat_body

NOT_NAMES = [
    ".",
    "..",
    "...",
    "",
    "../x",
    "..\\x",
    "a/b",
    "a\\b",
    "C:",
    "c:",
    "\\\\server\\share",
    "//server/share",
    "x.",
    "x ",
    "/etc",
    "C:\\Windows",
    ".staging-x",
    "a\0b",
]


@pytest.fixture
def store(settings) -> ModelStore:
    store = ModelStore(settings.models_dir)
    add_model(store, "tiny")
    decoy = {"task": "chat", "name": "decoy"}
    (store.models_dir / MANIFEST).write_text(json.dumps(decoy), encoding="utf-8")  # the models folder itself
    (store.models_dir.parent / MANIFEST).write_text(json.dumps(decoy), encoding="utf-8")  # the folder above
    return store


@pytest.mark.parametrize("name", NOT_NAMES)
def test_what_could_point_outside_names_no_model(store, name):
    with pytest.raises(StoreError):
        store.path_of(name)
    with pytest.raises(StoreError, match="not in the store"):
        store.get(name)
    assert not store.exists(name)
    with pytest.raises(StoreError):
        store.remove(name)
    with pytest.raises(StoreError):
        store.copy(name, "stolen")
    with pytest.raises(StoreError):
        store.copy("tiny", name)
    assert store.names() == ["tiny"] and (store.models_dir / MANIFEST).is_file()
    assert (store.models_dir.parent / MANIFEST).is_file()


def test_names_are_escaped_into_one_file_name_inside_the_store(store):
    assert store.path_of("llama3.2:1b") == store.models_dir / "llama3.2%3A1b"
    assert store.path_of("a%2F..b", ".toml") == store.models_dir / "a%252F..b.toml"
    assert store.path_of(".hidden").parent == store.models_dir


def test_weights_that_point_outside_break_only_that_model(store):
    (store.models_dir / "escaped.toml").write_text('weights = ".."\n', encoding="utf-8")  # written by hand
    assert store.names() == ["tiny"] and any("escaped.toml: weights '..'" in p for p in store.problems())
    store.remove("escaped")  # `rm` is how to be rid of it: only its own settings file goes
    assert not (store.models_dir / "escaped.toml").exists()
    assert (store.models_dir.parent / MANIFEST).is_file() and store.names() == ["tiny"]


@pytest.mark.parametrize("name", ["..", ".", "C:", "..\\tiny"])
async def test_http_requests_for_such_names_are_404s(client, name):
    response = await client.post(CHAT, json=chat_body(model=name))
    assert response.status_code == 404
    assert_error(await response.get_json(), type="invalid_request_error", param="model", code="model_not_found")
    assert (await client.post(CHAT, json=chat_body())).status_code == 200
