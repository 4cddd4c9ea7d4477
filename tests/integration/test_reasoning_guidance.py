"""Grammars on a reasoning model, on real onnxruntime-genai: the tiny Qwen3-shaped fixture (random weights) planned
by `plan_chat` as a request is. The reasoning stays free and is split out, the answer follows the request's
grammar (a JSON schema, a forced tool call); with thinking off the grammar is the plain one. Markers as text
(as Qwen3's) and as special tokens; a template that opens `<think>` itself and Qwen3's, which leaves it to the
model.

Random weights never close their reasoning: what closes it is the grammar's length limit (chars <= max_tokens).
"""

from __future__ import annotations

import asyncio
import json
import shutil

import jsonschema
import pytest

from ortserve.core.store import ModelStore
from ortserve.server.chat.grammars import response_format_guidance
from ortserve.server.engine import load_generator
from ortserve.server.engine.generation import Finished, GenerationRequest, Started, TextDelta
from ortserve.server.protocol.chat import ChatCompletionRequest
from ortserve.server.serving.chat_plan import plan_chat
from tests.reasoning_fixture import add_reasoning_model

pytestmark = pytest.mark.slow

HANG = 60  # seconds: only to turn a hang into a failure
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
MODELS = {  # name -> the fixture's options
    "tiny-think": {},  # opens <think> itself; markers are text
    "tiny-think-special": {"special_markers": True},  # <think> and </think> are special tokens
    "tiny-think-qwen3": {"opens": False},  # the model opens <think> (or answers at once)
}


@pytest.fixture(scope="module")
def think_store(chat_store_home, tmp_path_factory) -> ModelStore:
    models = tmp_path_factory.mktemp("think") / "models"
    shutil.copytree(chat_store_home / "models" / "tiny-qwen", models / "tiny-qwen")
    for name, options in MODELS.items():
        add_reasoning_model(models, name=name, **options)
    return ModelStore(models)


@pytest.fixture(scope="module")
async def generators(think_store):
    loaded = {name: await load_generator(think_store.get(name)) for name in MODELS}
    yield loaded
    for generator in loaded.values():
        await generator.close()


async def chat(think_store, generators, name: str, **body):
    """(plan, the whole reply as OpenAI's message, finish reason, raw text) of one request."""
    entry, generator = think_store.get(name), generators[name]
    request = ChatCompletionRequest.model_validate({"model": name, "messages": ASK, "max_tokens": 300, **body})
    plan = await plan_chat(entry, generator, request)

    async def go():
        return [event async for event in generator.generate(GenerationRequest("req", plan.prompt, plan.params))]

    events = await asyncio.wait_for(go(), HANG)
    started = next(e for e in events if isinstance(e, Started))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    finished = events[-1]
    assert isinstance(finished, Finished)
    return plan, plan.message(text, started), finished.finish_reason, text


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_a_json_schema_applies_to_the_answer_after_the_reasoning(think_store, generators, name, seed):
    plan, message, reason, text = await chat(
        think_store, generators, name, response_format=SCHEMA_FORMAT, seed=seed, temperature=1.0
    )
    assert reason == "stop"
    jsonschema.validate(json.loads(message.content), WEATHER)
    if name != "tiny-think-qwen3":  # the prompt opened the reasoning: the reply starts inside it
        assert message.reasoning_content and text.count("</think>") == 1
    if message.reasoning_content is not None:
        assert "</think>" not in message.reasoning_content
    special = "<[" in plan.params.guidance.data
    assert special == (name == "tiny-think-special")  # special markers are written as token ids


async def test_the_reply_may_open_its_reasoning(think_store, generators):
    """Qwen3's template leaves `<think>` to the model: over a few seeds it reasons and answers, or answers."""
    reasoned = 0
    for seed in range(6):
        _, message, reason, _ = await chat(
            think_store, generators, "tiny-think-qwen3", response_format=SCHEMA_FORMAT, seed=seed
        )
        assert reason == "stop"
        jsonschema.validate(json.loads(message.content), WEATHER)
        reasoned += message.reasoning_content is not None
    assert reasoned > 0


@pytest.mark.parametrize("name", ["tiny-think", "tiny-think-qwen3"])
async def test_thinking_off_keeps_the_plain_grammar(think_store, generators, name):
    plan, message, reason, _ = await chat(
        think_store,
        generators,
        name,
        response_format=SCHEMA_FORMAT,
        seed=1,
        chat_template_kwargs={"enable_thinking": False},
    )
    assert plan.params.guidance == response_format_guidance(SCHEMA_FORMAT)
    assert reason == "stop" and message.reasoning_content is None
    jsonschema.validate(json.loads(message.content), WEATHER)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
async def test_a_forced_tool_call_follows_the_reasoning(think_store, generators, choice):
    _, message, reason, _ = await chat(
        think_store, generators, "tiny-think", tools=TOOLS, tool_choice=choice, parallel_tool_calls=False, seed=3
    )
    assert reason == "stop" and message.reasoning_content and "<tool_call>" not in message.reasoning_content
    [call] = message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)


async def test_the_reasoning_is_capped_by_max_tokens(think_store, generators):
    for max_tokens in (120, 400):
        _, message, reason, _ = await chat(
            think_store, generators, "tiny-think", response_format=SCHEMA_FORMAT, max_tokens=max_tokens
        )
        assert reason == "stop" and len(message.reasoning_content) <= max_tokens
        jsonschema.validate(json.loads(message.content), WEATHER)
