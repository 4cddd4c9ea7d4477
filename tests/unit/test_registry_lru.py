"""The registry's keep-alive and limits (server/registry.py, deciding with server/residency.py) on a real
store with fake loaders (tests/unit/registry_fakes.py).

The engines are fakes (loading real models is tests/e2e's work): these tests check which model is
loaded, kept or unloaded when, with time read from `time.monotonic` (the `clock` fixture patches it).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from ortserve.core.model_config import ModelConfig
from ortserve.core.store import MANIFEST, ModelStore
from ortserve.server import registry as registry_module
from ortserve.server.errors import APIError, InvalidRequestError, ModelNotFoundError, OverloadedError
from ortserve.server.registry import Registry
from ortserve.server.settings import ServerSettings
from tests.unit.registry_fakes import FakeEngine, Loads, make, ps, settle, slow_closing_loader, use, wait_for


@pytest.fixture
def store(tmp_path) -> ModelStore:
    store = ModelStore(tmp_path / "models")
    for name, size in (("a", 1000), ("b", 2000), ("c", 3000)):
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True)
        (folder / MANIFEST).write_text(json.dumps({"task": "chat", "precision": "int4"}), encoding="utf-8")
        (folder / "model.onnx.data").write_bytes(b"\0" * size)
    return store


async def test_idle_model_stays_for_its_keep_alive_then_unloads(store, clock):
    loads = Loads()
    registry = make(store, loads, keep_alive="5m")
    await use(registry, "a")
    clock.now += 299
    assert registry.unload_expired() == pytest.approx(1)
    assert registry.loaded() == ["a"]
    clock.now += 2
    assert registry.unload_expired() is None
    await settle()
    assert registry.loaded() == [] and loads.of("a")[0].closed
    await use(registry, "a")  # loaded again on the next request
    assert len(loads.of("a")) == 2 and registry.loaded() == ["a"]


async def test_request_keep_alive_wins_over_config_and_server(store, clock):
    loads = Loads()
    store.write_config("b", ModelConfig(keep_alive="10s"))
    registry = make(store, loads, keep_alive="5m")
    await use(registry, "a")
    await use(registry, "b")
    assert {m["name"]: m["expires_in"] for m in ps(registry)} == {"a": 300, "b": 10}
    await use(registry, "b", keep_alive="1h")
    assert {m["name"]: m["expires_in"] for m in ps(registry)}["b"] == 3600
    await use(registry, "b", keep_alive=-1)
    assert {m["name"]: m["expires_in"] for m in ps(registry)}["b"] is None  # forever
    clock.now += 10**6
    registry.unload_expired()
    await settle()
    assert registry.loaded() == ["b"]


async def test_keep_alive_zero_unloads_right_after_the_request(store, clock):
    loads = Loads()
    registry = make(store, loads)
    lease = await registry.acquire("a", keep_alive=0)
    assert registry.loaded() == ["a"]  # in use: never unloaded under a request
    lease.release()
    await settle()
    assert registry.loaded() == [] and loads.of("a")[0].closed


async def test_bad_keep_alive(store, clock):
    registry = make(store, Loads())
    with pytest.raises(InvalidRequestError) as caught:
        await registry.acquire("a", keep_alive="soon")
    assert caught.value.param == "keep_alive"
    with pytest.raises(ValueError):
        make(store, Loads(), keep_alive="whenever")
    # a bad value in a model's file: the file is refused when read (a problem listed), never half-used
    (store.models_dir / "a.toml").write_text('keep_alive = "whenever"\n', encoding="utf-8")
    assert any("keep_alive" in problem for problem in store.problems())
    with pytest.raises(APIError) as broken:  # a 500 naming the file and the field, not a 404
        await registry.acquire("a")
    assert broken.value.status == 500 and "a.toml" in broken.value.message and "keep_alive" in broken.value.message


async def test_a_model_in_use_never_expires(store, clock):
    loads = Loads()
    registry = make(store, loads, keep_alive="1s")
    lease = await registry.acquire("a")
    clock.now += 3600
    registry.unload_expired()
    await settle()
    assert registry.loaded() == ["a"] and not loads.of("a")[0].closed
    lease.release()
    clock.now += 0.5
    registry.unload_expired()
    assert registry.loaded() == ["a"]
    clock.now += 1
    registry.unload_expired()
    await settle()
    assert registry.loaded() == []


async def test_least_recently_used_goes_first(store, clock):
    loads = Loads()
    registry = make(store, loads, max_loaded_models=2)
    await use(registry, "a")
    clock.now += 1
    await use(registry, "b")
    clock.now += 1
    await use(registry, "a")  # a is now more recent than b
    clock.now += 1
    await use(registry, "c")
    assert sorted(registry.loaded()) == ["a", "c"]
    assert loads.of("b")[0].closed and not loads.of("a")[0].closed


async def test_limit_of_one_model(store, clock):
    loads = Loads()
    registry = make(store, loads, max_loaded_models=1)
    for name in ("a", "b", "a"):
        await use(registry, name)
        assert registry.loaded() == [name]
    assert [e.closed for e in loads.engines] == [True, True, False]


async def test_memory_budget(store, clock):
    loads = Loads()
    registry = make(store, loads, max_loaded_models=0, max_loaded_bytes=4500)
    await use(registry, "a")  # 1000 bytes (+ its manifest)
    await use(registry, "b")  # 2000
    assert sorted(registry.loaded()) == ["a", "b"]
    await use(registry, "c")  # 3000: a and b cannot both stay
    assert registry.loaded() == ["c"]
    sizes = {m["name"]: m["size"] for m in ps(registry)}
    assert sizes["c"] > 3000


async def test_busy_models_are_not_evicted_and_the_limit_comes_back(store, clock):
    loads = Loads()
    registry = make(store, loads, max_loaded_models=1)
    lease_a = await registry.acquire("a")
    await use(registry, "b")  # a is busy: b is loaded over the limit, and unloaded at once when idle
    assert registry.loaded() == ["a"]
    lease_b = await registry.acquire("b")
    assert sorted(registry.loaded()) == ["a", "b"]
    lease_a.release()  # a is idle now, and the least recently used: the limit holds again
    await settle()
    assert registry.loaded() == ["b"] and loads.of("a")[0].closed
    lease_b.release()


async def test_eviction_waits_for_the_unloaded_model_to_close(store, clock):
    order: list[str] = []
    closing = asyncio.Event()
    loader = slow_closing_loader(order, closing)
    registry = Registry(ServerSettings(max_loaded_models=1), store, loaders={"chat": loader})
    await use(registry, "a")
    second = asyncio.ensure_future(registry.acquire("b"))
    await settle()
    assert order == ["load a"] and not second.done()  # b waits until a has freed its memory
    closing.set()
    (await second).release()
    assert order == ["load a", "closed a", "load b"]


async def test_concurrent_first_requests_share_one_load_and_wait(store, clock):
    loads = Loads()
    loads.gate.clear()
    registry = make(store, loads)
    waiting = [asyncio.ensure_future(registry.acquire("a")) for _ in range(3)]
    await settle()
    assert not any(w.done() for w in waiting) and registry.loaded() == []
    loads.gate.set()
    leases = await asyncio.gather(*waiting)
    assert len(loads.engines) == 1 and {id(lease.engine) for lease in leases} == {id(loads.engines[0])}
    assert ps(registry)[0]["requests"] == 3
    for lease in leases:
        lease.release()


async def test_removed_model_is_unloaded_after_its_requests(store, clock):
    loads = Loads()
    registry = make(store, loads, keep_alive="-1")
    lease = await registry.acquire("a")
    store.remove("a")
    with pytest.raises(ModelNotFoundError):
        await registry.acquire("a")
    assert not loads.of("a")[0].closed  # the request in flight goes on
    lease.release()
    await settle()
    assert registry.loaded() == [] and loads.of("a")[0].closed


async def test_reaper_runs_with_the_app_lifecycle(store):
    loads = Loads()
    registry = make(store, loads, keep_alive="0.2s")
    registry.start()
    try:
        await use(registry, "a")
        (engine,) = loads.of("a")
        deadline = time.monotonic() + 10
        # The reaper forgets the model first and closes it on a task of its own: wait for both.
        while (registry.loaded() or not engine.closed) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert registry.loaded() == [] and engine.closed
    finally:
        await registry.close()


async def test_ps_shape(store, clock):
    registry = make(store, Loads(), keep_alive="5m")
    await use(registry, "a")
    (model,) = ps(registry)
    assert model["name"] == model["model"] == "a"
    assert model["device"] == "cpu" and model["size_vram"] == 0 and model["task"] == "chat"
    assert model["details"]["quantization_level"] == "int4" and model["details"]["format"] == "onnx"
    assert model["expires_in"] == 300 and model["expires_at"].endswith("+00:00")
    assert model["context_length"] == 64 and model["requests"] == 0


async def test_the_size_of_the_weights_is_read_off_the_event_loop(store, clock, monkeypatch):
    threads = []

    def size(folder):
        threads.append(threading.current_thread())
        return 1

    monkeypatch.setattr(registry_module, "weights_size", size)
    await use(make(store, Loads()), "a")
    assert threads and threading.main_thread() not in threads


async def test_a_model_removed_while_serving_is_unloaded_after_its_last_request(store):
    loads = Loads()
    registry = make(store, loads, keep_alive="-1")
    lease = await registry.acquire("a")
    store.remove("a")  # `ortserve rm` while the request is in flight; no request names "a" again
    lease.release()
    await wait_for(lambda: loads.of("a")[0].closed, "closed")
    assert registry.loaded() == []
    lease = await registry.acquire("b")
    lease.release()
    await asyncio.gather(*registry._checks)  # the same check, for a model still in the store: it stays
    assert registry.loaded() == ["b"] and not loads.of("b")[0].closed


async def test_a_keep_alive_of_centuries_is_listed_as_forever(store, clock):
    registry = make(store, Loads())
    await use(registry, "a", keep_alive=10**12)  # ~31,700 years: past any date
    (model,) = ps(registry)
    assert model["expires_in"] is None and model["expires_at"] is None


async def test_a_reload_waits_until_the_previous_instance_has_closed(store, monkeypatch):
    order: list[str] = []
    sized: list[Path] = []
    monkeypatch.setattr(registry_module, "weights_size", lambda folder: sized.append(folder) or 1)
    closing = asyncio.Event()
    loader = slow_closing_loader(order, closing)
    registry = Registry(ServerSettings(), store, loaders={"chat": loader})
    await use(registry, "a", keep_alive=0)  # unloading at once, but its close takes a while
    again = asyncio.ensure_future(registry.acquire("a"))
    await wait_for(lambda: len(sized) == 2, "about to load again")  # the step just before a load
    await settle()
    assert order == ["load a"] and not again.done()  # never two copies of a model in memory
    closing.set()
    (await again).release()
    assert order == ["load a", "closed a", "load a"]


async def test_shutdown_closes_each_model_once_and_refuses_later_requests(store):
    closes: list[str] = []
    started: list[str] = []

    class Counted(FakeEngine):
        async def close(self) -> None:
            closes.append(self.name)

    gate = asyncio.Event()

    async def loader(entry, *, num_ctx, device):
        started.append(entry.name)
        if entry.name == "b":
            await gate.wait()
        return Counted(entry.name)

    registry = Registry(ServerSettings(), store, loaders={"chat": loader})
    registry.start()
    lease = await registry.acquire("a", keep_alive=0)
    loading = asyncio.ensure_future(registry.acquire("b"))
    await wait_for(lambda: "b" in started, "loading b")
    await registry.close()
    with pytest.raises(OverloadedError):  # its load was cancelled: an error JSON, not a dropped request
        await loading
    lease.release()  # a request that outlived the shutdown: its model is closed already
    await settle()
    assert closes == ["a"]
    with pytest.raises(OverloadedError) as refused:
        await registry.acquire("c")
    assert refused.value.status == 503 and registry.loaded() == []


async def test_a_corrupt_manifest_spoils_only_its_own_model(store, clock):
    (store.models_dir / "b" / MANIFEST).write_text('{"task": "ch', encoding="utf-8")  # e.g. a torn write
    assert store.names() == ["a", "c"]
    registry = make(store, Loads())
    assert [served.name for served in await registry.served_names()] == ["a", "c"]
    with pytest.raises(APIError) as broken:  # not a 404: the model is there, its manifest needs fixing
        await registry.acquire("b")
    assert broken.value.status == 500 and "manifest.json" in broken.value.message
    await use(registry, "a")  # the rest of the store serves on
    assert registry.loaded() == ["a"]
