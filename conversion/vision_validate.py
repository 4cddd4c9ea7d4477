"""Check a built vision-language model against PyTorch before it is registered.

- image features: the ONNX vision encoder against transformers' on the same pixel values,
  for images of several sizes (cosine >= 0.9999, fp32);
- preprocessing: onnxruntime-genai's image processor against transformers' (same grid,
  pixel values within 1e-4) and the expanded prompt's token ids identical;
- greedy tokens through onnxruntime-genai's multimodal path (processor + set_inputs)
  reproduce transformers' `generate` exactly for fp32 (one and two images, and text only);
  quantized decoders keep the first generated token's logits within cosine 0.99.

The validation images are drawn here; their sizes avoid the one place the two
preprocessors differ: transformers' smart resize rounds a side of exactly n + 1/2
patches-of-28 to even (Python's round), onnxruntime-extensions rounds it up.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ortserve.conversion.common import Progress, conclude, decoder_problem

MIN_FEATURE_COSINE = 0.9999
MIN_LOGITS_COSINE = 0.99
MAX_PIXEL_DIFF = 1e-4
GREEDY_TOKENS = 12
IMAGE_SIZES = ((112, 84), (56, 56), (300, 200))  # (width, height): grids 6x8, 4x4 and a resize down to 6x8


def validation_image(index: int, size: tuple[int, int]) -> bytes:
    """A deterministic PNG: a colour gradient with a pattern that differs per index."""
    from PIL import Image

    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = index * 1.7
    rgb = np.stack(
        [
            127 + 127 * np.sin(x / (5 + index) + phase),
            255 * y / max(h - 1, 1),
            127 + 127 * np.cos((x + y) / (7 + 2 * index) - phase),
        ],
        axis=-1,
    )
    buf = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _conversations(images: list[bytes]) -> list[tuple[list[dict], list[bytes]]]:
    one: list[dict] = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]}
    ]
    two: list[dict] = [
        {"role": "system", "content": "You are a terse assistant."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image"},
                {"type": "text", "text": "and"},
                {"type": "image"},
            ],
        },
    ]
    text: list[dict] = [{"role": "user", "content": "Hello! What is the capital of France?"}]
    return [(one, images[:1]), (one, images[1:2]), (two, images[:2]), (text, [])]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def _og_generate(og, model, inputs, length: int, steps: int) -> tuple[list[int], np.ndarray]:
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=length + steps, do_sample=False)
    generator = og.Generator(model, params)
    generator.set_inputs(inputs)
    first_logits = generator.get_logits()[0, -1].astype(np.float32)  # set_inputs has run the prompt
    produced: list[int] = []
    while not generator.is_done() and len(produced) < steps:
        generator.generate_next_token()
        produced.append(int(generator.get_next_tokens()[0]))
    return produced, first_logits


def validate_vision(src: Path, out: Path, *, precision: str, progress: Progress) -> dict:
    import onnxruntime as ort
    import onnxruntime_genai as og
    import torch
    import transformers
    from PIL import Image

    from ortserve.conversion.vision_export import VISION_FILE

    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    image_processor = transformers.AutoImageProcessor.from_pretrained(src)
    reference = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    merge = int(reference.config.vision_config.spatial_merge_size)
    images = [validation_image(i, size) for i, size in enumerate(IMAGE_SIZES)]
    pil = {png: Image.open(io.BytesIO(png)).convert("RGB") for png in images}

    # 1. image features, same pixel values
    session = ort.InferenceSession(str(out / VISION_FILE), providers=["CPUExecutionProvider"])
    feature_cos, feature_diff = [], []
    for png in images:
        hf = image_processor(images=[pil[png]], return_tensors="np")
        ours = session.run(
            None,
            {
                "pixel_values": hf["pixel_values"].astype(np.float32),
                "image_grid_thw": hf["image_grid_thw"].astype(np.int64),
            },
        )[0]
        with torch.no_grad():
            ref = reference.model.visual(
                torch.from_numpy(hf["pixel_values"]).float(), grid_thw=torch.from_numpy(hf["image_grid_thw"])
            ).pooler_output.numpy()
        feature_cos.append(_cosine(ref, ours))
        feature_diff.append(float(np.abs(ref - ours).max()))

    # 2. preprocessing, prompt ids and generation through onnxruntime-genai's multimodal path
    model = og.Model(str(out))
    processor = model.create_multimodal_processor()
    og_tokenizer = og.Tokenizer(model)
    template_match, ids_match, grid_match, pixel_diff = True, True, True, 0.0
    greedy_match, cosines = 0, []
    conversations = _conversations(images)
    for messages, pngs in conversations:
        prompt = og_tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        template_match &= prompt == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(prompt, images=og.Images.open_bytes(*pngs) if pngs else None)
        og_ids = inputs["input_ids"].as_numpy().reshape(-1).tolist()
        kwargs, text = {}, prompt
        if pngs:
            hf = image_processor(images=[pil[p] for p in pngs], return_tensors="np")
            grid_match &= inputs["image_grid_thw"].as_numpy().tolist() == hf["image_grid_thw"].tolist()
            if len(pngs) == 1:  # (several images are padded to the largest one's patch count)
                og_pixels = inputs["pixel_values"].as_numpy().reshape(-1, hf["pixel_values"].shape[-1])
                grid_match &= og_pixels.shape == hf["pixel_values"].shape
                if og_pixels.shape == hf["pixel_values"].shape:
                    pixel_diff = max(pixel_diff, float(np.abs(og_pixels - hf["pixel_values"]).max()))
            parts = text.split("<|image_pad|>")
            counts = [int(np.prod(g)) // merge**2 for g in hf["image_grid_thw"]]
            text = parts[0] + "".join("<|image_pad|>" * n + rest for n, rest in zip(counts, parts[1:], strict=True))
            kwargs = {
                "pixel_values": torch.from_numpy(hf["pixel_values"]).float(),
                "image_grid_thw": torch.from_numpy(hf["image_grid_thw"]),
            }
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids_match &= og_ids == ids[0].tolist()
        produced, logits = _og_generate(og, model, inputs, len(og_ids), GREEDY_TOKENS)
        with torch.no_grad():
            ref_logits = reference(input_ids=ids, **kwargs).logits[0, -1].numpy()
            expected = reference.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=GREEDY_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or 0,
                **kwargs,
            )[0, ids.shape[1] :].tolist()
        cosines.append(_cosine(ref_logits, logits))
        greedy_match += int(produced[: len(expected)] == expected)

    figures = {
        "images": len(images),
        "image_features_cosine_min": round(min(feature_cos), 7),
        "image_features_max_abs_diff": float(f"{max(feature_diff):.3g}"),
        "pixel_values_max_abs_diff": float(f"{pixel_diff:.3g}"),
        "grid_match": grid_match,
        "prompt_ids_match": ids_match,
        "template_match": template_match,
        "prompts": len(conversations),
        "logits_cosine_min": round(min(cosines), 6),
    }
    features = figures["image_features_cosine_min"]
    conclude(
        [
            f"image features cosine {features} < {MIN_FEATURE_COSINE}" if features < MIN_FEATURE_COSINE else None,
            None
            if grid_match and not pixel_diff > MAX_PIXEL_DIFF
            else f"onnxruntime-genai preprocesses images differently (max pixel diff {pixel_diff:.3g})",
            None if ids_match else "the expanded prompt's token ids differ from transformers'",
            None if template_match else "onnxruntime-genai renders the chat template differently from transformers",
            decoder_problem(figures, precision, greedy_match, len(conversations), MIN_LOGITS_COSINE, "first-token"),
        ],
        figures,
        progress,
    )
    return figures
