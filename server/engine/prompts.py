"""A request's prompt as token ids (chat messages through the model's template, text, token ids, and chats
with images through onnxruntime-genai's multimodal processor), and the completion budget it leaves.

Imported only by the runner process (it imports onnxruntime-genai).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime_genai as og

from ortserve.server.engine.generation import Prompt, SamplingParams
from ortserve.server.errors import ContextLengthError, InvalidRequestError, NotSupportedError

if TYPE_CHECKING:
    from ortserve.server.engine.runner_model import RunnerModel


def read_prompt(model: RunnerModel, prompt: Prompt, params: SamplingParams) -> tuple[np.ndarray, str, Any]:
    """(token ids, prompt text, the processor's tensors or None) for any prompt (both schedulers)."""
    if not prompt.images:
        return *encode_prompt(model, prompt), None
    if params.prompt_logprobs is not None:
        raise NotSupportedError("prompt_logprobs cannot be combined with images.", param="prompt_logprobs")
    return encode_image_prompt(model, prompt)


def grant_budget(prompt_tokens: int, max_tokens: int | None, context_length: int, *, chat: bool) -> int:
    """Completion tokens granted, or ContextLengthError in OpenAI's words. 0: only read the prompt (echo)."""
    what, param = ("messages", "messages") if chat else ("prompt", "prompt")
    if max_tokens is not None and max_tokens < 0:
        raise InvalidRequestError("max_tokens must not be negative.", param="max_tokens")
    if max_tokens is None:
        if prompt_tokens < context_length:
            return context_length - prompt_tokens
        raise ContextLengthError(
            f"This model's maximum context length is {context_length} tokens. However, your {what} resulted in "
            f"{prompt_tokens} tokens. Please reduce the length of the {what}.",
            param=param,
        )
    if prompt_tokens + max_tokens > context_length:
        raise ContextLengthError(
            f"This model's maximum context length is {context_length} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {what}, {max_tokens} in the completion). "
            f"Please reduce the length of the {what} or completion.",
            param=param,
        )
    return max_tokens


def encode_prompt(model: RunnerModel, prompt: Prompt) -> tuple[np.ndarray, str]:
    """(token ids, prompt text) for a chat, text or token-id prompt."""
    tok = model.tokenizer
    if prompt.messages is not None:
        try:
            kwargs: dict[str, Any] = {"tools": json.dumps(prompt.tools)} if prompt.tools else {}
            if prompt.template_vars and prompt.template:
                kwargs["template_str"] = template_with_vars(prompt.template, prompt.template_vars)
            text = tok.apply_chat_template(json.dumps(prompt.messages), add_generation_prompt=True, **kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise InvalidRequestError(
                f"The chat template could not render the messages: {reason}", param="messages"
            ) from None
        ids = np.asarray(tok.encode(text), dtype=np.int32)
    elif prompt.token_ids is not None:
        ids = _check_token_ids(prompt.token_ids, model.vocab_size)
        text = model.raw_tokenizer.decode(ids) if len(ids) else ""
    elif prompt.text is not None:
        text = prompt.text
        ids = np.asarray(tok.encode(text), dtype=np.int32) if text else np.zeros(0, dtype=np.int32)
    else:
        raise InvalidRequestError("The request has no prompt.", param="prompt")
    if len(ids) == 0:
        if model.bos_id is None:
            raise InvalidRequestError("The prompt is empty.", param="prompt")
        ids = np.asarray([model.bos_id], dtype=np.int32)  # like OpenAI: an empty prompt starts a new document
    return ids, text


def template_with_vars(template: str, variables: tuple[tuple[str, object], ...]) -> str:
    """The template with `{%- set name = value -%}` first: onnxruntime-genai's apply_chat_template takes no
    extra variables (Hugging Face's `enable_thinking=False`), but its Jinja reads what the template sets."""
    sets = "".join(f"{{%- set {name} = {json.dumps(value)} -%}}" for name, value in variables)
    return sets + template


# What each onnxruntime-genai image processor looks for in the prompt, one per image (n counts from 1).
# Chat templates of these families render `{"type": "image"}` parts as exactly this; when a template
# does not (Phi-3.5-vision's leaves images to the processor), the parts are written as the marker.
IMAGE_MARKERS = {
    "qwen2_5_vl": ("<|vision_start|>", "<|vision_start|><|image_pad|><|vision_end|>"),
    "fara": ("<|vision_start|>", "<|vision_start|><|image_pad|><|vision_end|>"),
    "phi3v": ("<|image_", "<|image_{n}|>\n"),
    "gemma3": ("<start_of_image>", "<start_of_image>"),
}


_MARKER_TOKENS = re.compile(r"<\|?[A-Za-z_]+\|?>")  # the special tokens of a marker ("<|image_{n}|>" has none)


def encode_image_prompt(model: RunnerModel, prompt: Prompt) -> tuple[np.ndarray, str, Any]:
    """(expanded token ids, prompt text, the processor's named tensors) for a chat with images."""
    if model.processor is None:
        raise InvalidRequestError("This model does not accept images.", param="messages")
    if prompt.messages is None:
        raise InvalidRequestError("Images are accepted in chat messages only.", param="prompt")
    count, marker = IMAGE_MARKERS.get(model.model_type, IMAGE_MARKERS["qwen2_5_vl"])
    try:
        _, text = encode_prompt(model, prompt)
        rendered = text.count(count) == len(prompt.images)
    except InvalidRequestError:  # a template that expects string contents (Phi-3.5-vision's)
        rendered = False
    if not rendered:  # the template dropped the image parts or failed on them: write the markers ourselves
        inline = replace(prompt, messages=_inline_images(prompt.messages, marker), images=())
        _, text = encode_prompt(model, inline)
    for piece in {count, *_MARKER_TOKENS.findall(marker)}:
        if text.count(piece) != len(prompt.images):  # typed into the text: images and features would not match
            raise InvalidRequestError(
                f"The prompt holds {text.count(piece)} '{piece}' for {len(prompt.images)} image(s): "
                "image markers cannot be written as text.",
                param="messages",
            )
    for index, image in enumerate(prompt.images):
        _check_png(image, index)
    try:
        images = og.Images.open_bytes(*prompt.images)
        inputs = model.processor(text, images=images)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise InvalidRequestError(f"The images could not be read: {reason}", param="messages") from None
    ids = np.asarray(inputs["input_ids"].as_numpy(), dtype=np.int32).reshape(-1)
    return ids, text, inputs


def _check_png(data: bytes, index: int) -> None:
    """The server sends PNG; anything else could make onnxruntime-genai's decoders end the process
    (libjpeg exits on bytes that are not a JPEG), so it is refused here first."""
    from PIL import Image, UnidentifiedImageError

    try:
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError("not a PNG")
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as exc:
        raise InvalidRequestError(f"Image {index + 1} could not be read ({exc}).", param="messages") from None


def _inline_images(messages: list[dict], marker: str) -> list[dict]:
    """Messages whose list contents become strings, each image part written as `marker`."""
    n, out = 0, []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            pieces = []
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("image", "image_url"):
                    n += 1
                    pieces.append(marker.format(n=n))
                elif isinstance(part, dict):
                    pieces.append(str(part.get("text", "")))
            message = {**message, "content": "".join(pieces)}
        out.append(message)
    return out


def _check_token_ids(token_ids: list[int], vocab_size: int) -> np.ndarray:
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in token_ids):
        raise InvalidRequestError("Token ids must be integers.", param="prompt")
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequestError(
            f"Token id {bad[0]} is out of range: this model's vocabulary has ids 0 to {vocab_size - 1}.", param="prompt"
        )
    return np.asarray(token_ids, dtype=np.int32)
