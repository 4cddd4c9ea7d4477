"""Images in chat, the request side: content parts, prompts, models that take no images, and the app's
request path handing PNGs to the engine in order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ortserve.core.model_config import ModelConfig
from ortserve.core.store import MANIFEST, ModelEntry, ModelStore
from ortserve.server.app import create_app
from ortserve.server.engine.generation import Finished, GenerationRequest, Started, TextDelta
from ortserve.server.errors import InvalidRequestError
from ortserve.server.protocol import ChatCompletionRequest, parse_request
from ortserve.server.serving.chat_plan import check_images_accepted
from tests.unit.image_site import b64, image_bytes, opened, settings_for


def chat(messages) -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, json.dumps({"model": "m", "messages": messages}))


def test_image_parts_in_both_shapes_become_template_parts():
    request = chat(
        [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "compare"},
                    {"type": "image_url", "image_url": {"url": "https://a.example/1.png", "detail": "low"}},
                    {"type": "image_url", "image_url": "data:image/png;base64,AAAA"},
                ],
            },
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "and"}, {"type": "text", "text": "this"}]},
        ]
    )
    assert request.image_parts() == [
        ("messages.1.content.1.image_url", "https://a.example/1.png"),
        ("messages.1.content.2.image_url", "data:image/png;base64,AAAA"),
    ]
    prompt = request.to_prompt(images=(b"1", b"2"))
    assert prompt.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "compare"}, {"type": "image"}, {"type": "image"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and\nthis"},  # no image: one string, as for a text-only request
    ]
    assert prompt.images == (b"1", b"2")


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages.0.content.0"),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            ],
            "messages.1.content.0",
        ),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages.0.content.0.image_url"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}],
            "messages.0.content.0.image_url",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x", "detail": "max"}}]}],
            "messages.0.content.0.image_url.detail",
        ),
        ([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}], "messages.0.content.0"),
    ],
)
def test_misplaced_or_malformed_image_parts_name_their_param(messages, param):
    with pytest.raises(InvalidRequestError) as info:
        chat(messages)
    assert info.value.param == param


def entry_with(manifest: dict) -> ModelEntry:
    return ModelEntry("m", ModelConfig(), Path("."), manifest)


def test_a_text_only_model_and_too_many_images_are_refused_first():
    parts = [(f"messages.0.content.{i}.image_url", "x") for i in range(3)]
    with pytest.raises(InvalidRequestError) as info:
        check_images_accepted(entry_with({"task": "chat"}), "tiny", parts, max_images=8)
    assert info.value.param == "messages.0.content.0" and "does not accept images" in info.value.message
    with pytest.raises(InvalidRequestError) as info:
        check_images_accepted(entry_with({"modalities": ["text", "image"]}), "vlm", parts, max_images=2)
    assert info.value.param == "messages.0.content.2" and "max_images" in info.value.message
    check_images_accepted(entry_with({"modalities": ["text", "image"]}), "vlm", parts, max_images=3)
    check_images_accepted(entry_with({"task": "chat"}), "tiny", [], max_images=1)


class RecordingGenerator:
    """A TextGenerator that answers "ok" and keeps each request's prompt."""

    device, guidance_error, fim_tokens, context_length = "cpu", "no grammars here", None, 4096

    def __init__(self):
        self.prompts = []

    async def generate(self, request: GenerationRequest):
        self.prompts.append(request.prompt)
        yield Started(prompt_tokens=3, max_tokens=1)
        yield TextDelta("ok", (1,))
        yield Finished("stop", 3, 1)

    async def close(self) -> None:
        pass


@pytest.fixture
async def vision_app(tmp_path, images_server):
    settings = settings_for(tmp_path, image_fetch_allow=["127.0.0.1"], max_images=3)
    store = ModelStore(settings.models_dir)
    for name, manifest in (("vlm", {"task": "chat", "modalities": ["text", "image"]}), ("text", {"task": "chat"})):
        (settings.models_dir / name).mkdir(parents=True)
        (settings.models_dir / name / MANIFEST).write_text(json.dumps(manifest))
        store.write_config(name, ModelConfig())
    generator = RecordingGenerator()

    async def load(entry, **options):
        return generator

    app = create_app(settings, store, loader=load)
    async with app.test_app() as test_app:
        yield test_app.test_client(), generator, f"http://127.0.0.1:{images_server.server_address[1]}"


