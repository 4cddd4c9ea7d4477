"""ortserve against llama.cpp's llama-server on the same model shape, side by side, rounds interleaved.

    python bench/compare_llamacpp.py --llama-cpp SRC [--llama-bin BIN] [--shape smollm2-135m|qwen2.5-0.5b]
                                     [--rounds 3] [--quick] [--note TEXT]
    python bench/compare_llamacpp.py --ortserve URL --llama URL [--model NAME]   # servers already running

SRC is a llama.cpp source tree (its `convert_hf_to_gguf.py` and `gguf-py`), BIN the folder holding the
`llama-server` and `llama-quantize` built from it (default SRC/build/bin; see the README's Benchmarks section:
llama.cpp stays outside this repository). The script builds the random-weight checkpoint of the shape
(bench_generation.py's), converts it with `ortserve convert --precision int4` and with llama.cpp's own
converter (f16, the pre-tokenizer forced to gpt-2: our tokenizer is trained locally, so the converter does
not know its hash) then `llama-quantize Q4_0`, starts both servers on 127.0.0.1 with the same threads and
parallel slots, and measures through HTTP streaming with the openai-shaped routes both serve:

  - 1 stream: time to first token and decode tok/s after it (192-token prompt, 128 new tokens forced);
  - 4 / 8 / 16 streams at once: aggregate tok/s, mean and p99 time to first token;
  - a 2,048-token prompt's time to first token;
  - turn 5 of a growing chat (~1,500 tokens of history, 100 new tokens a turn) against the same prompt cold
    (llama-server with `cache_prompt`).

Lengths are forced (`min_tokens` on ortserve, `ignore_eos` + `n_predict` on llama-server) and the token counts
each server reports are checked. Every prompt starts with its own nonce, so no server reuses another request's
prefix except where the chat test means it to. Rounds alternate which server goes first. Medians, the ratio of
medians and the median of per-round (paired) ratios, ortserve / llama-server, are printed with each server's
resident memory and written to bench/results/llamacpp-<shape>-<date>[-quick].json with the machine, the
flags, the llama.cpp build and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generation import at_once, build, checkpoint, free_port  # noqa: E402
from llamacpp_servers import (  # noqa: E402
    Server,
    gguf,
    listening_pid,
    llama_build,
    machine,
    ortserve_build,
    resident_mb,
)


class Target:
    """One server under test: how to ask it for a forced-length streamed completion or chat."""

    def __init__(self, name: str, url: str, model: str, pid: int | None = None):
        self.name, self.url, self.model, self.pid = name, url.rstrip("/"), model, pid

    def force(self, tokens: int) -> dict:
        if self.name == "ortserve":
            return {"max_tokens": tokens, "min_tokens": tokens}
        return {"max_tokens": tokens, "n_predict": tokens, "ignore_eos": True, "cache_prompt": True}

    def stream(self, route: str, body: dict, tokens: int) -> dict:
        """Stream one request; its time to first token, decode rate and the counts the server reported."""
        body = {"model": self.model, "stream": True, "stream_options": {"include_usage": True}, **body}
        body.update(self.force(tokens))
        began = time.perf_counter()
        first = last = None
        pieces = 0
        usage = None
        with httpx.stream("POST", f"{self.url}/v1/{route}", json=body, timeout=600) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                choices = chunk.get("choices") or []
                text = choices[0].get("text") or (choices[0].get("delta") or {}).get("content") if choices else None
                if text:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    pieces += 1
        assert usage is not None, f"{self.name} sent no usage"
        completion = int(usage["completion_tokens"])
        assert completion == tokens, f"{self.name} generated {completion} tokens, not {tokens}"
        ttft = (first or time.perf_counter()) - began
        decode = (completion - 1) / (last - first) if first and last and last > first else None
        return {"ttft_ms": 1000 * ttft, "decode_tok_s": decode, "prompt_tokens": int(usage["prompt_tokens"])}


def nonce() -> str:
    return f"[{uuid.uuid4().hex[:8]}] "


def text_of(tokens: int, tokenizer) -> str:
    """Text of about `tokens` tokens of our tokenizer (plain words)."""
    words = "the quick brown fox jumps over the lazy dog while the rain in Paris falls on Lyon and Nice".split()
    out: list[str] = []
    while len(tokenizer.encode(" ".join(out)).ids) < tokens:
        out.extend(words)
    ids = tokenizer.encode(" ".join(out)).ids[:tokens]
    return tokenizer.decode(ids)


def concurrent(target: Target, streams: int, prompt: str, tokens: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def one() -> None:
        r = target.stream("completions", {"prompt": nonce() + prompt}, tokens)
        with lock:
            results.append(r)

    wall = at_once([one] * streams)
    ttfts = sorted(r["ttft_ms"] for r in results)
    return {
        "aggregate_tok_s": streams * tokens / wall,
        "mean_ttft_ms": statistics.fmean(ttfts),
        "p99_ttft_ms": ttfts[min(len(ttfts) - 1, int(round(0.99 * (len(ttfts) - 1))))],
    }


def growing_chat(target: Target, system: str, turns: int, reply: int) -> dict:
    """Turn `turns`' time to first token in a growing chat, and the same messages cold (a nonce up front)."""
    messages = [{"role": "system", "content": nonce() + system}]
    warm = None
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn + 1}: and what happened next?"})
        warm = target.stream("chat/completions", {"messages": messages, "temperature": 0}, reply)
        # the reply the model gave is not known here (text is not kept): a fixed stand-in, as a client would send
        messages.append({"role": "assistant", "content": " ".join(["and then"] * (reply // 2))})
    messages.pop()
    cold_messages = [{"role": "system", "content": nonce() + messages[0]["content"]}, *messages[1:]]
    cold = target.stream("chat/completions", {"messages": cold_messages, "temperature": 0}, reply)
    assert warm is not None
    return {"turn_ttft_ms": warm["ttft_ms"], "cold_ttft_ms": cold["ttft_ms"], "prompt_tokens": warm["prompt_tokens"]}


def measure(targets: list[Target], args, tokenizer) -> dict:
    prompt = text_of(args.prompt_tokens, tokenizer)
    long_prompt = text_of(args.long_prompt_tokens, tokenizer)
    system = text_of(730, tokenizer)  # with four turns of ~115 tokens and the template: ~1,500 tokens at turn 5
    streams = [int(n) for n in args.streams.split(",")]
    rows: dict[str, dict[str, list[float]]] = {t.name: {} for t in targets}

    def add(name: str, key: str, value: float | None) -> None:
        if value is not None:
            rows[name].setdefault(key, []).append(value)

    for target in targets:  # warm-up: load the model, first allocations
        target.stream("completions", {"prompt": nonce() + prompt}, 8)
    for r in range(args.rounds):
        order = targets[r % len(targets) :] + targets[: r % len(targets)]
        for target in order:
            one = target.stream("completions", {"prompt": nonce() + prompt}, args.tokens)
            add(target.name, "1 stream TTFT ms", one["ttft_ms"])
            add(target.name, "1 stream decode tok/s", one["decode_tok_s"])
            add(target.name, "1 stream prompt tokens", one["prompt_tokens"])
        for n in streams:
            for target in order:
                c = concurrent(target, n, prompt, args.tokens)
                add(target.name, f"{n} streams aggregate tok/s", c["aggregate_tok_s"])
                add(target.name, f"{n} streams mean TTFT ms", c["mean_ttft_ms"])
                add(target.name, f"{n} streams p99 TTFT ms", c["p99_ttft_ms"])
        for target in order:
            long = target.stream("completions", {"prompt": nonce() + long_prompt}, 8)
            add(target.name, f"{args.long_prompt_tokens}-token prompt TTFT ms", long["ttft_ms"])
        for target in order:
            chat = growing_chat(target, system, 5, 100)
            add(target.name, "chat turn 5 TTFT ms", chat["turn_ttft_ms"])
            add(target.name, "chat turn 5 cold TTFT ms", chat["cold_ttft_ms"])
            add(target.name, "chat turn 5 prompt tokens", chat["prompt_tokens"])
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-cpp", type=Path, help="llama.cpp's source tree (convert_hf_to_gguf.py, gguf-py)")
    parser.add_argument(
        "--llama-bin", type=Path, help="folder with llama-server and llama-quantize (default: LLAMA_CPP/build/bin)"
    )
    parser.add_argument("--ortserve", help="URL of a running ortserve (with --llama: only measure)")
    parser.add_argument("--llama", help="URL of a running llama-server")
    parser.add_argument("--model", help="the model name on the running ortserve")
    parser.add_argument("--shape", choices=["smollm2-135m", "qwen2.5-0.5b"], default="smollm2-135m")
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ortserve-bench",
        help="ORTSERVE_HOME for the converted model, also where checkpoints and GGUFs are kept",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8, help="llama-server -np and ortserve --num-parallel")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=192)
    parser.add_argument("--long-prompt-tokens", type=int, default=2048)
    parser.add_argument("--streams", default="4,8,16")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one round, 4 and 8 streams")
    parser.add_argument("--note", default="", help="recorded in the results (e.g. what else ran on the machine)")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/llamacpp-<shape>-<date>.json)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.streams = 1, "4,8"
    if args.llama_cpp and not args.llama_bin:
        args.llama_bin = args.llama_cpp / "build" / "bin"
    return args


def start(args, servers: list[Server]) -> list[Target]:
    """Convert the shape for both engines and start both servers on 127.0.0.1 with the same threads."""
    if args.llama_cpp is None:
        raise SystemExit("give --llama-cpp DIR (or --ortserve URL --llama URL)")
    model = build(args.home, args.shape, "int4")
    weights = gguf(
        checkpoint(args.home, args.shape),
        args.home / "gguf" / f"{args.shape}-q4_0.gguf",
        args.llama_cpp,
        args.llama_bin,
    )
    env = {**os.environ, "ORTSERVE_HOME": str(args.home)}
    port = free_port()
    argv = [sys.executable, "-m", "ortserve.server.cli", "serve", "--port", str(port), "--no-bootstrap"]
    argv += ["--threads", str(args.threads), "--num-parallel", str(args.parallel)]
    servers.append(Server("ortserve", argv, env, port, ROOT))
    context = args.parallel * (args.long_prompt_tokens + args.tokens + 256)
    port = free_port()
    argv = [str(args.llama_bin / "llama-server"), "-m", str(weights), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["-t", str(args.threads), "-np", str(args.parallel), "-c", str(context), "--cont-batching"]
    servers.append(Server("llama-server", argv, None, port, ROOT))
    for server in servers:
        server.wait("/health")
    return [
        Target("ortserve", servers[0].url, model, servers[0].process.pid),
        Target("llama-server", servers[1].url, "model", servers[1].process.pid),
    ]


def paired(ours: list[float], theirs: list[float]) -> float | None:
    """The median of the per-round ratios (rounds are interleaved, so round i of each ran side by side)."""
    if len(ours) != len(theirs) or not ours:
        return None
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def main() -> None:
    args = parse_args()
    import tokenizers

    servers: list[Server] = []
    try:
        if args.ortserve and args.llama:
            model = args.model or f"bench-{args.shape}-int4"
            targets = [
                Target("ortserve", args.ortserve, model, listening_pid(args.ortserve)),
                Target("llama-server", args.llama, "model", listening_pid(args.llama)),
            ]
        else:
            targets = start(args, servers)
        tokenizer = tokenizers.Tokenizer.from_file(str(checkpoint(args.home, args.shape) / "tokenizer.json"))
        load_before = os.getloadavg()
        began = time.strftime("%Y-%m-%d %H:%M")
        rows = measure(targets, args, tokenizer)
        load_after = os.getloadavg()
        memory = {t.name: resident_mb(t.pid) for t in targets}
    finally:
        for server in servers:
            server.stop()

    medians = {name: {k: statistics.median(v) for k, v in row.items()} for name, row in rows.items()}
    ours, theirs = medians["ortserve"], medians["llama-server"]
    print(
        f"\n{args.shape}: ortserve int4 vs llama-server Q4_0, {args.threads} threads, -np {args.parallel}, "
        f"{args.rounds} round(s), load {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    print(f"{'median':<36}{'ortserve':>12}{'llama-server':>14}{'ratio':>8}{'paired':>8}")
    ratios, paired_ratios = {}, {}
    for key in ours:
        if key in theirs:
            ratios[key] = ours[key] / theirs[key]
            paired_ratios[key] = paired(rows["ortserve"][key], rows["llama-server"][key])
            both = f"{paired_ratios[key]:>8.2f}" if paired_ratios[key] is not None else f"{'-':>8}"
            print(f"{key:<36}{ours[key]:>12.1f}{theirs[key]:>14.1f}{ratios[key]:>8.2f}{both}")
    for name, mb in memory.items():
        print(f"{'resident memory MB: ' + name:<36}" + (f"{mb:>12.0f}" if mb is not None else f"{'unknown':>12}"))
    result = {
        "shape": args.shape,
        "date": began,
        "quick": args.quick,
        "note": args.note,
        "machine": machine(),
        "threads": args.threads,
        "parallel": args.parallel,
        "rounds": args.rounds,
        "tokens": args.tokens,
        "prompt_tokens": args.prompt_tokens,
        "long_prompt_tokens": args.long_prompt_tokens,
        "streams": args.streams,
        "servers": {s.name: [Path(a).name if os.sep in a else a for a in s.argv] for s in servers}
        or {t.name: t.url for t in targets},
        "llama_cpp": llama_build(args.llama_bin) if args.llama_bin else None,
        "ortserve": ortserve_build(),
        "load_average": {"before": load_before, "after": load_after},
        "medians": medians,
        "ratios_ortserve_over_llama": ratios,
        "paired_ratios_ortserve_over_llama": paired_ratios,
        "resident_mb": memory,
        "runs": rows,
    }
    quick = "-quick" if args.quick else ""
    out = args.out or ROOT / "bench" / "results" / f"llamacpp-{args.shape}-{time.strftime('%Y-%m-%d')}{quick}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
