"""Chat models: the onnxruntime-genai model builder, run as a tool in a subprocess.

We never import the builder's internals: it is one very large class behind an
if/elif chain. We pass it the options that matter and check its output.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

from ortserve.conversion.common import ConversionError, Progress, ValidationFailedError
from ortserve.conversion.registry import chat_architecture
from ortserve.conversion.source import read_config

# CUDA builds use paged attention, so og.Engine batches concurrent requests continuously (measured on an
# H100, fp16: 1 / 4 / 32 / 64 streams at 425 / 1,409 / 5,713 / 7,138 tokens/s in all). Such a model is
# Engine-only (the Generator rejects it): the server serves it through server/engine/engine_scheduler.py.
_PAGED = {"use_paged_attention": "true"}
# Measured (SmolLM2-135M shape, 2 cores): accuracy_level=4 decodes 93 tok/s, level 1 only 42.
# The builder silently ignores the `int4_*` spellings, so only these names are passed.
_EXTRA_OPTIONS: dict[tuple[str, str], dict[str, object]] = {
    ("int4", "cpu"): {"block_size": 32, "accuracy_level": 4},
    ("int8", "cpu"): {"block_size": 32, "accuracy_level": 4},
    ("fp16", "cuda"): {**_PAGED},
    ("int4", "dml"): {"block_size": 32},
}

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


def run_builder(
    src: Path,
    out: Path,
    precision: str,
    device: str,
    progress: Progress,
    *,
    paged: bool = True,
    options: dict | None = None,
) -> dict:
    """Build the ONNX decoder into `out`; returns the extra options used. `options` adds builder extra
    options (vision models: `exclude_embeds`); `paged=False` leaves paged attention out (as the builder
    requires when the embeddings are excluded)."""
    extra = {**_EXTRA_OPTIONS.get((precision, device), {}), **(options or {})}
    if not paged or extra.get("exclude_embeds") in (True, "true", "True", "1"):
        extra = {k: v for k, v in extra.items() if k not in _PAGED}
    cache = out / ".builder-cache"
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-m",
        str(src),
        "-i",
        str(src),
        "-o",
        str(out),
        "-p",
        precision,
        "-e",
        device,
        "-c",
        str(cache),
    ]
    if extra:
        cmd += ["--extra_options", *(f"{k}={v}" for k, v in extra.items())]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    tail: deque[str] = deque(maxlen=40)
    with progress.step(f"build ONNX decoder ({precision}, {device}) with the onnxruntime-genai builder"):
        with subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            encoding="utf-8",
            errors="replace",
        ) as proc:
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    line = line.rstrip()
                    tail.append(line)
                    if line.startswith(("Reading", "Saving ONNX", "Saving GenAI")):
                        progress.info(f"    {line}")
                code = proc.wait()
            finally:
                if proc.poll() is None:  # Ctrl-C or an error here: never leave the builder running
                    proc.kill()
                    proc.wait()
        shutil.rmtree(cache, ignore_errors=True)
    if code != 0:
        reason = next((ln for ln in reversed(tail) if "Error" in ln or "error" in ln), tail[-1] if tail else "")
        raise ConversionError(f"the onnxruntime-genai builder failed (exit {code}): {reason.strip()}")
    if not (out / "genai_config.json").is_file():
        raise ConversionError("the onnxruntime-genai builder wrote no genai_config.json")
    return extra


def _fix_genai_config(src_config: dict, out: Path) -> int:
    """Correct what the builder guesses; returns the model's context length."""
    path = out / "genai_config.json"
    genai = json.loads(path.read_text(encoding="utf-8"))
    model = genai["model"]
    if src_config.get("bos_token_id") is None and model.get("bos_token_id") == 1:
        # The builder writes bos_token_id=1 when the checkpoint has none: that is an arbitrary token.
        model.pop("bos_token_id", None)
    path.write_text(json.dumps(genai, indent=4), encoding="utf-8")
    return int(model["context_length"])


