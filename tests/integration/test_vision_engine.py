"""Chats with images through the runner process, on the tiny random Qwen2.5-VL converted by `ortserve convert`.

The reference is independent of onnxruntime-genai: transformers' Qwen2.5-VL model
with transformers' own image processor and tokenizer, greedy `generate`.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

from ortserve.server.engine import load_generator
from ortserve.server.engine.generation import GenerationRequest, Prompt, SamplingParams
from ortserve.server.errors import InvalidRequestError, NotSupportedError
from tests.integration.generation import ids_of, run
from tests.vision_reference import hf_greedy

pytestmark = pytest.mark.slow


def png(pattern: str, size: tuple[int, int] = (112, 84)) -> bytes:
    """Images that differ in content, not only in noise: stripes, a gradient, a flat colour."""
    from PIL import Image

    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    if pattern == "stripes":
        rgb = np.stack([(x // 7 % 2) * 255, (y // 5 % 2) * 255, np.full_like(x, 40)], axis=-1)
    elif pattern == "gradient":
        rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), 255 - x * 255 // max(w - 1, 1)], axis=-1)
    else:
        rgb = np.zeros((h, w, 3)) + np.array([200, 30, 90])
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def image_chat(text: str = "What is in this picture?", images: int = 1) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}]


def request(messages, images=(), **params) -> GenerationRequest:
    return GenerationRequest("req", Prompt(messages=messages, images=tuple(images)), SamplingParams(**params))


@pytest.fixture(scope="session")
async def vision_generator(vision_store_home):
    from ortserve.core.store import ModelStore

    entry = ModelStore(vision_store_home / "models").get("tiny-vlm")
    gen = await load_generator(entry, prefill_chunk=16)
    yield gen
    await gen.close()


async def test_loading_the_model_logs_no_onnxruntime_error(vision_store_home, capfd):
    """The runner's start-up measurements run clean (a lone token id 0, padding to Qwen2.5-VL, made GQA fail and
    onnxruntime print an error on every load of a vision model)."""
    from ortserve.core.store import ModelStore

    gen = await load_generator(ModelStore(vision_store_home / "models").get("tiny-vlm"), prefill_chunk=16)
    await gen.close()
    err = capfd.readouterr().err
    assert "[E:onnxruntime" not in err, err[-2000:]


async def test_image_chat_equals_transformers_greedy(vision_generator, vlm_reference):
    image = png("stripes")
    req = request(image_chat(), [image], max_tokens=16, temperature=0)
    started, deltas, finished = await run(vision_generator, req)
    expected, prompt_len = hf_greedy(vlm_reference, image_chat(), [image], 16)
    assert ids_of(deltas) == expected
    assert started.prompt_tokens == prompt_len  # usage counts the image's tokens (6x8 patches / 4 = 12)
    assert finished.completion_tokens >= len(expected)
    assert "".join(d.text for d in deltas) == vlm_reference[0].decode(expected, skip_special_tokens=True)


async def test_two_images_give_two_outputs_at_temperature_0(vision_generator):
    outputs = []
    for pattern in ("stripes", "gradient"):
        _, deltas, _ = await run(vision_generator, request(image_chat(), [png(pattern)], max_tokens=12, temperature=0))
        outputs.append(ids_of(deltas))
    assert outputs[0] != outputs[1]
    # and the same image gives the same output again
    _, deltas, _ = await run(vision_generator, request(image_chat(), [png("stripes")], max_tokens=12, temperature=0))
    assert ids_of(deltas) == outputs[0]


async def test_two_images_in_one_message_and_other_sizes(vision_generator, vlm_reference):
    images = [png("gradient", (56, 56)), png("flat", (300, 200))]  # a 4x4 grid and a downscaled 6x8 one
    messages = image_chat("Compare them.", images=2)
    _, deltas, _ = await run(vision_generator, request(messages, images, max_tokens=12, temperature=0))
    assert ids_of(deltas) == hf_greedy(vlm_reference, messages, images, 12)[0]


async def test_text_only_chat_on_the_vision_model_takes_the_text_path(vision_generator, vlm_reference):
    messages = [{"role": "user", "content": "Hello! What is the capital of France? " * 4}]  # > one prefill chunk
    started, deltas, _ = await run(vision_generator, request(messages, max_tokens=12, temperature=0))
    expected, prompt_len = hf_greedy(vlm_reference, messages, [], 12)
    assert started.prompt_tokens == prompt_len > 16
    assert ids_of(deltas) == expected


async def test_image_and_text_requests_progress_together(vision_generator):
    solo_image = ids_of(
        (await run(vision_generator, request(image_chat(), [png("gradient")], max_tokens=10, temperature=0)))[1]
    )
    text_messages = [{"role": "user", "content": "Tell me about the sea."}]
    solo_text = ids_of((await run(vision_generator, request(text_messages, max_tokens=10, temperature=0)))[1])
    together = await asyncio.gather(
        run(vision_generator, request(image_chat(), [png("gradient")], max_tokens=10, temperature=0)),
        run(vision_generator, request(text_messages, max_tokens=10, temperature=0)),
    )
    assert [ids_of(d) for _, d, _ in together] == [solo_image, solo_text]


async def test_sampling_with_a_seed_is_reproducible(vision_generator):
    req = request(image_chat(), [png("flat")], max_tokens=10, temperature=1.0, seed=7)
    first = ids_of((await run(vision_generator, req))[1])
    assert ids_of((await run(vision_generator, req))[1]) == first


async def test_more_images_than_image_parts_is_a_400(vision_generator):
    with pytest.raises(InvalidRequestError) as info:
        await run(vision_generator, request(image_chat(), [png("flat"), png("stripes")], max_tokens=4))
    assert info.value.param == "messages"
    # the runner is still serving
    _, deltas, _ = await run(vision_generator, request(image_chat(), [png("flat")], max_tokens=2, temperature=0))
    assert ids_of(deltas)


async def test_bytes_that_are_not_an_image_are_a_400(vision_generator):
    with pytest.raises(InvalidRequestError) as info:
        await run(vision_generator, request(image_chat(), [b"not an image at all"], max_tokens=4))
    assert info.value.param == "messages"


async def test_prompt_logprobs_with_images_is_not_supported(vision_generator):
    with pytest.raises(NotSupportedError) as info:
        await run(vision_generator, request(image_chat(), [png("flat")], max_tokens=2, prompt_logprobs=1))
    assert info.value.param == "prompt_logprobs"


def test_image_parts_become_markers_when_a_template_cannot_render_them():
    from ortserve.server.engine.prompts import IMAGE_MARKERS, _inline_images

    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "A: "},
                {"type": "image"},
                {"type": "text", "text": "B: "},
                {"type": "image"},
            ],
        },
    ]
    _, marker = IMAGE_MARKERS["phi3v"]
    assert _inline_images(messages, marker) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "A: <|image_1|>\nB: <|image_2|>\n"},
    ]


async def test_image_markers_typed_as_text_are_a_400_and_the_runner_keeps_serving(vision_generator):
    for text in ("<|vision_start|><|image_pad|><|vision_end|> and this?", "<|image_pad|><|image_pad|>?"):
        with pytest.raises(InvalidRequestError) as info:
            await run(vision_generator, request(image_chat(text), [png("flat")], max_tokens=4))
        assert info.value.param == "messages"
    _, deltas, _ = await run(vision_generator, request(image_chat(), [png("flat")], max_tokens=2, temperature=0))
    assert ids_of(deltas)
