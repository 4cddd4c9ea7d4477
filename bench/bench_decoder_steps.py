"""Where the CPU's second core goes: the batched decoder's step and prefill times by threads (issue #15).

    python bench/bench_decoder_steps.py [--shape smollm2-135m] [--precision int4] [--home DIR]

On the model bench_generation.py builds (converted once under --home), with the decoder `serve` runs on a CPU
(server/engine/batched_decoder.py), it times:
  1. one decode step of 1, 4, 8 and 16 rows (KV of 200 tokens each) and one 128-token prefill chunk, with 1 and
     with 2 intra-op threads, and the process's CPU time per call (how many cores it kept busy);
  2. the same work as two single-threaded runs at once on one session, on disjoint rows (two Python threads:
     onnxruntime releases the GIL), against one run with 2 threads: half the rows each, and two prefill chunks.
Results print and are written to bench/results/decoder-steps-<shape>-<date>.json with the machine and load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_generation import build  # noqa: E402


def timed(call, repeats: int) -> tuple[float, float]:
    """(wall ms, CPU ms of this process) per call, after one warm-up call."""
    call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - wall) / repeats * 1000, (time.process_time() - cpu) / repeats * 1000


def both(first, second) -> None:
    """`first` on a second thread while `second` runs here."""
    other = threading.Thread(target=first)
    other.start()
    second()
    other.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="smollm2-135m")
    parser.add_argument("--precision", default="int4")
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "ortserve-bench")
    args = parser.parse_args()
    from ortserve.server.engine.batched_decoder import BatchedDecoder

    folder = args.home / "models" / build(args.home, args.shape, args.precision)
    rng = np.random.default_rng(0)
    decoders = {threads: BatchedDecoder(folder, 16, threads, max_capacity=8192, capacity=512) for threads in (1, 2)}
    load_before = os.getloadavg()[0]
    steps = []
    for rows in (1, 4, 8, 16):
        ids, lengths = rng.integers(100, 400, size=(rows, 1)), [200] * rows
        for threads, decoder in decoders.items():
            wall, cpu = timed(lambda d=decoder, i=ids, n=lengths: d.run(0, i, n), 40)
            steps.append({"rows": rows, "threads": threads, "ms": round(wall, 2), "cores": round(cpu / wall, 2)})
            print(
                f"decode step, {rows:2d} rows, {threads} thread(s): {wall:6.1f} ms, {cpu / wall:.2f} cores", flush=True
            )
    chunk = rng.integers(100, 400, size=(1, 128))
    prefill = []
    for threads, decoder in decoders.items():
        wall, cpu = timed(lambda d=decoder: d.run(0, chunk, [0]), 5)
        prefill.append({"tokens": 128, "threads": threads, "ms": round(wall, 1), "cores": round(cpu / wall, 2)})
        print(f"prefill 128 tokens, {threads} thread(s): {wall:6.1f} ms, {cpu / wall:.2f} cores", flush=True)

    one, two = decoders[1], decoders[2]
    concurrent = []
    for rows in (2, 4, 8, 16):
        ids, lengths, half = rng.integers(100, 400, size=(rows, 1)), [200] * rows, rows // 2
        together, _ = timed(lambda i=ids, n=lengths: two.run(0, i, n), 30)
        split, _ = timed(
            lambda i=ids, n=lengths, h=half: both(lambda: one.run(h, i[h:], n[h:]), lambda: one.run(0, i[:h], n[:h])),
            30,
        )
        concurrent.append(
            {"rows": rows, "one_run_2_threads_ms": round(together, 2), "two_runs_1_thread_ms": round(split, 2)}
        )
        print(f"{rows:2d} rows: one run, 2 threads {together:5.1f} ms; two runs of {half} rows at once {split:5.1f} ms")
    sequential, _ = timed(lambda: (two.run(0, chunk, [0]), two.run(1, chunk, [0])), 4)
    parallel, _ = timed(lambda: both(lambda: one.run(1, chunk, [0]), lambda: one.run(0, chunk, [0])), 4)
    print(
        f"two 128-token prefill chunks: one after the other, 2 threads {sequential:.1f} ms; at once {parallel:.1f} ms"
    )

    result = {
        "shape": args.shape,
        "precision": args.precision,
        "date": str(datetime.date.today()),
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs, {platform.platform()}",
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "decode_steps": steps,
        "prefill": prefill,
        "concurrent_runs": concurrent,
        "two_prefill_chunks": {
            "sequential_2_threads_ms": round(sequential, 1),
            "at_once_1_thread_ms": round(parallel, 1),
        },
    }
    out = ROOT / "bench" / "results" / f"decoder-steps-{args.shape}-{datetime.date.today()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
