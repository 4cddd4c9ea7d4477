"""A tiny random-weight Qwen2.5-VL checkpoint, built locally (no hub).

It is what the vision tests convert and serve: the real transformers class
(`Qwen2_5_VLForConditionalGeneration`) loads it, with our small byte-level BPE
tokenizer (conversion/demo.py) plus Qwen2.5-VL's vision special tokens, a ChatML
template that renders `{"type": "image"}` parts as
`<|vision_start|><|image_pad|><|vision_end|>` (as Qwen2.5-VL's own template does),
and a Qwen2-VL image-processor config kept small (at most 112x112 pixels, so an
image costs at most 16 tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

from ortserve.conversion.demo import SPECIAL_TOKENS, TOOL_TOKENS, train_tokenizer

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]  # CLIP's, as Qwen2.5-VL uses
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message.role != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for part in message.content %}"
    "{%- if part.type == 'image' or part.type == 'image_url' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part.type == 'text' %}{{- part.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tiny_vlm_checkpoint(
    out_dir: Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_depth: int = 2,
    context_length: int = 2048,
) -> Path:
    """Write a random-weight Qwen2.5-VL checkpoint (config, safetensors, tokenizer, template, preprocessor)."""
    import torch
    import transformers
    from tokenizers import AddedToken

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS])
    tok.save(str(out_dir / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + TOOL_TOKENS + VISION_TOKENS}
    tokenizer_config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "model_max_length": context_length,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}), encoding="utf-8")
    preprocessor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "rescale_factor": 1 / 255,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "resample": 3,
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2), encoding="utf-8")

    heads = 4
    head_dim = hidden_size // heads
    half = head_dim // 2  # mrope sections (t, h, w) split half the head dim, as Qwen2.5-VL's 16/24/24 of 64
    mrope_section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    text_config = dict(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=context_length,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope_section},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        initializer_range=0.02,
    )
    vision_config = dict(
        depth=vision_depth,
        hidden_size=vision_hidden_size,
        intermediate_size=vision_hidden_size * 2,
        num_heads=2,
        out_hidden_size=hidden_size,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,  # 2x2 merged tokens per window: a 112x112 image has 4 windows
        fullatt_block_indexes=[vision_depth - 1],
        tokens_per_second=2,
        initializer_range=0.02,
    )
    config = transformers.Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    with torch.no_grad():  # random weights large enough that the image changes the greedy tokens
        for name, param in model.named_parameters():
            if "visual" in name and param.dim() > 1:
                param.normal_(0.0, 0.2)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(
        "# ortserve tiny vision-language demo (Qwen2.5-VL architecture)\n\nRandom weights: its output is "
        "gibberish by design. It exists to test the vision path without downloading anything.\n",
        encoding="utf-8",
    )
    return out_dir
