"""Numerical validation of a converted embedding model against sentence-transformers.

`check_export` first compares the fp32 graph with the PyTorch module on several shapes. Then the
candidate side is exactly what the server runs: an onnxruntime session, the converted
folder's `tokenizers` tokenizer and `ortserve.core.encoder` (`embed_texts`: the server's tokenizing,
padding and numpy pooling). The reference
is `SentenceTransformer(src).encode(...)` in PyTorch on the CPU. The figure that counts is the
per-sentence cosine between the two (min and mean over `VALIDATION_SENTENCES`); the bar per
precision is in `MIN_COSINE`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ortserve.conversion.common import Progress, ValidationFailedError

if TYPE_CHECKING:
    from ortserve.conversion.embedding_source import EmbeddingSource

MIN_COSINE = {"fp32": 0.999, "fp16": 0.999, "int8": 0.99}
EXPORT_MAX_ABS_DIFF = 1e-3  # fp32 ONNX vs PyTorch, on last_hidden_state

# Short, long (truncated at max_seq_length), code, numbers, and several scripts.
VALIDATION_SENTENCES = (
    "Hello!",
    "a",
    "What is the capital of France?",
    "The quick brown fox jumps over the lazy dog.",
    "ONNX Runtime runs the same model on Windows, Linux and macOS, on CPUs and GPUs.",
    "The central bank left interest rates unchanged, citing persistent inflation in services.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "def add(a, b):\n    return a + b  # returns the sum",
    "Order #4521: 3 x USB-C cables @ $9.99 each, shipped 2024-05-17.",
    "   leading and trailing spaces, and UPPER case WORDS   ",
    "Ça va? Les élèves étudient à la bibliothèque près de la gare.",
    "Grüße aus München! Die Straße ist heute gesperrt.",
    "¿Dónde está la estación de tren más cercana?",
    "Привет, мир! Как дела?",
    "Ο καιρός είναι καλός σήμερα.",
    "東京は日本の首都です。",
    "你好，世界。今天天气很好。",
    "مرحبا بالعالم",
    "Emoji test 🙂🚀🔥 and symbols ∑ ∞ ≠",
    " ".join(["Long documents are truncated to the model's maximum sequence length, so this sentence repeats"] * 40),
)


def providers_for(device: str) -> list[str]:
    """onnxruntime providers for a device name: its own when it really runs here (`devices`: what loads, not what
    onnxruntime lists; CUDA's libraries are loaded then), and the CPU behind it."""
    from ortserve.core import devices

    name = {"directml": "dml"}.get(device.lower(), device.lower())
    if name == "cpu" or name not in devices.PROVIDERS:
        return ["CPUExecutionProvider"]
    if devices.unavailable(name, devices.detect(ort=True), "embeddings") is not None:
        return ["CPUExecutionProvider"]
    try:
        devices.load_libraries(name, "embeddings")
    except devices.DeviceUnavailableError:
        return ["CPUExecutionProvider"]
    return devices.ort_providers(name)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
    b = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
    return (a * b).sum(axis=1)


def reference_embeddings(source: EmbeddingSource, sentences: Sequence[str]) -> np.ndarray:
    """sentence-transformers' embeddings of `sentences` (the default prompt applied, as `encode` does)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(source.root), device="cpu")
    model.max_seq_length = source.max_seq_length
    return np.asarray(model.encode(list(sentences), batch_size=32, convert_to_numpy=True), dtype=np.float32)


def onnx_embeddings(out: Path, manifest: dict, sentences: Sequence[str], *, device: str = "cpu") -> np.ndarray:
    """The converted folder's embeddings through the serving code path."""
    import onnxruntime as ort

    from ortserve.core.encoder import embed_texts, load_tokenizer

    session = ort.InferenceSession(str(Path(out) / "model.onnx"), providers=providers_for(device))
    prompts = manifest.get("prompts") or {}
    return embed_texts(
        session,
        load_tokenizer(out),
        sentences,
        pooling=manifest["pooling"],
        normalize=manifest["normalize"],
        prompt=prompts.get(manifest.get("default_prompt_name") or ""),
        lowercase=manifest.get("lowercase", False),
    )


def check_export(module, onnx_path: Path, source: EmbeddingSource, *, progress: Progress | None = None) -> dict:
    """Max |ONNX Runtime - PyTorch| of last_hidden_state on several (batch, sequence) shapes, padding included."""
    import onnxruntime as ort
    import torch

    from ortserve.conversion.embedding_source import dummy_inputs
    from ortserve.core.encoder import ONNX_OUTPUT

    shapes = ((1, 5), (3, 37), (2, min(source.max_seq_length, 512)))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for seed, (batch, seq) in enumerate(shapes, start=1):
        feeds = dummy_inputs(source.encoder.inputs, int(source.config.get("vocab_size", 1000)), batch, seq, seed)
        with torch.no_grad():
            ref = module(**feeds).numpy()
        (got,) = session.run([ONNX_OUTPUT], {k: v.numpy() for k, v in feeds.items()})
        worst = max(worst, float(np.abs(got - ref).max()))
    figures = {"export_max_abs_diff": worst, "export_shapes": [list(s) for s in shapes]}
    if progress:
        progress.info(f"    ONNX vs PyTorch on shapes {shapes}: max |diff| {worst:.2e}")
    if not worst <= EXPORT_MAX_ABS_DIFF:
        raise ValidationFailedError(
            f"the exported graph differs from PyTorch by {worst:.3g} (limit {EXPORT_MAX_ABS_DIFF})", figures
        )
    return figures


def validate_embedding(
    source: EmbeddingSource,
    out: Path,
    manifest: dict,
    *,
    progress: Progress | None = None,
    sentences: Sequence[str] = VALIDATION_SENTENCES,
) -> dict:
    """Compare the converted model with sentence-transformers; return the figures or raise ValidationFailedError."""
    precision = manifest["precision"]
    device = manifest.get("device", "cpu")
    providers = providers_for(device)
    if progress and device.lower() != "cpu" and providers == ["CPUExecutionProvider"]:
        progress.info(f"    no onnxruntime provider for {device!r} here: validating on the CPU")

    start = time.perf_counter()
    ours = onnx_embeddings(out, manifest, sentences, device=device)
    onnx_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = reference_embeddings(source, sentences)
    ref_s = time.perf_counter() - start

    cos = cosine_rows(ours, ref)
    worst = int(np.argmin(cos))
    bar = MIN_COSINE[precision]
    figures = {
        "reference": "sentence-transformers",
        "provider": providers[0],
        "sentences": len(sentences),
        "min_cosine": round(float(cos.min()), 6),
        "mean_cosine": round(float(cos.mean()), 6),
        "min_cosine_required": bar,
        "worst_sentence": sentences[worst][:60],
        "dimensions": int(ours.shape[1]),
        "onnx_seconds": round(onnx_s, 3),  # includes session creation
        "reference_seconds": round(ref_s, 3),  # includes model loading
    }
    if manifest.get("normalize"):
        figures["max_norm_error"] = float(np.abs(np.linalg.norm(ours, axis=1) - 1).max())
    if progress:
        progress.info(
            f"    cosine vs sentence-transformers over {len(sentences)} sentences: "
            f"min {figures['min_cosine']:.5f}, mean {figures['mean_cosine']:.5f} (bar {bar})"
        )
    if ours.shape[1] != manifest["dimensions"] or ours.shape != ref.shape:
        raise ValidationFailedError(
            f"embedding size mismatch: ONNX gives {ours.shape[1]}, sentence-transformers {ref.shape[1]}, "
            f"manifest says {manifest['dimensions']}",
            figures,
        )
    if not cos.min() >= bar:  # also catches NaN
        raise ValidationFailedError(
            f"{precision} embeddings miss the bar: min cosine {cos.min():.5f} < {bar} "
            f"(mean {cos.mean():.5f}, {len(sentences)} sentences, worst: {sentences[worst][:40]!r})",
            figures,
        )
    return figures