async def test_the_request_path_hands_png_images_to_the_engine_in_order(vision_app):
    client, generator, base = vision_app
    content = [
        {"type": "text", "text": "which?"},
        {"type": "image_url", "image_url": {"url": f"{base}/blue.png"}},
        {"type": "image_url", "image_url": f"data:image/jpeg;base64,{b64(image_bytes(fmt='JPEG'))}"},
    ]
    response = await client.post(
        "/v1/chat/completions", json={"model": "vlm", "messages": [{"role": "user", "content": content}]}
    )
    assert response.status_code == 200, await response.get_json()
    (prompt,) = generator.prompts
    assert prompt.messages[-1]["content"] == [{"type": "text", "text": "which?"}, {"type": "image"}, {"type": "image"}]
    blue, red = (opened(png).getpixel((0, 0)) for png in prompt.images)
    assert blue == (0, 0, 255) and red[0] > 240 and max(red[1:]) < 15


async def test_images_are_fitted_to_what_the_models_processor_keeps(vision_app, tmp_path):
    client, generator, _ = vision_app
    settings = settings_for(tmp_path)
    processor = {"processor": {"transforms": [{"operation": {"attrs": {"max_pixels": 12_544}}}]}}
    (settings.models_dir / "vlm" / "processor_config.json").write_text(json.dumps(processor))
    big = b64(image_bytes(fmt="JPEG", size=(1000, 500)))
    content = [{"type": "text", "text": "which?"}, {"type": "image_url", "image_url": f"data:image/jpeg;base64,{big}"}]
    response = await client.post(
        "/v1/chat/completions", json={"model": "vlm", "messages": [{"role": "user", "content": content}]}
    )
    assert response.status_code == 200, await response.get_json()
    image = opened(generator.prompts[-1].images[0])
    assert image.width * image.height <= 2 * 12_544 + 200 and image.width == 2 * image.height


def test_the_fit_comes_from_the_processor_config(tmp_path):
    from ortserve.server.serving.chat_plan import image_fit_pixels

    (tmp_path / "processor_config.json").write_text(json.dumps({"a": [{"max_pixels": 5000}, {"max_pixels": 9000}]}))
    assert image_fit_pixels(ModelEntry("m", ModelConfig(), tmp_path, {"_folder_mtime": 1})) == 10_000
    assert image_fit_pixels(ModelEntry("m", ModelConfig(), tmp_path / "none", {})) is None


async def test_image_errors_are_openai_400s_and_the_app_keeps_serving(vision_app):
    client, generator, base = vision_app

    async def post(model: str, url: str, stream: bool = False):
        content = [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": url}}]
        response = await client.post(
            "/v1/chat/completions",
            json={"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]},
        )
        return response.status_code, await response.get_json()

    for model, url, code in [
        ("text", f"{base}/red.png", None),  # a text-only model
        ("text", "file:///etc/passwd", None),  # refused before the URL is looked at
        ("vlm", "file:///etc/passwd", "image_url_refused"),
        ("vlm", "http://169.254.169.254/latest/meta-data/", "image_url_refused"),
        ("vlm", f"{base}/missing.png", "image_fetch_failed"),
        ("vlm", b64(b"garbage"), "invalid_image"),
    ]:
        for stream in (False, True):
            status, body = await post(model, url, stream)
            assert status == 400, body
            assert body["error"]["code"] == code and body["error"]["type"] == "invalid_request_error"
            assert body["error"]["param"].startswith("messages.0.content.1"), body
            if model == "text":
                assert "does not accept images" in body["error"]["message"]
    assert generator.prompts == []
    status, body = await post("vlm", f"{base}/red.png")
    assert status == 200 and body["choices"][0]["message"]["content"] == "ok"
