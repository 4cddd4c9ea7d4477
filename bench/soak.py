"""Soak: many clients for a while against a real `ortserve serve`, mixing every kind of request.

    python bench/soak.py [--clients 16] [--seconds 300] [--chat MODEL] [--embedding MODEL]
                         [--url http://127.0.0.1:8000 --pid PID] [--flood N] [--max-tokens 32]

Without --url it starts `ortserve serve` on the default store (the embedded default models:
`tiny-demo` and `all-minilm`, set up on first run) on a free port, and stops it at the end.
Each client loops over: a streamed chat, a chat, a completion and an embedding of a few
sentences, with short prompts and 32 new tokens. Printed at the end, and written to
bench/results/soak-<date>.json with the machine and its load:
  - requests and errors by kind and status, and p50 / p99 latency per kind;
  - resident memory (VmRSS) of the server and its runner processes at the start, the middle
    and the end (Linux: read from /proc; elsewhere omitted);
  - the longest /health answer seen during the run (the event loop stays responsive).
With --flood N it instead sends N chats at once and reports their statuses (503 server_busy past
the queue) and latencies, the slowest /health answer while they run, and how long one more chat and
one embedding took in the middle of the flood (both models are loaded before it starts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A local model server on ONNX Runtime.",
    "Soak tests run for minutes, not seconds.",
]


def rss_mb(pid: int) -> float | None:
    """VmRSS of `pid` and every process below it, in MB (Linux)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    parents: dict[int, int] = {}
    for status in proc.glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            parents[int(status.parent.name)] = int(fields["PPid"].strip())
        except (OSError, ValueError, KeyError):
            continue
    family, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    total = 0
    for member in family:
        try:
            line = next(x for x in (proc / str(member) / "status").read_text().splitlines() if x.startswith("VmRSS"))
            total += int(line.split()[1])
        except (OSError, StopIteration, ValueError):
            continue
    return round(total / 1024, 1)


