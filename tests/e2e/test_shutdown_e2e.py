"""SIGTERM with 16 streams in flight (issue #13, item 4): no stream is cut without a word, no traceback,
exit 0, no runner left behind.

Short streams finish inside the grace period; long ones are ended when it runs out, each with an error
event (503 server_shutting_down) and `[DONE]`. Before, 12-15 of 16 streams ended as an incomplete chunked
body and the server printed as many tracebacks.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import CHAT_MODEL, start_server

GRACE = 2.0
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is a hard stop on Windows")


def children(pid: int) -> set[int]:
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields.get("PPid", "0").strip() or 0) == pid:
            found.add(int(status.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def describe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return str(pid)


async def stream(client: httpx.AsyncClient, max_tokens: int, started: list) -> tuple[list[str], float]:
    """The stream's data events and when it ended."""
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "stream": True,
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
    }
    events: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        started.append(1)
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
    return events, time.monotonic()


def test_sigterm_lets_streams_finish_or_end_them_with_an_error_event(server_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(server_home, home)
    # one request generating at a time: the long ones outlive the grace however fast the model decodes in a batch
    env = {"ORTSERVE_SHUTDOWN_GRACE": str(GRACE), "ORTSERVE_NUM_PARALLEL": "1"}
    server = start_server(home, tmp_path / "server.log", env=env)

    async def scenario() -> list[list[str]]:
        started: list = []
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            await client.post(
                "/v1/chat/completions",
                json={"model": CHAT_MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
            )
            # 8 short streams first (they finish at once), then 8 that outlive the grace. A stream's 200 comes once
            # the runner has its request, and the runner starts requests in arrival order: the long ones are
            # sent after every short one has its 200, or a long one could take the one place ahead of a short one
            tasks = [asyncio.ensure_future(stream(client, 4, started)) for _ in range(8)]
            while len(started) < 8:
                await asyncio.sleep(0.02)
            tasks += [asyncio.ensure_future(stream(client, 1900, started)) for _ in range(8)]
            while len(started) < 16:
                await asyncio.sleep(0.02)
            runners.update(children(server.process.pid))
            signalled.append(time.monotonic())
            server.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    runners: set[int] = set()
    signalled: list[float] = []
    began = time.monotonic()
    results = asyncio.run(scenario())
    server.process.wait(timeout=GRACE + 30)
    log = server.log.read_text(errors="replace")
    assert server.process.returncode == 0, log
    assert "Traceback" not in log, log
    assert time.monotonic() - began < GRACE + 20
    interrupted = 0
    for i, (events, ended) in enumerate(results):
        assert events[-1] == "[DONE]", events[-3:]  # every stream ends properly, none is cut
        last = json.loads(events[-2])
        if "error" in last:
            assert i >= 8 and last["error"]["code"] == "server_shutting_down"
            assert ended - signalled[0] >= GRACE - 0.2  # not before the grace ran out
            interrupted += 1
        else:
            assert last["choices"][0]["finish_reason"] == "length"
    assert interrupted >= 1  # 1,900 tokens each, one at a time, outlive a 2 s grace
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in runners) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runners and not [describe(pid) for pid in runners if alive(pid)]  # no runner left behind
