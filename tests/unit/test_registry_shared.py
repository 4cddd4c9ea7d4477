"""Names that share weights share one loaded model (server/registry.py): `cp` copies, a `create` FROM the
same weights and aliases load once, count once against the limits, and each request still gets its own
name's settings; `rm` of one name or a name moved to other weights leaves the shared load to the others.

A real store and registry with the fake loader of tests/unit/registry_fakes.py; the last test goes through
the real app (tests/unit/fake_app.py) to check that serving applies each name's SYSTEM and defaults.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from ortserve.core.model_config import ModelConfig, SamplingDefaults
from ortserve.core.store import MANIFEST, ModelStore
from ortserve.server.app import create_app
from ortserve.server.errors import ModelNotFoundError
from tests.unit.fake_app import CHAT, USER
from tests.unit.registry_fakes import Loads, make, ps, settle, use

MADE_SYSTEM = "You are Mario."


@pytest.fixture
def store(tmp_path) -> ModelStore:
    """`base` and `other` with weights of their own; `copy` (`ortserve cp base copy`) and `made` (a `create`
    FROM base with a SYSTEM and defaults) on base's weights."""
    store = ModelStore(tmp_path / "models")
    for name, size in (("base", 1000), ("other", 2000)):
        folder = store.models_dir / name
        folder.mkdir(parents=True)
        (folder / MANIFEST).write_text(json.dumps({"task": "chat", "created": "2025-01-01"}), encoding="utf-8")
        (folder / "model.onnx.data").write_bytes(b"\0" * size)
    store.copy("base", "copy")
    store.write_config(
        "made", ModelConfig(weights="base", system=MADE_SYSTEM, defaults=SamplingDefaults(temperature=0, max_tokens=2))
    )
    return store


async def test_three_names_of_one_weights_load_once_and_count_once(store, clock):
    loads = Loads()
    registry = make(store, loads, max_loaded_models=2)
    for name in ("base", "copy", "made"):
        await use(registry, name)
        clock.now += 1
    assert len(loads.engines) == 1 and loads.calls == [("base", 4096, "auto")]
    await use(registry, "other")  # a second loaded model: within the limit of 2, nothing is unloaded
    assert len(loads.engines) == 2 and not any(engine.closed for engine in loads.engines)
    rows = {row["name"]: row for row in ps(registry)}
    assert set(rows) == {"made", "other"}  # each loaded model once, under the name last used
    assert rows["made"]["names"] == ["made", "copy", "base"] and rows["made"]["size"] > 1000
    assert sorted(registry.loaded()) == ["base", "copy", "made", "other"]


async def test_each_lease_carries_its_own_names_settings(store, clock):
    registry = make(store, Loads())
    base, made = await registry.acquire("base"), await registry.acquire("made")
    assert base.engine is made.engine
    assert (base.entry.name, base.entry.config.system) == ("base", None)
    assert (made.entry.name, made.entry.config.system) == ("made", MADE_SYSTEM)
    assert made.entry.config.defaults.max_tokens == 2
    assert ps(registry)[0]["requests"] == 2
    base.release()
    made.release()


async def test_the_last_requests_keep_alive_wins_whichever_name_it_used(store, clock):
    registry = make(store, Loads(), keep_alive="5m")
    await use(registry, "base", keep_alive=-1)
    assert ps(registry)[0]["expires_in"] is None
    await use(registry, "copy", keep_alive="8s")
    assert ps(registry)[0]["expires_in"] == 8
    clock.now += 9
    registry.unload_expired()
    await settle()
    assert registry.loaded() == []


async def test_rm_of_one_name_keeps_the_load_the_others_share(store, clock):
    loads = Loads()
    registry = make(store, loads, keep_alive="-1")
    await use(registry, "base")
    lease = await registry.acquire("copy")
    store.remove("copy")
    with pytest.raises(ModelNotFoundError):
        await registry.acquire("copy")
    lease.release()  # the idle check finds "copy" gone and "base" still there
    await asyncio.gather(*registry._checks)
    (engine,) = loads.engines
    assert not engine.closed and [row["names"] for row in ps(registry)] == [["base"]]
    await use(registry, "base")
    assert len(loads.engines) == 1
    # the last name using it removed: unloaded after its requests, though its keep_alive is forever
    store.remove("base")
    with pytest.raises(ModelNotFoundError):
        await registry.acquire("base")
    await settle()
    assert engine.closed and registry.loaded() == []


async def test_a_name_whose_settings_or_weights_change_gets_its_own_load(store, clock):
    loads = Loads()
    registry = make(store, loads)
    await use(registry, "base")
    await use(registry, "copy")
    store.write_config("copy", store.get("copy").config.model_copy(update={"num_ctx": 256}))
    await use(registry, "copy")  # another context served: a fresh load; base's stays
    assert loads.calls == [("base", 4096, "auto"), ("copy", 256, "auto")]
    assert sorted(row["names"] for row in ps(registry)) == [["base"], ["copy"]]
    assert not any(engine.closed for engine in loads.engines)
    await use(registry, "other")
    store.write_config("copy", store.get("copy").config.model_copy(update={"weights": "other", "num_ctx": None}))
    await use(registry, "copy")  # now on other's weights: other's load, and its own load (no other name) goes
    await settle()
    assert len(loads.engines) == 3 and loads.engines[1].closed and not loads.engines[0].closed
    assert sorted(row["names"] for row in ps(registry)) == [["base"], ["copy", "other"]]


async def test_an_alias_is_one_more_name_of_the_same_load(store, clock):
    store.write_config("base", ModelConfig(aliases=["org/base"]))
    loads = Loads()
    registry = make(store, loads)
    await use(registry, "org/base")
    await use(registry, "copy")
    assert len(loads.engines) == 1 and ps(registry)[0]["names"] == ["copy", "base"]


async def test_serving_applies_each_names_system_and_defaults_on_one_engine(store, backend):
    settings = make(store, Loads()).settings
    app = create_app(settings, store, loader=backend.load)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for model in ("base", "made", "copy"):
            response = await client.post(CHAT, json={"model": model, "messages": USER})
            assert response.status_code == 200 and (await response.get_json())["model"] == model
        assert len(backend.generators) == 1 and len(backend.loads) == 1
        base, made, copy = backend.generators[0].requests
        assert made.prompt.messages[0] == {"role": "system", "content": MADE_SYSTEM}
        assert made.params.max_tokens == 2 and made.params.temperature == 0
        for plain in (base, copy):
            assert plain.prompt.messages[0]["role"] == "user" and plain.params.max_tokens is None
        (row,) = (await (await client.get("/api/ps")).get_json())["models"]
        assert row["name"] == "copy" and row["names"] == ["copy", "made", "base"]
        assert set((await (await client.get("/health")).get_json())["devices"]) == {"base", "made", "copy"}


class CountingStore(ModelStore):
    """The real store, counting its reads (how many times a name was looked up on disk)."""

    reads = 0

    def get(self, name_or_alias: str):
        type(self).reads += 1
        return super().get(name_or_alias)


async def test_concurrent_lookups_of_one_name_share_one_read(store):
    counting = CountingStore(store.models_dir)
    registry = make(counting, Loads())
    CountingStore.reads = 0
    entries = await asyncio.gather(*(registry.resolve("base") for _ in range(200)))
    assert {e.name for e in entries} == {"base"} and CountingStore.reads < 20  # not one read per request
    await registry.resolve("base")
    assert CountingStore.reads >= 2  # a later lookup reads again: store changes are still seen
