"""Constrained decoding on a real onnxruntime-genai model (tiny random Llama): the start-up probe,
grammar errors named by request field, and every tool-call format's grammar read back by its parser.

Random weights follow no instruction, so whatever structure the output has comes from the grammar.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import jsonschema
import onnxruntime_genai as og
import pytest

from ortserve.server.chat.grammars import chat_guidance, response_format_guidance
from ortserve.server.chat.tool_parsers import TOOL_PARSERS
from ortserve.server.chat.tool_stream import parse_tool_calls
from ortserve.server.engine import generator_scheduler, load_generator
from ortserve.server.engine.detok import load_hf_tokenizer
from ortserve.server.engine.generation import GenerationRequest, Guidance, Prompt, SamplingParams, TextDelta
from ortserve.server.engine.guidance import probe_guidance
from ortserve.server.engine.runner_model import RunnerModel
from ortserve.server.errors import InvalidRequestError

pytestmark = pytest.mark.slow

HANG = 60  # seconds: only to turn a hang into a failure
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99}, "b": {"type": "boolean"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "parameters": ADD}},
    {"type": "function", "function": {"name": "now"}},
]
SCHEMAS = {t["function"]["name"]: t["function"].get("parameters", {"additionalProperties": False}) for t in TOOLS}


@pytest.fixture(scope="module")
async def generator(chat_store):
    gen = await load_generator(chat_store.get("tiny-llama"))
    yield gen
    await gen.close()


async def generate(gen, guidance: Guidance | None, *, seed: int, max_tokens: int = 200, **params) -> tuple[str, str]:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed, guidance=guidance, **params)
    request = GenerationRequest("req", Prompt(messages=ASK, tools=TOOLS), sampling)

    async def go():
        events = [event async for event in gen.generate(request)]
        return "".join(e.text for e in events if isinstance(e, TextDelta)), events[-1].finish_reason

    return await asyncio.wait_for(go(), HANG)


def test_the_installed_onnxruntime_genai_enforces_grammars(chat_store):
    assert _probe(_loaded(chat_store)) is None


def test_the_probe_notices_a_build_that_ignores_grammars(chat_store, monkeypatch):
    """What a wheel built without llguidance does: set_guidance is accepted, then nothing constrains."""

    class IgnoringParams:
        def __init__(self, model):
            self.real = og.GeneratorParams(model)

        def set_search_options(self, **options):
            self.real.set_search_options(**options)

        def set_guidance(self, kind, data, ff_tokens=False):
            pass

    model = _loaded(chat_store)
    shim = SimpleNamespace(GeneratorParams=IgnoringParams, Generator=lambda model, gp: og.Generator(model, gp.real))
    monkeypatch.setattr(generator_scheduler, "og", shim)
    assert "without llguidance" in _probe(model)


async def test_the_runner_reports_guidance_available(generator):
    assert generator.guidance_error is None


@pytest.mark.parametrize("parser_name", sorted(TOOL_PARSERS))
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_forced_calls_in_every_format_parse_back_and_validate(generator, parser_name, seed):
    parser = TOOL_PARSERS[parser_name]
    guidance = chat_guidance(parser, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    text, finish = await generate(generator, guidance, seed=seed)
    assert finish == "stop", text  # the grammar ended and only the end of sequence could follow
    reply = parse_tool_calls(parser, text, tool_names=SCHEMAS)
    assert reply.content is None and len(reply.tool_calls) == 1, text
    call = reply.tool_calls[0]
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_named_function_is_the_one_called(generator, seed):
    named = {"type": "function", "function": {"name": "add"}}
    guidance = chat_guidance(TOOL_PARSERS["hermes"], tools=TOOLS, tool_choice=named)
    text, finish = await generate(generator, guidance, seed=seed)
    calls = parse_tool_calls(TOOL_PARSERS["hermes"], text).tool_calls
    assert finish == "stop" and [c.name for c in calls] == ["add"]
    jsonschema.validate(json.loads(calls[0].arguments), ADD)


async def test_without_a_grammar_the_model_writes_no_call(generator):
    """The control: the same prompt and seed, unconstrained, is not a valid call (so the grammar did the work)."""
    text, _ = await generate(generator, None, seed=1)
    assert not parse_tool_calls(TOOL_PARSERS["hermes"], text).tool_calls


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "objekt"}, "objekt"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"if": {"type": "string"}, "then": {"minLength": 1}}, "if"),
        ({"$ref": "#/$defs/missing"}, "missing"),
    ],
)
async def test_an_unsupported_schema_is_a_400_naming_the_schema(generator, schema, message):
    guidance = response_format_guidance({"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    with pytest.raises(InvalidRequestError) as info:
        await generate(generator, guidance, seed=1)
    assert info.value.param == "response_format.json_schema.schema"
    assert message in info.value.message and "response_format 's'" in info.value.message


async def test_the_tool_at_fault_is_named(generator):
    tools = [
        *TOOLS,
        {
            "type": "function",
            "function": {
                "name": "bad",
                "parameters": {"type": "object", "properties": {"x": {"not": {"type": "string"}}}},
            },
        },
    ]
    guidance = chat_guidance(TOOL_PARSERS["hermes"], tools=tools, tool_choice="required")
    with pytest.raises(InvalidRequestError) as info:
        await generate(generator, guidance, seed=1)
    assert info.value.param == "tools.3.function.parameters" and "function 'bad'" in info.value.message
    weather = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER}}
    text, finish = await generate(generator, response_format_guidance(weather), seed=5)  # the runner serves on
    assert finish == "stop"
    jsonschema.validate(json.loads(text), WEATHER)


async def test_min_tokens_cannot_hold_back_a_finished_grammar(generator):
    with pytest.raises(InvalidRequestError) as info:
        await generate(generator, response_format_guidance({"type": "json_object"}), seed=1, min_tokens=5)
    assert info.value.param == "min_tokens"


def _probe(model: RunnerModel) -> str | None:
    """The Generator path's start-up probe."""
    return probe_guidance(model, lambda *args: generator_scheduler.generate_greedy(model, *args))


def _loaded(chat_store) -> RunnerModel:
    folder = chat_store.get("tiny-llama").folder
    model = og.Model(str(folder))
    tokenizer, raw = og.Tokenizer(model), og.Tokenizer(model)
    raw.update_options(skip_special_tokens=False)
    genai = json.loads((folder / "genai_config.json").read_text())["model"]
    return RunnerModel(
        og_model=model,
        tokenizer=tokenizer,
        raw_tokenizer=raw,
        context_length=2048,
        vocab_size=genai["vocab_size"],
        eos_ids=frozenset([genai["eos_token_id"]]),
        bos_id=None,
        hf_tokenizer=load_hf_tokenizer(folder),
    )
