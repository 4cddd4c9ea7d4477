"""Prompt reuse benchmark: time to first token of a growing chat's turns, with the prompt cache and without.

    python bench/bench_prompt_cache.py [--shape smollm2-135m|tiny] [--precision int4] [--turns 5] [--repeats 3]

Builds the same random-weight model as bench_generation.py (no download), then runs one growing chat
(a system prompt of about 1,060 tokens; each turn adds a question and the model's greedy reply of up to 20
tokens, about 115 tokens in all, so that turn 5's prompt is about 1,570 tokens) against `ortserve serve`
twice: with the prompt cache (the default) and with ORTSERVE_PROMPT_CACHE_BYTES=0. Each repeat starts a new
chat (its system prompt begins differently), so turn 1 is always cold. Reports each turn's prompt tokens,
cached tokens and median TTFT, and the turn-N cached/cold ratio;
writes bench/results/prompt-cache-<shape>-<precision>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generation import ROOT, SHAPES, build, free_port  # noqa: E402

# with the bench's small tokenizer, about one token per 1.8 characters of this text: a system prompt of about
# 1,060 tokens, questions of about 55; a reply of 20 random-weight tokens comes back as about 60 (its text
# re-tokenizes differently), so each turn adds about 115 tokens and turn 5's prompt is about 1,570
SYSTEM = "You help travellers plan trips: weather, trains, museums and food, in short and precise answers. " * 20
QUESTION = "Turn {turn}: what should I see in Paris if it rains, and which trains leave early?"


def start_server(home: Path, cache_bytes: int | None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "ORTSERVE_HOME": str(home)}
    if cache_bytes is not None:
        env["ORTSERVE_PROMPT_CACHE_BYTES"] = str(cache_bytes)
    cmd = [sys.executable, "-m", "ortserve.server.cli", "serve", "--port", str(port), "--no-bootstrap"]
    return subprocess.Popen(cmd, env=env, cwd=ROOT), port


def wait_ready(client) -> None:
    import openai

    deadline = time.time() + 120
    while True:
        try:
            client.models.list()
            return
        except openai.APIConnectionError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)


def turn(client, model: str, messages: list[dict], tokens: int) -> dict:
    start = time.perf_counter()
    first, text, usage = None, [], None
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    end = time.perf_counter()
    details = usage.prompt_tokens_details
    return {
        "ttft_ms": ((first or end) - start) * 1000,
        "prompt_tokens": usage.prompt_tokens,
        "cached_tokens": (details.cached_tokens or 0) if details else 0,
        "completion_tokens": usage.completion_tokens,
        "text": "".join(text),
    }


def conversation(client, model: str, session: int, turns: int, tokens: int) -> list[dict]:
    messages = [{"role": "system", "content": f"Session {session}. {SYSTEM}"}]
    out = []
    for n in range(1, turns + 1):
        messages.append({"role": "user", "content": QUESTION.format(turn=n)})
        result = turn(client, model, messages, tokens)
        messages.append({"role": "assistant", "content": result.pop("text")})
        out.append(result)
    return out


def run_server(home: Path, name: str, cache_bytes: int | None, turns: int, tokens: int, repeats: int) -> list[dict]:
    import openai

    server, port = start_server(home, cache_bytes)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0)
        wait_ready(client)
        conversation(client, name, 0, 1, 8)  # warm-up: loads the model runner
        runs = [conversation(client, name, session, turns, tokens) for session in range(1, repeats + 1)]
    finally:
        server.terminate()
        server.wait(30)
    per_turn = []
    for t in range(turns):
        results = [r[t] for r in runs]
        per_turn.append(
            {
                "turn": t + 1,
                "prompt_tokens": results[0]["prompt_tokens"],
                "cached_tokens": results[0]["cached_tokens"],
                "completion_tokens": results[0]["completion_tokens"],
                "ttft_ms_median": statistics.median(r["ttft_ms"] for r in results),
                "ttft_ms_all": [round(r["ttft_ms"], 1) for r in results],
            }
        )
    return per_turn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="smollm2-135m")
    parser.add_argument("--precision", default="int4")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=20, help="most reply tokens per turn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "ortserve-bench")
    args = parser.parse_args()

    name = build(args.home, args.shape, args.precision)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    cached = run_server(args.home, name, None, args.turns, args.tokens, args.repeats)
    cold = run_server(args.home, name, 0, args.turns, args.tokens, args.repeats)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None

    last_cached, last_cold = cached[-1]["ttft_ms_median"], cold[-1]["ttft_ms_median"]
    result = {
        "shape": args.shape,
        "precision": args.precision,
        "turns": args.turns,
        "reply_tokens": args.tokens,
        "repeats": args.repeats,
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs",
        "load_average_before_after": [load_before, load_after],
        "with_cache": cached,
        "without_cache": cold,
        f"turn{args.turns}_ttft_ratio_cached_over_cold": last_cached / last_cold,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"\n{args.shape} {args.precision}: TTFT per turn (median of {args.repeats} chats)")
    print(f"{'turn':>4}{'prompt':>8}{'cached':>8}{'cache ms':>10}{'cold ms':>10}{'ratio':>8}")
    for a, b in zip(cached, cold, strict=True):
        ratio = a["ttft_ms_median"] / b["ttft_ms_median"]
        print(
            f"{a['turn']:>4}{a['prompt_tokens']:>8}{a['cached_tokens']:>8}"
            f"{a['ttft_ms_median']:>10.1f}{b['ttft_ms_median']:>10.1f}{ratio:>8.2f}"
        )
    out = ROOT / "bench" / "results" / f"prompt-cache-{args.shape}-{args.precision}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
