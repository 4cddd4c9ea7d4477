"""Vision-language chat models: Qwen2.5-VL, as onnxruntime-genai's multimodal path runs it.

Why Qwen2.5-VL (of the VLM types onnxruntime-genai 0.18 runs: phi3v, gemma3,
qwen2_5_vl, ...): transformers 5 ships its class (Phi-3.5-vision needs remote code),
and the runtime reproduces it exactly: it computes the 3-D mrope positions itself and
its decoder is causal, as transformers' is. Gemma 3's transformers model lets image
tokens attend to each other both ways, which the runtime's causal decoder does not,
so its greedy tokens could not be validated against PyTorch.

Steps: the onnxruntime-genai builder writes the text decoder with `exclude_embeds=true`
(inputs_embeds in, type `qwen2_5_vl`); we export the vision encoder and the embedding
step (conversion/vision_export.py), add their `genai_config.json` sections and write
`processor_config.json` (onnxruntime-extensions' image pipeline, from the checkpoint's
preprocessor_config.json); then check against PyTorch (conversion/vision_validate.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ortserve.conversion.common import ConversionError, Progress
from ortserve.conversion.vision_export import EMBEDDING_FILE, VISION_FILE

PROCESSOR_FILE = "processor_config.json"
# Merged tokens per image at most (Qwen's model card suggests 1280 to save memory). Our encoder writes its
# attention windows as [patches x patches] masks and scores, so memory grows with the square of the patches:
# the checkpoints' own max_pixels (12.8 MP, 65,536 patches) would ask one image for hundreds of GB and end
# the runner; 1280 tokens (5,120 patches, 1 MP) take ~2 GB per layer's scores on the 3B model.
MAX_IMAGE_TOKENS = 1280
MODALITIES = ["text", "image"]
_SESSION = {"log_id": "onnxruntime-genai", "provider_options": []}


def genai_sections(config: dict) -> dict:
    """The `model` keys onnxruntime-genai's qwen2_5_vl reads beyond the builder's decoder section."""
    vision = config["vision_config"]
    return {
        "type": "qwen2_5_vl",
        "image_token_id": int(config["image_token_id"]),
        "video_token_id": int(config["video_token_id"]),
        "vision_start_token_id": int(config["vision_start_token_id"]),
        "embedding": {
            "filename": EMBEDDING_FILE,
            "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
            "outputs": {"inputs_embeds": "inputs_embeds"},
            "session_options": dict(_SESSION),
        },
        "vision": {
            "filename": VISION_FILE,
            "config_filename": PROCESSOR_FILE,
            "spatial_merge_size": int(vision.get("spatial_merge_size", 2)),
            "patch_size": int(vision.get("patch_size", 14)),
            "window_size": int(vision.get("window_size", 112)),
            "tokens_per_second": float(vision.get("tokens_per_second", 2)),
            # image_grid_thw's config default is "image_sizes": name it
            "inputs": {"pixel_values": "pixel_values", "image_grid_thw": "image_grid_thw"},
            "outputs": {"image_features": "image_features"},
            "session_options": dict(_SESSION),
        },
    }


def processor_config(preprocessor: dict, vision: dict) -> dict:
    """onnxruntime-extensions' qwen2_5_image_processor pipeline with the checkpoint's own figures."""
    patch = int(preprocessor.get("patch_size", vision.get("patch_size", 14)))
    merge = int(preprocessor.get("merge_size", vision.get("spatial_merge_size", 2)))
    size = preprocessor.get("size") or {}
    min_pixels = int(preprocessor.get("min_pixels") or size.get("shortest_edge") or 56 * 56)
    max_pixels = int(preprocessor.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280)
    max_pixels = min(max_pixels, (patch * merge) ** 2 * MAX_IMAGE_TOKENS)  # larger images are resized down
    return {
        "processor": {
            "name": "qwen2_5_image_processor",
            "transforms": [
                {"operation": {"name": "decode_image", "type": "DecodeImage", "attrs": {"color_space": "RGB"}}},
                {"operation": {"name": "convert_to_rgb", "type": "ConvertRGB"}},
                {
                    "operation": {
                        "name": "resize",
                        "type": "Resize",
                        "attrs": {
                            "width": 540,
                            "height": 360,
                            "smart_resize": 1,
                            "min_pixels": min_pixels,
                            "max_pixels": max_pixels,
                            "patch_size": patch,
                            "merge_size": merge,
                        },
                    }
                },
                {
                    "operation": {
                        "name": "rescale",
                        "type": "Rescale",
                        "attrs": {"rescale_factor": float(preprocessor.get("rescale_factor", 1 / 255))},
                    }
                },
                {
                    "operation": {
                        "name": "normalize",
                        "type": "Normalize",
                        "attrs": {
                            "mean": list(preprocessor.get("image_mean", [0.48145466, 0.4578275, 0.40821073])),
                            "std": list(preprocessor.get("image_std", [0.26862954, 0.26130258, 0.27577711])),
                            "qwen2_5_vl": 1,
                        },
                    }
                },
                {
                    "operation": {
                        "name": "patch_image",
                        "type": "PatchImage",
                        "attrs": {
                            "patch_size": patch,
                            "temporal_patch_size": int(preprocessor.get("temporal_patch_size", 2)),
                            "merge_size": merge,
                        },
                    }
                },
            ],
        }
    }


def write_runtime_configs(src: Path, out: Path, config: dict) -> None:
    """Add the vision and embedding sections to the builder's genai_config.json; write processor_config.json."""
    path = out / "genai_config.json"
    genai = json.loads(path.read_text(encoding="utf-8"))
    genai["model"].update(genai_sections(config))
    path.write_text(json.dumps(genai, indent=4), encoding="utf-8")
    pre_path = src / "preprocessor_config.json"
    preprocessor = json.loads(pre_path.read_text(encoding="utf-8")) if pre_path.is_file() else {}
    (out / PROCESSOR_FILE).write_text(
        json.dumps(processor_config(preprocessor, config["vision_config"]), indent=2), encoding="utf-8"
    )


