"""The PyTorch reference for the tiny vision-language fixture: transformers' Qwen2.5-VL with transformers'
own image processor and tokenizer, greedy `generate`. Independent of onnxruntime-genai; shared by the
runner's integration tests and the end-to-end tests."""

from __future__ import annotations

import io
from pathlib import Path

EOS = "<|im_end|>"


def load_reference(checkpoint: Path) -> tuple:
    import torch
    import transformers

    return (
        transformers.AutoTokenizer.from_pretrained(checkpoint),
        transformers.AutoImageProcessor.from_pretrained(checkpoint),
        transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval(),
    )


def hf_greedy(
    reference: tuple, messages: list[dict], images: list[bytes], max_new_tokens: int
) -> tuple[list[int], int]:
    """transformers' greedy tokens (end token cut) and its prompt length, images expanded as its processor does.

    `messages` use the template's parts: {"type": "image"} and {"type": "text", "text": ...}."""
    import torch
    from PIL import Image

    tokenizer, image_processor, model = reference
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    kwargs = {}
    if images:
        pixels = image_processor(images=[Image.open(io.BytesIO(b)).convert("RGB") for b in images], return_tensors="pt")
        merge = int(model.config.vision_config.spatial_merge_size)
        counts = [int(g.prod()) // merge**2 for g in pixels["image_grid_thw"]]
        parts = text.split("<|image_pad|>")
        text = parts[0] + "".join("<|image_pad|>" * n + rest for n, rest in zip(counts, parts[1:], strict=True))
        kwargs = {"pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"]}
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )[0, ids.shape[1] :].tolist()
    eos = tokenizer.convert_tokens_to_ids(EOS)
    return (out[: out.index(eos)] if eos in out else out), ids.shape[1]
