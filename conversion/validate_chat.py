"""Check a built chat model against its PyTorch original before it is registered.

fp32 must reproduce transformers' greedy tokens; quantized builds must keep the
last-token logits within cosine 0.99. The tokenizer and chat template that the
server will use (onnxruntime-genai's) must agree with transformers'.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ortserve.conversion.common import Progress, conclude, decoder_problem

MIN_COSINE = 0.99
GREEDY_TOKENS = 16
_CONVERSATIONS = [
    [{"role": "user", "content": "Hello! What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Write one sentence about the sea, with the word 'blue'."},
    ],
    [{"role": "user", "content": "Übersetze bitte: good morning, 日本語も少し。"}],
]


def _prompts(tokenizer) -> list[str]:
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in _CONVERSATIONS]
    return [" ".join(m["content"] for m in c) for c in _CONVERSATIONS]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def cannot_run(device: str) -> str | None:
    """Why a `device` build cannot be run here for validation (what really loads: og's own `is_cuda_available`
    says how the wheel was built, not that a GPU is here); None after loading what it needs (CUDA's libraries)."""
    from ortserve.core import devices

    why = devices.unavailable(device, devices.detect(genai=True), "generation")
    if why is None:
        try:
            devices.load_libraries(device, "generation")
        except devices.DeviceUnavailableError as exc:
            return str(exc)
    return why


def validate_chat(src: Path, out: Path, *, precision: str, device: str, progress: Progress) -> dict:
    import onnxruntime_genai as og
    import torch
    import transformers

    if device != "cpu":
        why = cannot_run(device)
        if why:
            progress.info(f"    warning: the {device} build was not run ({why}); validate it on that machine")
            return {"skipped": f"{device} cannot run generation on the converting machine: {why}"}

    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    reference = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    reference.eval()
    model = og.Model(str(out))
    og_tokenizer = og.Tokenizer(model)

    template_match = True
    if getattr(tokenizer, "chat_template", None):
        for conv in _CONVERSATIONS:
            ours = og_tokenizer.apply_chat_template(json.dumps(conv), add_generation_prompt=True)
            template_match &= ours == tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)

    figures: dict = {"prompts": len(_CONVERSATIONS), "template_match": template_match}
    tokenizer_match, cosines, greedy_match, argmax_match = True, [], 0, 0
    for text in _prompts(tokenizer):
        ids = (
            tokenizer(text, add_special_tokens=False)["input_ids"]
            if getattr(tokenizer, "chat_template", None)
            else tokenizer(text)["input_ids"]
        )
        tokenizer_match &= [int(t) for t in og_tokenizer.encode(text)] == list(ids)
        with torch.no_grad():
            ref_logits = reference(torch.tensor([ids])).logits[0, -1].float().numpy()
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + GREEDY_TOKENS, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        ours = generator.get_logits()[0, -1].astype(np.float32)
        cosines.append(_cosine(ref_logits, ours))
        argmax_match += int(ref_logits.argmax() == ours.argmax())
        if precision == "fp32":
            produced: list[int] = []
            while not generator.is_done() and len(produced) < GREEDY_TOKENS:
                generator.generate_next_token()
                produced.append(int(generator.get_next_tokens()[0]))
            with torch.no_grad():
                expected = reference.generate(
                    torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    max_new_tokens=GREEDY_TOKENS,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id or 0,
                )[0, len(ids) :].tolist()
            greedy_match += int(produced[: len(expected)] == expected)

    figures.update(
        {
            "tokenizer_match": tokenizer_match,
            "logits_cosine_min": round(min(cosines), 6),
            "logits_cosine_mean": round(float(np.mean(cosines)), 6),
            "argmax_match": f"{argmax_match}/{len(cosines)}",
        }
    )
    return conclude(
        [
            decoder_problem(figures, precision, greedy_match, len(cosines), MIN_COSINE, "last-token"),
            None if tokenizer_match else "onnxruntime-genai's tokenizer encodes differently from transformers'",
            None if template_match else "onnxruntime-genai renders the chat template differently from transformers",
        ],
        figures,
        progress,
    )