def run_vision_builder(src: Path, out: Path, precision: str, device: str, progress: Progress) -> dict:
    """The text decoder through ortserve.conversion.chat.run_builder, with its token embedding left to us."""
    from ortserve.conversion.chat import run_builder

    used = run_builder(src, out, precision, device, progress, options={"exclude_embeds": "true"})
    return {k: v for k, v in used.items() if k != "exclude_embeds"}


def convert_vision(
    src: Path, out: Path, *, precision: str, device: str, progress: Progress, validate: bool = True
) -> dict:
    """Build a Qwen2.5-VL checkpoint into `out`; returns the manifest (task chat, modalities text + image)."""
    import torch
    import transformers

    from ortserve.conversion.chat import _fix_genai_config
    from ortserve.conversion.registry import chat_architecture
    from ortserve.conversion.source import read_config
    from ortserve.conversion.vision_export import export_vision

    config = read_config(src)
    arch = chat_architecture(config.get("architectures"))
    if device != "cpu":  # the vision and embedding graphs are fp32; a fp16 decoder would want fp16 embeddings
        raise ConversionError(f"vision models are built for cpu only for now (asked: {device})")
    if not (src / "tokenizer.json").is_file():
        raise ConversionError(f"{src}: no tokenizer.json")
    extra = run_vision_builder(src, out, precision, device, progress)
    context_length = _fix_genai_config(config, out)
    with progress.step("export the vision encoder and embeddings (fp32)"):
        model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
        export_vision(model, out)
        del model
    write_runtime_configs(src, out, config)
    manifest = {
        "task": "chat",
        "modalities": list(MODALITIES),
        "architecture": arch.hf_class,
        "family": arch.family,
        "model_type": config["model_type"],
        "precision": precision,
        "vision_precision": "fp32",
        "device": device,
        "context_length": context_length,
        "builder_options": {**extra, "exclude_embeds": True},
    }
    if validate:
        from ortserve.conversion.vision_validate import validate_vision

        with progress.step("validate against PyTorch (image features, greedy tokens with images)"):
            manifest["validation"] = validate_vision(src, out, precision=precision, progress=progress)
    return manifest
