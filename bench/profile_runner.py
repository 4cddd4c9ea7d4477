"""Where one stream's time goes inside a runner: the raw onnxruntime-genai loop against our request loop,
in one process (no pipe, no HTTP), and a cProfile of our loop's per-token work.

    python bench/profile_runner.py [--shape smollm2-135m|tiny] [--precision int4] [--tokens 256] [--top 25]

Measured on the model bench_generation.py builds (random weights, no download), greedy, batch 1, every
figure the best of --repeats runs:
  raw          og.Generator: append_tokens, then generate_next_token / get_next_tokens until the budget;
  runner       GeneratorRequest.step() until Finished: the prefill chunks, then per token the search step,
               TokenEvents (end tokens, detokenizer, stop strings) and the events;
and prints cProfile's top functions (own time) for the runner loop. bench_generation.py gives the HTTP stream
on the same model; the difference between `runner` and it is the pipe, the server and the HTTP client.
Writes bench/results/runner-profile-<shape>-<precision>.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generation import ROOT, SHAPES, build, chat_prompt  # noqa: E402


def load(folder: Path, threads: int):
    """The model as a runner loads it (the same og.Config, threads and tokenizers)."""
    from ortserve.server.engine import generator_scheduler, ipc

    options = ipc.RunnerOptions(None, "cpu", threads, 1, 128, prompt_cache_bytes=0)
    model, _ = generator_scheduler.load(folder, options)
    return model


def raw(model, ids, tokens: int) -> dict:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model.og())
    params.set_search_options(max_length=len(ids) + tokens, min_length=len(ids) + tokens, do_sample=False)
    gen = og.Generator(model.og(), params)
    start = time.perf_counter()
    gen.append_tokens(ids)
    gen.generate_next_token()
    int(gen.get_next_tokens()[0])
    first = time.perf_counter()
    n = 1
    while n < tokens:
        gen.generate_next_token()
        int(gen.get_next_tokens()[0])
        n += 1
    end = time.perf_counter()
    return {"ttft_ms": (first - start) * 1000, "decode_tok_s": (n - 1) / (end - first), "tokens": n}


def runner(model, messages, tokens: int) -> dict:
    from ortserve.server.engine.admission import admit
    from ortserve.server.engine.generation import Finished, GenerationRequest, Prompt, SamplingParams, TextDelta
    from ortserve.server.engine.generator_request import GeneratorRequest

    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=0)
    request = GeneratorRequest(1, model, admit(model, GenerationRequest("r", Prompt(messages=messages), params)), 128)
    start = time.perf_counter()
    request.start()
    first = None
    n = 0
    while not request.done:
        for event in request.step():
            if isinstance(event, TextDelta):
                first = first or time.perf_counter()
            if isinstance(event, Finished):
                n = event.completion_tokens
    end = time.perf_counter()
    first = first or end
    return {"ttft_ms": (first - start) * 1000, "decode_tok_s": (n - 1) / (end - first), "tokens": n}


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["ttft_ms"]) | {"decode_tok_s": max(r["decode_tok_s"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="smollm2-135m")
    parser.add_argument("--precision", default="int4")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "ortserve-bench")
    args = parser.parse_args()

    import numpy as np
    from bench_generation import PROMPT

    from ortserve.core.devices import physical_cores

    name = build(args.home, args.shape, args.precision)
    folder = args.home / "models" / name
    threads = physical_cores()
    messages = [{"role": "user", "content": PROMPT}]
    model = load(folder, threads)
    ids = np.asarray(model.tokenizer.encode(chat_prompt(folder)), dtype=np.int32)
    results = {
        "raw": best([raw(model, ids, args.tokens) for _ in range(args.repeats)]),
        "runner": best([runner(model, messages, args.tokens) for _ in range(args.repeats)]),
    }
    profiler = cProfile.Profile()
    profiler.enable()
    runner(model, messages, args.tokens)
    profiler.disable()

    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.top)
    print(text.getvalue())
    print(f"{args.shape} {args.precision}, {len(ids)}-token prompt, {args.tokens} new tokens, {threads} threads")
    print(f"{'loop':<16}{'TTFT ms':>10}{'decode tok/s':>14}")
    for key, r in results.items():
        print(f"{key:<16}{r['ttft_ms']:>10.1f}{r['decode_tok_s']:>14.1f}")
    result = {
        "shape": args.shape,
        "precision": args.precision,
        "prompt_tokens": len(ids),
        "tokens": args.tokens,
        "threads": threads,
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "loops": results,
        "runner_profile_top": [line for line in text.getvalue().splitlines() if line.strip()][: args.top + 8],
        "date": time.strftime("%Y-%m-%d"),
    }
    out = ROOT / "bench" / "results" / f"runner-profile-{args.shape}-{args.precision}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
