"""The runner memory ceiling (issue #13, item 1): a process past its limit is reported, and a server whose
runner goes over it answers with an error that says so and keeps serving."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import httpx

from ortserve.server.engine.memory_watchdog import MemoryWatchdog, default_limit
from tests.e2e.conftest import CHAT_MODEL, start_server, stop_server_cleanly

MB = 1024 * 1024


def test_a_process_past_its_limit_is_reported_once():
    grow = "import time; x = [bytearray(50 * 2**20) for _ in range(8)]; time.sleep(60)"  # 400 MB
    child = subprocess.Popen([sys.executable, "-c", grow])
    seen: list[int] = []
    reported = threading.Event()
    try:
        watchdog = MemoryWatchdog(child.pid, 200 * MB, lambda rss: (seen.append(rss), reported.set()), interval=0.05)
        watchdog.start()
        assert reported.wait(30)
        time.sleep(0.3)
        assert len(seen) == 1 and seen[0] > 200 * MB
    finally:
        child.kill()
        child.wait()


def test_a_process_under_its_limit_is_left_alone():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    seen: list[int] = []
    watchdog = MemoryWatchdog(child.pid, 2000 * MB, seen.append, interval=0.05)
    watchdog.start()
    child.wait()
    time.sleep(0.2)
    assert seen == [] and default_limit(500 * MB) == (1000 + 2048) * MB


def test_a_runner_over_its_ceiling_fails_its_request_and_the_server_serves_on(chat_store_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(chat_store_home, home)
    # 40 MB: every runner is over it while it loads the model (about 90 MB)
    server = start_server(home, tmp_path / "server.log", env={"ORTSERVE_RUNNER_MEMORY_LIMIT": str(40 * MB)})
    try:
        # long enough that the runner is still working when the watchdog looks (it samples every 0.25 s)
        body = {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1900,
            "min_tokens": 1900,
        }
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 500
        message = response.json()["error"]["message"]
        assert "memory ceiling of 40 MB" in message and "runner_memory_limit" in message
        assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
    finally:
        stop_server_cleanly(server)
