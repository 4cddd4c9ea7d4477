"""The two servers compare_llamacpp.py measures: the GGUF through llama.cpp's own tools, starting and stopping
a server process, its resident memory, and a description of the machine for the results file.

llama.cpp stays outside this repository: `source` is its source tree (for `convert_hf_to_gguf.py` and
`gguf-py`), `binaries` the folder holding the `llama-server` and `llama-quantize` built from it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

# Run in a child interpreter with llama.cpp's converter on the path. The pre-tokenizer is forced to gpt-2:
# our tokenizer is a locally trained byte-level BPE, so the converter does not know its hash. The llama
# converter tries a sentencepiece tokenizer.model first and imports sentencepiece before it looks for the file;
# without that file it goes on to tokenizer.json, so the look-up is made to fail first when sentencepiece is
# not installed.
CONVERT = """
import sys
sys.path[:0] = [{src!r}, {src!r} + "/gguf-py"]
import convert_hf_to_gguf as c
try:
    from conversion.base import TextModel  # newer llama.cpp: the converter's classes live in a package
except ImportError:
    TextModel = c.TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sentencepiece_vocab = TextModel._create_vocab_sentencepiece


def without_tokenizer_model(self):
    if not (self.dir_model / "tokenizer.model").is_file():
        raise FileNotFoundError(self.dir_model / "tokenizer.model")
    return sentencepiece_vocab(self)


TextModel._create_vocab_sentencepiece = without_tokenizer_model
sys.argv = ["convert_hf_to_gguf.py", {ckpt!r}, "--outfile", {out!r}, "--outtype", "f16"]
c.main()
"""


def gguf(checkpoint: Path, out: Path, source: Path, binaries: Path) -> Path:
    """`checkpoint` through llama.cpp's converter (f16) and `llama-quantize` to Q4_0 at `out` (once)."""
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    f16 = out.with_name(out.name.replace("q4_0", "f16"))
    if not f16.is_file():
        script = CONVERT.format(src=str(source), ckpt=str(checkpoint), out=str(f16))
        subprocess.run([sys.executable, "-c", script], check=True, cwd=source)
    subprocess.run([str(binaries / "llama-quantize"), str(f16), str(out), "Q4_0"], check=True)
    return out


class Server:
    """A server process started by the benchmark, its output in a temporary log file."""

    def __init__(self, name: str, argv: list[str], env: dict | None, port: int, cwd: Path):
        self.name, self.port, self.argv = name, port, argv
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self.process = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)

    def wait(self, path: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited; see {self.log.name}")
            time.sleep(0.5)
        raise SystemExit(f"{self.name} did not start; see {self.log.name}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def listening_pid(url: str) -> int | None:
    """The pid of the local process listening on `url`'s port (for servers given by URL), if it can be seen."""
    import psutil

    port = httpx.URL(url).port
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except psutil.Error:
        pass
    return None


def resident_mb(pid: int | None) -> float | None:
    """Resident memory of `pid` and its children (ortserve's runners), in MiB."""
    if pid is None:
        return None
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    except psutil.Error:
        return None


def machine() -> dict:
    """CPU model, logical and physical cores, kernel: what a results file needs to be read later."""
    import psutil

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "system": platform.platform(),
    }


CPU_BUILD_OPTIONS = {
    "CMAKE_BUILD_TYPE",
    "LLAMA_CURL",
    "GGML_NATIVE",
    "GGML_FMA",
    "GGML_F16C",
    "GGML_OPENMP",
    "GGML_LLAMAFILE",
    "GGML_CPU_REPACK",
}


def llama_build(binaries: Path) -> dict:
    """`llama-server --version`'s lines naming the build, and the CMake options it was built with (from the
    build folder's CMakeCache.txt, where `binaries` is its bin/)."""
    out: dict = {"version": None, "cmake": {}}
    try:
        done = subprocess.run([str(binaries / "llama-server"), "--version"], capture_output=True, text=True, timeout=30)
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("version", "built"))]
        out["version"] = "; ".join(lines) or None
    except (OSError, subprocess.TimeoutExpired):
        pass
    cache = binaries.parent / "CMakeCache.txt"
    if cache.is_file():
        for line in cache.read_text(encoding="utf-8", errors="replace").splitlines():
            name, _, value = line.partition("=")
            key = name.split(":")[0]
            if key in CPU_BUILD_OPTIONS or (key.startswith(("GGML_AVX", "GGML_AMX")) and value == "ON"):
                out["cmake"][key] = value
    return out


def ortserve_build() -> dict:
    """The ortserve commit and the onnxruntime versions it ran on."""
    from importlib.metadata import PackageNotFoundError, version

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    out = {"commit": done.stdout.strip() or None}
    for package in ("onnxruntime", "onnxruntime-genai"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out
