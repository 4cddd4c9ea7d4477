"""Generation benchmark: the HTTP stream against the raw onnxruntime-genai loop.

    python bench/bench_generation.py [--shape smollm2-135m|tiny] [--precision int4] [--tokens 128]

Builds a random-weight checkpoint of the chosen shape (no download), converts it
with `ortserve convert`, then measures on the same model and machine:
  1. the raw onnxruntime-genai loop (Generator, batch 1) and the raw batched decoder on one row (what `serve`
     runs on a CPU): time to first token, decode tokens/s;
  2. one HTTP stream through `ortserve serve` with the openai client: the same figures;
  3. aggregate completion tokens/s for 1, 4, 8 and 16 concurrent HTTP streams (`--streams`).
Results print as a table and are written to bench/results/generation-<shape>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    # SmolLM2-135M's decoder shape and vocabulary size (our small local tokenizer uses the first ~650 ids)
    "smollm2-135m": dict(
        hidden_size=576,
        num_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        vocab_size=49152,
        context_length=8192,
    ),
    # Qwen2.5-0.5B's, closer to what desktop users run
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        num_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        context_length=32768,
        architecture="qwen2",
    ),
    # Llama-3.2-1B's (bench/gpu_check.py measures it on a GPU)
    "llama3.2-1b": dict(
        hidden_size=2048,
        num_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
        context_length=8192,
    ),
    "tiny": dict(hidden_size=64, num_layers=2),
}
PROMPT = "Tell me a long story about the weather in Paris, the quick brown fox and the lazy dog. " * 6


def build_checkpoint(folder: Path, shape: str) -> Path:
    """The random-weight Hugging Face checkpoint of `shape` (also what llama.cpp's converter reads)."""
    from ortserve.conversion.demo import build_tiny_chat_checkpoint

    overrides = dict(SHAPES[shape])
    hidden, layers = overrides.pop("hidden_size"), overrides.pop("num_layers")
    architecture = str(overrides.pop("architecture", "llama"))
    return build_tiny_chat_checkpoint(folder, architecture, hidden_size=hidden, num_layers=layers, **overrides)


def checkpoint(home: Path, shape: str) -> Path:
    """`shape`'s checkpoint, kept under `home/checkpoints` (built once)."""
    folder = home / "checkpoints" / shape
    if not (folder / "config.json").is_file():
        build_checkpoint(folder, shape)
    return folder


def build(home: Path, shape: str, precision: str) -> str:
    """`shape` converted with `ortserve convert` into the store at `home` (once); its name."""
    from ortserve.server.cli import main

    name = f"bench-{shape}-{precision}"
    if (home / "models" / name / "manifest.json").is_file():
        return name
    ckpt = checkpoint(home, shape)
    os.environ["ORTSERVE_HOME"] = str(home)
    if main(["convert", str(ckpt), "--name", name, "--precision", precision, "--quiet", "--no-validate"]):
        raise SystemExit("conversion failed")
    return name


def chat_prompt(folder: Path) -> str:
    import onnxruntime_genai as og

    tok = og.Tokenizer(og.Model(str(folder)))
    return tok.apply_chat_template(json.dumps([{"role": "user", "content": PROMPT}]), add_generation_prompt=True)


def raw_loop(folder: Path, tokens: int) -> dict:
    import onnxruntime_genai as og

    from ortserve.core.devices import physical_cores

    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": physical_cores()}}}}))
    model = og.Model(config)
    tok = og.Tokenizer(model)
    ids = tok.encode(chat_prompt(folder))
    results = []
    for _ in range(3):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + tokens, min_length=len(ids) + tokens, do_sample=False)
        gen = og.Generator(model, params)
        start = time.perf_counter()
        gen.append_tokens(ids)
        gen.generate_next_token()
        first = time.perf_counter()
        n = 1
        while not gen.is_done():
            gen.generate_next_token()
            n += 1
        end = time.perf_counter()
        results.append(
            {
                "ttft_ms": (first - start) * 1000,
                "decode_tok_s": (n - 1) / (end - first),
                "prompt_tokens": len(ids),
                "tokens": n,
            }
        )
    return min(results, key=lambda r: r["ttft_ms"]) | {"decode_tok_s": max(r["decode_tok_s"] for r in results)}


