"""The floor under `soak.py --flood`'s /health figure: the same burst against a bare Hypercorn app (issue #13).

    python bench/flood_floor.py [--flood 1000] [--runs 3]

A trivial ASGI app (no Quart, no ortserve) served by Hypercorn with ortserve's listen backlog (2,048): a POST
reads its body, parses it as JSON and answers after 3 s (a queued chat, waiting costs nothing); GET /health
answers at once. From this process, `--flood` POSTs at once (httpx, one connection each, as soak.py sends them)
while curl, in its own process, times /health every 50 ms. What /health takes here is what the event loop and
the machine give any Python ASGI server under that burst, before ortserve does any work of its own.
Results print and are written to bench/results/flood-floor-<date>.json with the machine and load.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


async def app(scope: dict, receive, send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] != "/health":
        json.loads(body or b"{}")
        await asyncio.sleep(3)
    payload = b'{"status":"ok"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def serve(port: int) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.backlog = 2048  # as ortserve's serve
    asyncio.run(hypercorn_serve(app, config))


def curl_seconds(url: str) -> float:
    command = ["curl", "-s", "-o", os.devnull, "-w", "%{time_total}", url]
    return float(subprocess.run(command, capture_output=True, text=True, timeout=600).stdout or "nan")


async def burst(url: str, count: int) -> dict:
    health: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            health.append(curl_seconds(f"{url}/health"))
            time.sleep(0.05)

    body = {"model": "m", "messages": [{"role": "user", "content": "Say something about the weather."}]}
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=None)) as client:
        watcher = threading.Thread(target=probe)
        watcher.start()
        try:
            statuses = [
                r.status_code for r in await asyncio.gather(*(client.post("/chat", json=body) for _ in range(count)))
            ]
        finally:
            done.set()
            watcher.join()
    health.sort()
    return {
        "served": statuses.count(200),
        "health_probes": len(health),
        "health_p50_ms": round(statistics.median(health) * 1000, 1),
        "health_worst_ms": round(health[-1] * 1000, 1),
        "health_over_100ms": sum(h > 0.1 for h in health),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server's own process
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if sys.platform != "win32":  # a thousand connections need as many file descriptors on both sides
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/health")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        runs = []
        for _ in range(args.runs):
            load = os.getloadavg()[0]
            runs.append({"load_before": round(load, 2), **asyncio.run(burst(url, args.flood))})
            print(json.dumps(runs[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(10)
    result = {
        "date": str(datetime.date.today()),
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs, {platform.platform()}",
        "flood": args.flood,
        "runs": runs,
    }
    out = ROOT / "bench" / "results" / f"flood-floor-{datetime.date.today()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
