"""The keep-alive and eviction policy (server/residency.py) on plain `Usage` records and made-up times:
no registry, no event loop, no engines."""

from __future__ import annotations

import pytest

from ortserve.server.residency import FOREVER, Limits, Usage, choose_keep_alive, expired, to_unload


def idle(last_used: float, size: int = 0, keep_alive: float = 300.0, vram: int = 0) -> Usage:
    usage = Usage(size=size, vram=vram)
    usage.acquire(last_used, keep_alive)
    usage.release(last_used)
    return usage


def test_keep_alive_comes_from_the_request_then_the_settings_then_the_server():
    assert choose_keep_alive(10.0, 60.0, 300.0) == 10
    assert choose_keep_alive(None, 60.0, 300.0) == 60
    assert choose_keep_alive(None, None, 300.0) == 300
    assert choose_keep_alive(0.0, 60.0, 300.0) == 0  # 0 is a value, not "unset"
    assert choose_keep_alive(FOREVER, None, 300.0) == FOREVER


def test_an_idle_model_gets_its_deadline_when_its_last_request_ends():
    usage = Usage()
    usage.acquire(100.0, 300.0)
    usage.acquire(101.0, 60.0)  # a second request (another name, say): the last request's keep-alive counts
    assert usage.expires is None and usage.expires_in(5000.0) == 60  # in use: the full time, never expiring
    assert usage.release(110.0) is False and usage.expires is None  # one request still in flight
    assert usage.release(120.0) is False
    assert usage.idle and usage.expires == 180 and usage.expires_in(150.0) == 30
    assert usage.expires_in(500.0) == 0


def test_the_last_request_wins_even_when_it_asks_for_less():
    usage = Usage()
    usage.acquire(0.0, FOREVER)
    usage.release(1.0)
    assert usage.expires_in(10**9) is None  # forever
    usage.acquire(2.0, 8.0)
    usage.release(3.0)
    assert usage.expires == 11


def test_keep_alive_zero_unloads_right_after_the_last_request():
    usage = Usage()
    usage.acquire(0.0, 0.0)
    usage.acquire(0.0, 0.0)
    assert usage.release(1.0) is False  # never under a request in flight
    assert usage.release(2.0) is True


def test_expired_lists_the_due_and_the_time_to_the_next_deadline():
    loaded = {"a": idle(0.0, keep_alive=10), "b": idle(0.0, keep_alive=30), "c": idle(0.0, keep_alive=FOREVER)}
    busy = Usage()
    busy.acquire(0.0, 1.0)
    loaded["d"] = busy
    assert expired(loaded, 5.0) == ([], 5.0)
    assert expired(loaded, 10.0) == (["a"], 20.0)
    assert expired(loaded, 10**9) == (["a", "b"], None)  # the forever and the busy never expire
    assert expired({}, 0.0) == ([], None)


def test_limits_count_models_and_bytes_and_zero_means_none():
    usages = [Usage(size=1000), Usage(size=2000)]
    assert not Limits().exceeded(usages, 5, 10**12)
    assert Limits(max_models=2).exceeded(usages, 1) and not Limits(max_models=2).exceeded(usages)
    assert Limits(max_bytes=4000).exceeded(usages, 1, 1001) and not Limits(max_bytes=4000).exceeded(usages, 1, 1000)


def test_to_unload_picks_the_least_recently_used_idle_models_until_the_newcomer_fits():
    loaded = {"a": idle(3.0, 1000), "b": idle(1.0, 2000), "c": idle(2.0, 3000)}
    assert to_unload(loaded, Limits(max_models=3), 10) == ["b"]
    assert to_unload(loaded, Limits(max_models=1), 10) == ["b", "c", "a"]
    assert to_unload(loaded, Limits(max_bytes=6500), 1000) == ["b"]  # 1000 + 3000 + 1000 fits
    assert to_unload(loaded, Limits(max_bytes=6500), 3000) == ["b", "c"]
    assert to_unload(loaded, Limits(max_models=3)) == []  # nothing incoming: the limits hold already
    assert to_unload(loaded, Limits(), 10**12) == []


def test_the_gpu_budget_unloads_models_on_the_gpu_least_recently_used_first():
    # "cpu" is the least recently used, but it holds no GPU memory: unloading it frees none
    loaded = {"cpu": idle(1.0, 100), "gpu-old": idle(2.0, 100, vram=6000), "gpu-new": idle(3.0, 100, vram=3000)}
    limits = Limits(max_vram=10_000)
    assert not limits.exceeded(loaded.values()) and limits.exceeded(loaded.values(), 1, 100, 1001)
    assert to_unload(loaded, limits, 100, 1000) == []  # 6000 + 3000 + 1000 fits
    assert to_unload(loaded, limits, 100, 4000) == ["gpu-old"]
    assert to_unload(loaded, limits, 100, 8000) == ["gpu-old", "gpu-new"]
    assert to_unload(loaded, limits, 100, 0) == []  # a model for the CPU needs no GPU memory
    # when another limit is broken too, the least recently used goes first, wherever it runs
    assert to_unload(loaded, Limits(max_models=3, max_vram=10_000), 100, 4000) == ["cpu", "gpu-old"]
    assert to_unload(loaded, Limits(max_vram=10**12), 10**12, 10**9) == []


def test_busy_models_are_never_unloaded_so_the_limits_may_stay_exceeded():
    busy = Usage(size=1000)
    busy.acquire(0.0, 300.0)
    loaded = {"old-busy": busy, "idle": idle(5.0, 1000)}
    limits = Limits(max_models=1)
    assert to_unload(loaded, limits, 1000) == ["idle"]
    assert limits.exceeded([busy], 1, 1000)  # the newcomer loads over the limit
    assert to_unload({"old-busy": busy, "new": idle(6.0)}, limits) == ["new"]  # back under once one is idle
    busy.release(7.0)
    assert to_unload({"old-busy": busy, "new": idle(6.0)}, limits) == ["new"]  # least recently used first


@pytest.mark.parametrize("keep_alive", [300.0, FOREVER])
def test_a_model_in_use_has_no_deadline(keep_alive):
    usage = Usage()
    usage.acquire(0.0, keep_alive)
    assert expired({"a": usage}, 10**12) == ([], None)