async def one(client: httpx.AsyncClient, kind: str, args: argparse.Namespace) -> int:
    user = [{"role": "user", "content": "Say something about the weather."}]
    if kind == "chat_stream":
        body = {"model": args.chat, "messages": user, "max_tokens": args.max_tokens, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for _ in response.aiter_lines():
                pass
            return response.status_code
    if kind == "chat":
        body = {"model": args.chat, "messages": user, "max_tokens": args.max_tokens}
        return (await client.post("/v1/chat/completions", json=body)).status_code
    if kind == "completion":
        body = {"model": args.chat, "prompt": "Once upon a time", "max_tokens": args.max_tokens}
        return (await client.post("/v1/completions", json=body)).status_code
    body = {"model": args.embedding, "input": SENTENCES}
    return (await client.post("/v1/embeddings", json=body)).status_code


async def soak(url: str, pid: int | None, args: argparse.Namespace) -> dict:
    kinds = ["chat_stream", "chat", "completion", "embedding"]
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: dict[str, Counter] = defaultdict(Counter)
    memory = {"start": rss_mb(pid) if pid else None}
    deadline = time.monotonic() + args.seconds
    health_worst = 0.0

    async def client_loop(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            n = i
            while time.monotonic() < deadline:
                kind = kinds[n % len(kinds)]
                n += 1
                started = time.monotonic()
                try:
                    status = await one(client, kind, args)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                latencies[kind].append(time.monotonic() - started)
                statuses[kind][str(status)] += 1

    async def watch() -> None:
        nonlocal health_worst
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            half = time.monotonic() + args.seconds / 2
            while time.monotonic() < deadline:
                started = time.monotonic()
                await client.get("/health")
                health_worst = max(health_worst, time.monotonic() - started)
                if "middle" not in memory and time.monotonic() >= half:
                    memory["middle"] = rss_mb(pid) if pid else None
                await asyncio.sleep(1)

    await asyncio.gather(watch(), *(client_loop(i) for i in range(args.clients)))
    memory["end"] = rss_mb(pid) if pid else None
    per_kind = {
        kind: {
            "requests": len(values),
            "statuses": dict(statuses[kind]),
            "p50_s": round(statistics.median(values), 3),
            "p99_s": round(sorted(values)[max(0, int(len(values) * 0.99) - 1)], 3),
        }
        for kind, values in latencies.items()
        if values
    }
    errors = sum(n for c in statuses.values() for s, n in c.items() if s != "200")
    return {"kinds": per_kind, "errors": errors, "rss_mb": memory, "health_worst_s": round(health_worst, 3)}


def curl_seconds(url: str, body: dict | None = None) -> float:
    """One request by curl in its own process, so that the flood's client does not slow the measurement."""
    command = ["curl", "-s", "-o", os.devnull, "-w", "%{time_total}", url]
    if body is not None:
        command += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    return float(subprocess.run(command, capture_output=True, text=True, timeout=600).stdout or "nan")


async def flood(url: str, args: argparse.Namespace) -> dict:
    """N chats at once from this process; /health, one more chat and one embedding timed by curl meanwhile."""
    statuses: Counter = Counter()
    latencies: list[float] = []
    done = threading.Event()
    health: list[tuple[float, float]] = []  # (seconds into the flood, latency)
    began = time.monotonic()  # set again when the flood starts

    def probe() -> None:
        while not done.is_set():
            at = time.monotonic() - began
            health.append((at, curl_seconds(f"{url}/health")))
            time.sleep(0.05)

    async def chat(client: httpx.AsyncClient) -> None:
        started = time.monotonic()
        try:
            status: int | str = await one(client, "chat", args)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        latencies.append(time.monotonic() - started)
        statuses[str(status)] += 1

    async def later(body: dict, path: str) -> float:
        await asyncio.sleep(1.0)  # in the middle of the flood
        return round(await asyncio.to_thread(curl_seconds, f"{url}{path}", body), 3)

    watcher = threading.Thread(target=probe, daemon=True)
    user = [{"role": "user", "content": "Say something about the weather."}]
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=None)) as client:
        await one(client, "chat", args)  # both models loaded first: the flood is measured, not their first load
        await one(client, "embedding", args)
        began = time.monotonic()
        watcher.start()
        lone = asyncio.ensure_future(
            later({"model": args.chat, "messages": user, "max_tokens": 32}, "/v1/chat/completions")
        )
        embedding = asyncio.ensure_future(later({"model": args.embedding, "input": SENTENCES}, "/v1/embeddings"))
        await asyncio.gather(*(chat(client) for _ in range(args.flood)))
        done.set()
        watcher.join()
        latencies.sort()
        slowest_at, _ = max(health, key=lambda h: h[1])
        health_s = sorted(h[1] for h in health)
        return {
            "flood": args.flood,
            "statuses": dict(statuses),
            "p50_s": round(statistics.median(latencies), 3),
            "p99_s": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 3),
            "health_probes": len(health_s),
            "health_worst_s": round(health_s[-1], 3),
            "health_worst_at_s": round(slowest_at, 2),
            "health_p99_s": round(health_s[max(0, int(len(health_s) * 0.99) - 1)], 3),
            "health_p50_s": round(statistics.median(health_s), 3),
            "health_over_100ms": [[round(at, 2), round(h, 3)] for at, h in health if h > 0.1],  # [when, took]
            "lone_chat_s": await lone,
            "embedding_s": await embedding,
        }


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "ortserve.server.cli", "serve", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # first-run setup converts the default models
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not start in 10 minutes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--chat", default="tiny-demo")
    parser.add_argument("--embedding", default="all-minilm")
    parser.add_argument("--url", help="a running server (else one is started)")
    parser.add_argument("--pid", type=int, help="the running server's pid, for its memory")
    parser.add_argument("--flood", type=int, help="send this many chats at once instead of soaking")
    parser.add_argument(
        "--max-tokens", type=int, default=32, help="new tokens per chat and completion (more: longer in flight)"
    )
    args = parser.parse_args()
    process = None
    if args.url:
        url, pid = args.url, args.pid
    else:
        process, url = start_server()
        pid = process.pid
    try:
        load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
        result = asyncio.run(flood(url, args) if args.flood else soak(url, pid, args))
    finally:
        if process is not None:
            process.terminate()
            process.wait(60)
    result.update(
        clients=args.clients,
        seconds=args.seconds,
        chat=args.chat,
        embedding=args.embedding,
        machine=f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        load_average_before=load_before,
        date=time.strftime("%Y-%m-%d %H:%M"),
    )
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / f"{'flood' if args.flood else 'soak'}-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