def convert_chat(
    src: Path, out: Path, *, precision: str, device: str, progress: Progress, validate: bool = True
) -> dict:
    config = read_config(src)
    arch = chat_architecture(config.get("architectures"))
    if not any((src / f).is_file() for f in _TOKENIZER_FILES):
        raise ConversionError(f"{src}: no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    if not any(src.glob("*.safetensors")) and not any(src.glob("*.bin")):
        raise ConversionError(f"{src}: no weights (*.safetensors or *.bin)")
    extra = run_builder(src, out, precision, device, progress)
    context_length = _fix_genai_config(config, out)
    paged = "use_paged_attention" in extra
    manifest = {
        "task": "chat",
        "architecture": arch.hf_class,
        "family": arch.family,
        "model_type": config["model_type"],
        "precision": precision,
        "device": device,
        "context_length": context_length,
        "builder_options": extra,
    }
    if validate:
        from ortserve.conversion.validate_chat import validate_chat

        with progress.step("validate against PyTorch"):
            if paged:
                manifest["validation"] = _validate_paged(
                    src, out, config, precision=precision, device=device, progress=progress
                )
            else:
                manifest["validation"] = validate_chat(src, out, precision=precision, device=device, progress=progress)
    return manifest


def _validate_paged(src: Path, out: Path, config: dict, *, precision: str, device: str, progress: Progress) -> dict:
    """og.Generator (which validation reads logits through) cannot run a paged-attention model, and og.Engine
    exposes no logits. So on a machine with CUDA the same build is made again without paged attention (the
    same weights, quantized the same way; only the attention operator differs) and that one is validated
    against PyTorch; then the paged build itself must give the twin's greedy tokens through og.Engine
    (`_paged_tokens_match`), so a paged-only failure shows here, not first in `serve`."""
    from ortserve.conversion.validate_chat import cannot_run, validate_chat

    if cannot_run(device):  # what really loads, not og.is_cuda_available(): validate_chat says it skipped, and why
        return validate_chat(src, out, precision=precision, device=device, progress=progress)
    twin = out / ".unpaged-for-validation"
    try:
        run_builder(src, twin, precision, device, progress, paged=False)
        _fix_genai_config(config, twin)
        figures = validate_chat(src, twin, precision=precision, device=device, progress=progress)
        figures["paged_greedy_tokens"] = _paged_tokens_match(out, twin)
    finally:
        shutil.rmtree(twin, ignore_errors=True)
    return {**figures, "build_checked": "the same build without paged attention, then the paged build's tokens"}


_PAGED_PROMPT = "The quick brown fox jumps over the lazy dog. Then the fox"
_PAGED_TOKENS = 16


def _paged_tokens_match(paged: Path, twin: Path) -> str:
    """The paged build's greedy tokens through og.Engine against the unpaged twin's through og.Generator, for
    one prompt; "n/n" when they agree, else ValidationFailedError.

    NOT RUN HERE: it needs a CUDA GPU (a paged model loads only there), which the machines this was written
    on do not have. Written from onnxruntime-genai 0.18's Engine API as server/engine/engine_scheduler.py
    uses it; bench/gpu_check or the first `convert --device cuda` on a GPU is its first run."""
    import onnxruntime_genai as og

    model = og.Model(str(twin))
    ids = [int(t) for t in og.Tokenizer(model).encode(_PAGED_PROMPT)]
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + _PAGED_TOKENS)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    expected: list[int] = []
    while not generator.is_done() and len(expected) < _PAGED_TOKENS:
        generator.generate_next_token()
        expected.append(int(generator.get_next_tokens()[0]))
    del generator, model  # one model on the GPU at a time

    engine = og.Engine(og.Model(str(paged)))
    request_options = og.RequestOptions()
    request_options.set_max_session_tokens(len(ids) + _PAGED_TOKENS)
    request = engine.create_request(options=request_options)
    got: list[int] = []
    try:
        turn = og.TurnOptions(request)
        turn.set_max_generated_tokens(_PAGED_TOKENS)
        turn.set_do_sample(False)
        request.begin_turn(ids, turn)
        buffer = engine.create_event_buffer(1024)
        while engine.has_pending_requests():
            events = engine.run(buffer)
            for i in range(len(events)):
                flags = events[i].flags
                if int(getattr(flags, "value", flags)) & 1 and events[i].token is not None:  # og.EngineEventFlags.TOKEN
                    got.append(int(events[i].token))
    finally:
        request.close()
    same = sum(1 for _ in itertools.takewhile(lambda pair: pair[0] == pair[1], zip(got, expected, strict=False)))
    figure = f"{same}/{len(expected)}"
    if got[: len(expected)] != expected:
        raise ValidationFailedError(
            f"the paged-attention build's greedy tokens (og.Engine) differ from the same build without paged "
            f"attention after {same} of {len(expected)}, so og.Engine would not serve what was validated; "
            "`ortserve pull` a ready CUDA build instead",
            {"paged_greedy_tokens": figure},
        )
    return figure