def raw_batched(folder: Path, tokens: int) -> dict:
    """The batched decoder's own loop on one row (what `serve` runs on a CPU): prefill in 128-token chunks,
    then greedy steps; no server, no pipe."""
    import numpy as np
    import onnxruntime_genai as og

    from ortserve.core.devices import physical_cores
    from ortserve.server.engine.batched_decoder import BatchedDecoder

    ids = np.asarray(og.Tokenizer(og.Config(str(folder))).encode(chat_prompt(folder)), dtype=np.int64)
    decoder = BatchedDecoder(folder, 1, physical_cores(), max_capacity=len(ids) + tokens + 1)
    decoder.reshape(1, decoder.capacity_for(len(ids) + tokens + 1), {})
    results = []
    for _ in range(3):
        start = time.perf_counter()
        for at in range(0, len(ids), 128):
            logits = decoder.run(0, ids[None, at : at + 128], [at])
        token = int(np.argmax(logits[0]))
        first = time.perf_counter()
        for n in range(1, tokens):
            logits = decoder.run(0, np.asarray([[token]]), [len(ids) + n - 1])
            token = int(np.argmax(logits[0]))
        end = time.perf_counter()
        results.append({"ttft_ms": (first - start) * 1000, "decode_tok_s": (tokens - 1) / (end - first)})
    return min(results, key=lambda r: r["ttft_ms"]) | {"decode_tok_s": max(r["decode_tok_s"] for r in results)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_stream(client, model: str, tokens: int) -> dict:
    start = time.perf_counter()
    first, n = None, 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"min_tokens": tokens},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage:
            n = chunk.usage.completion_tokens
    end = time.perf_counter()
    first = first or end
    return {
        "ttft_ms": (first - start) * 1000,
        "decode_tok_s": (n - 1) / max(end - first, 1e-9),
        "tokens": n,
        "wall_s": end - start,
    }


def at_once(calls: list) -> float:
    """Run `calls` on a thread each, all at once; the seconds until the last one ends."""
    threads = [threading.Thread(target=call) for call in calls]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def concurrent(client, model: str, tokens: int, streams: int) -> dict:
    out: list[dict] = []
    wall = at_once([lambda: out.append(http_stream(client, model, tokens)) for _ in range(streams)])
    return {
        "streams": streams,
        "aggregate_tok_s": sum(r["tokens"] for r in out) / wall,
        "mean_ttft_ms": sum(r["ttft_ms"] for r in out) / len(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="smollm2-135m")
    parser.add_argument("--precision", default="int4")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "ortserve-bench")
    parser.add_argument("--streams", default="1,4,8,16", help="concurrent stream counts, comma-separated")
    parser.add_argument("--num-parallel", type=int, default=8, help="the server's num_parallel")
    parser.add_argument("--no-batch-decode", action="store_true", help="one og.Generator per request")
    args = parser.parse_args()

    import openai

    name = build(args.home, args.shape, args.precision)
    folder = args.home / "models" / name
    raw = raw_loop(folder, args.tokens)
    batched = raw_batched(folder, args.tokens)
    port = free_port()
    # the prompt cache off: every stream here sends the same prompt, and TTFT must compare prefill with prefill
    # (bench_prompt_cache.py measures the cache)
    env = {**os.environ, "ORTSERVE_HOME": str(args.home), "ORTSERVE_PROMPT_CACHE_BYTES": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "ortserve.server.cli", "serve", "--port", str(port), "--no-bootstrap"]
        + ["--num-parallel", str(args.num_parallel)]
        + (["--no-batch-decode"] if args.no_batch_decode else []),
        env=env,
        cwd=ROOT,
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0)
        deadline = time.time() + 120
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        http_stream(client, name, 8)  # warm-up: loads the model runner
        http = max((http_stream(client, name, args.tokens) for _ in range(3)), key=lambda r: r["decode_tok_s"])
        conc = [concurrent(client, name, args.tokens, int(n)) for n in args.streams.split(",")]
    finally:
        server.terminate()
        server.wait(30)

    result = {
        "shape": args.shape,
        "precision": args.precision,
        "tokens": args.tokens,
        "num_parallel": args.num_parallel,
        "batch_decode": not args.no_batch_decode,
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,  # other work on the machine
        "http_over_raw_decode": http["decode_tok_s"] / raw["decode_tok_s"],
        "http_over_raw_batched_decode": http["decode_tok_s"] / batched["decode_tok_s"],
        "raw_genai": raw,
        "raw_batched": batched,
        "http_stream": http,
        "concurrent": conc,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"\n{args.shape} {args.precision}, {raw['prompt_tokens']}-token prompt, {args.tokens} new tokens")
    print(f"{'path':<22}{'TTFT ms':>10}{'decode tok/s':>14}")
    print(f"{'raw onnxruntime-genai':<22}{raw['ttft_ms']:>10.1f}{raw['decode_tok_s']:>14.1f}")
    print(f"{'raw batched decoder':<22}{batched['ttft_ms']:>10.1f}{batched['decode_tok_s']:>14.1f}")
    print(f"{'HTTP stream':<22}{http['ttft_ms']:>10.1f}{http['decode_tok_s']:>14.1f}")
    for c in conc:
        print(
            f"{c['streams']} concurrent streams: {c['aggregate_tok_s']:.1f} tok/s aggregate, "
            f"mean TTFT {c['mean_ttft_ms']:.0f} ms"
        )
    path = "generator" if args.no_batch_decode else "batched"
    out = ROOT / "bench" / "results" / f"generation-{args.shape}-{args.precision}-{path}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
