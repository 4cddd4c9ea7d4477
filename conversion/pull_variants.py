"""What a hub repository holds that ortserve can serve as it is, read from its file listing (no download).

Two layouts are recognised:
- onnxruntime-genai folders, as Microsoft and others publish them: one variant per folder that holds a
  `genai_config.json` (`cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4`, `cuda/cuda-fp16`,
  `directml/directml-int4-awq-block-128`, or the repository's root). The device and precision are read
  from the folder's path, as those repositories name them.
- sentence-transformers repositories that ship `onnx/model*.onnx` (`model.onnx`, `model_O4.onnx`,
  `model_qint8_avx512.onnx`, ...): one variant per ONNX file, served with the repository's tokenizer and its
  sentence-transformers pooling and normalization.

`pick` chooses the variant for a device (or the one named by `REPO:VARIANT`); everything here is pure data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ortserve.conversion.common import ConversionError

GENAI_CONFIG = "genai_config.json"
GENAI = "onnxruntime-genai"
ONNX_EMBEDDING = "sentence-transformers onnx"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ONNX_FILE = re.compile(r"^onnx/(model[\w.-]*)\.onnx$")
# path words that name where a genai build runs (Microsoft's folders say "gpu" for their CUDA builds)
_DEVICE_WORDS = {
    "cuda": "cuda",
    "gpu": "cuda",
    "directml": "dml",
    "dml": "dml",
    "cpu": "cpu",
    "mobile": "cpu",
    "webgpu": "webgpu",
    "npu": "npu",
    "qnn": "qnn",
    "openvino": "openvino",
    "rocm": "rocm",
}
_PRECISIONS = ("int4", "int8", "fp16", "bf16", "fp32")


@dataclass(frozen=True)
class Variant:
    """One servable build in a repository: its name (a folder, or an ONNX file's stem), what it is, its files."""

    name: str
    kind: str  # GENAI or ONNX_EMBEDDING
    device: str  # the device it is built for ("any" for an embedding graph)
    precision: str
    files: tuple[str, ...]  # repository paths to download
    size: int  # bytes

    @property
    def short(self) -> str:
        return self.name.rsplit("/", 1)[-1] or "."


def split_reference(reference: str) -> tuple[str, str | None]:
    """`owner/name[:VARIANT]` -> (repo id, variant or None); a one-line error for anything else."""
    repo, _, variant = reference.partition(":")
    if not _HUB_ID.match(repo):
        raise ConversionError(f"{reference}: not a hub id of the form owner/name[:VARIANT]")
    return repo, (variant or None)


def _words(path: str) -> list[str]:
    return [w for w in re.split(r"[/_\-.]", path.lower()) if w]


def _genai_device(folder: str) -> str:
    for word in reversed(_words(folder)):  # the innermost folder's words first ("cpu_and_mobile/cpu-int4-...")
        if word in _DEVICE_WORDS:
            return _DEVICE_WORDS[word]
    return "cpu"  # a repository with one unnamed build: onnxruntime-genai's default, the CPU


def _precision(path: str, default: str) -> str:
    words = _words(path)
    for precision in _PRECISIONS:
        if precision in words or any(w.startswith(precision) for w in words):
            return precision
    if any(w in ("qint8", "quint8", "uint8", "quantized", "q8") for w in words):
        return "int8"
    if any(w in ("q4", "q4f16", "bnb4") for w in words):
        return "int4"
    if "o4" in words:  # optimum's O4: fp16 for GPUs
        return "fp16"
    return default


def find_variants(sizes: Mapping[str, int]) -> list[Variant]:
    """The servable variants in a repository listing ({path: size}); [] when there is none."""
    variants = []
    folders = sorted(p[: -len(GENAI_CONFIG)].rstrip("/") for p in sizes if p.rsplit("/", 1)[-1] == GENAI_CONFIG)
    for folder in folders:
        prefix = f"{folder}/" if folder else ""
        # the files of this folder only: a root build does not take the other builds' folders with it
        files = tuple(sorted(p for p in sizes if p.startswith(prefix) and "/" not in p[len(prefix) :]))
        if not any(f.endswith(".onnx") for f in files):
            continue
        variants.append(
            Variant(
                folder,
                GENAI,
                _genai_device(folder),
                _precision(folder, "prebuilt"),
                files,
                sum(sizes[f] for f in files),
            )
        )
    if variants:
        return variants
    if "modules.json" not in sizes and "config.json" not in sizes:
        return []
    shared = tuple(sorted(p for p in sizes if _is_embedding_support_file(p)))
    for path in sorted(sizes):
        match = _ONNX_FILE.match(path)
        if not match:
            continue
        stem = match.group(1)
        data = tuple(p for p in sizes if p in (f"onnx/{stem}.onnx_data", f"onnx/{stem}.onnx.data"))
        files = (path, *data, *shared)
        variants.append(
            Variant(stem, ONNX_EMBEDDING, "any", _precision(stem, "fp32"), files, sum(sizes[f] for f in files))
        )
    return variants


def _is_embedding_support_file(path: str) -> bool:
    """The sentence-transformers configs and tokenizer files at the root, and the pooling module's config."""
    if path.startswith(("1_Pooling/", "2_Normalize/")):
        return path.endswith(".json")
    if "/" in path:
        return False
    return path.endswith((".json", ".txt", ".model")) and not path.startswith(".")


def pick(variants: Sequence[Variant], device: str, wanted: str | None, repo: str) -> tuple[Variant, str]:
    """The variant to pull and why: `wanted` (a folder, its last part, or an ONNX file's stem with or without
    `model_`), else the best build for `device` (int4 first, then accuracy level 4 on the CPU, then the smallest),
    else the CPU's when the device has none."""
    if wanted is not None:
        matches = [v for v in variants if wanted in (v.name, v.short, v.name.removeprefix("model_"))]
        if len(matches) == 1:
            return matches[0], "asked for"
        hint = "several match; name the whole folder" if matches else f"variants: {names(variants)}"
        raise ConversionError(f"{repo} has no variant '{wanted}' ({hint}; see: ortserve pull {repo} --list)")
    if variants[0].kind == ONNX_EMBEDDING:
        plain = [v for v in variants if v.name == "model"] or [v for v in variants if v.precision == "fp32"]
        chosen = (plain or sorted(variants, key=lambda v: v.size))[0]
        return chosen, "the full-precision graph" if chosen.precision == "fp32" else "the smallest graph"
    for target in dict.fromkeys((device, "cpu")):
        builds = [v for v in variants if v.device == target]
        if builds:
            best = min(builds, key=lambda v: (v.precision != "int4", "acc-level-4" not in v.name, v.size))
            why = f"the build for {target}" + ("" if target == device else f" (the repository has none for {device})")
            return best, why
    raise ConversionError(
        f"{repo} has no build for {device} or the CPU (variants: {names(variants)}); "
        f"name one with {repo}:VARIANT if this machine can run it"
    )


def names(variants: Sequence[Variant]) -> str:
    return ", ".join(v.name or "." for v in variants)
