"""What `ortserve convert` accepts: chat architectures (built by the onnxruntime-genai
model builder) and which precision runs on which device.

Embedding architectures register themselves in `ortserve.conversion.embedding_source`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ortserve.conversion.common import ConversionError
from ortserve.core.devices import BUILD_DEVICES

PRECISIONS = ("int4", "int8", "fp16", "fp32")


@dataclass(frozen=True)
class ChatArchitecture:
    hf_class: str
    family: str  # the chat/tool-call family used by the server (hermes, llama3, mistral, phi)


CHAT_ARCHITECTURES: dict[str, ChatArchitecture] = {}


def register_chat(*hf_classes: str, family: str) -> None:
    for cls in hf_classes:
        CHAT_ARCHITECTURES[cls] = ChatArchitecture(cls, family)


# Text decoders the onnxruntime-genai 0.18 builder supports and we have checked the
# builder for. Vision-language classes come with their own exporter (later issue).
register_chat("LlamaForCausalLM", "MistralForCausalLM", "GraniteForCausalLM", "OlmoForCausalLM", family="llama3")
register_chat("Qwen2ForCausalLM", "Qwen3ForCausalLM", "SmolLM3ForCausalLM", family="hermes")
register_chat("Phi3ForCausalLM", "PhiForCausalLM", family="phi")
register_chat("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", family="gemma")
register_chat("NemotronForCausalLM", "InternLM2ForCausalLM", "Ernie4_5ForCausalLM", family="generic")

# Vision-language models: the builder makes the text decoder (exclude_embeds=true), conversion/vision.py
# exports the vision encoder and embeddings. Qwen2.5-VL is the type onnxruntime-genai 0.18 runs exactly
# as transformers does (see conversion/vision.py for why not Gemma 3 or Phi-3.5-vision).
VISION_ARCHITECTURES: frozenset[str] = frozenset({"Qwen2_5_VLForConditionalGeneration"})
register_chat(*VISION_ARCHITECTURES, family="hermes")


# (task, device) -> precisions that build AND load there, best first (the default).
_MATRIX: dict[tuple[str, str], tuple[str, ...]] = {
    ("chat", "cpu"): ("int4", "int8", "fp32"),
    # measured on an H100: the builder's cuda+fp32 output fails to load ("present.0.key does not exist");
    # CUDA builds use paged attention (og.Engine), which the builder documents for fp16/bf16 only
    ("chat", "cuda"): ("fp16",),
    ("chat", "dml"): ("int4", "fp16"),
    ("embedding", "cpu"): ("fp32", "int8"),
    ("embedding", "cuda"): ("fp16", "fp32"),
    ("embedding", "dml"): ("fp16", "fp32"),
    ("embedding", "coreml"): ("fp32", "fp16"),
}

_WHY: dict[tuple[str, ...], str] = {
    ("chat", "coreml"): "onnxruntime-genai's models (GroupQueryAttention, MatMulNBits) do not run on CoreML; "
    "on a Mac convert chat models with --device cpu (they are served on the CPU)",
    ("chat", "cuda", "fp32"): "the builder's fp32 CUDA model does not load in onnxruntime-genai 0.18 (\"Graph output "
    '(present.0.key) does not exist", seen on an H100), and paged attention needs fp16 '
    "activations; use fp16 (the default)",
    ("chat", "cpu", "fp16"): "fp16 has no fast CPU kernels; use int4 (fastest) or fp32 (exact) on cpu",
    **{
        ("chat", "cuda", precision): "CUDA chat models are built with paged attention (og.Engine's continuous "
        "batching), which the onnxruntime-genai builder supports for fp16/bf16 only, and a paged "
        f"{precision} build has not been shown to work; use --precision fp16 (the CUDA default), or "
        f"`ortserve pull` a ready {precision} CUDA build (not paged: served one og.Generator per request)"
        for precision in ("int4", "int8")
    },
}


def check_precision(task: str, device: str, precision: str | None) -> str:
    """Return the precision to build (the default when None), or raise a one-line ConversionError."""
    if device not in BUILD_DEVICES:
        raise ConversionError(f"unknown device '{device}'; choose from {', '.join(BUILD_DEVICES)}")
    allowed = _MATRIX.get((task, device))
    if not allowed:
        raise ConversionError(_WHY.get((task, device), f"{task} models cannot be built for {device}"))
    if precision is None:
        return allowed[0]
    if precision not in PRECISIONS:
        raise ConversionError(f"unknown precision '{precision}'; choose from {', '.join(PRECISIONS)}")
    if precision not in allowed:
        why = _WHY.get((task, device, precision), f"{task} models for {device} can be built as {', '.join(allowed)}")
        raise ConversionError(f"--precision {precision} is not available with --device {device}: {why}")
    return precision


def chat_architecture(architectures: list[str] | None) -> ChatArchitecture:
    name = (architectures or ["?"])[0]
    try:
        return CHAT_ARCHITECTURES[name]
    except KeyError:
        raise ConversionError(
            f"unsupported chat architecture '{name}'; supported: {', '.join(sorted(CHAT_ARCHITECTURES))}"
        ) from None
