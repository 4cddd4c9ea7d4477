"""The chat planner: a chat request turned into a `ChatPlan`: the prompt as the model's template wants it
(the name's SYSTEM, images), the sampling parameters (the name's defaults), the grammar that constrains the
reply (a reasoning model's answer, after its reasoning), and how tool calls are read back out of it.
Completions use its guidance checks too."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from ortserve.core.store import ModelEntry
from ortserve.server.chat.grammars import chat_guidance, response_format_guidance
from ortserve.server.chat.reasoning import (
    Answer,
    Reasoning,
    ReasoningMarkers,
    ReasoningStream,
    prompt_opens_reasoning,
    split_reasoning,
)
from ortserve.server.chat.reasoning_grammar import reasoning_guidance, reasoning_limit
from ortserve.server.chat.templates import chat_profile
from ortserve.server.chat.tool_parsers import ToolParser
from ortserve.server.chat.tool_stream import (
    ArgumentsDelta,
    CallStarted,
    Content,
    Event,
    ToolCallStream,
    parse_tool_calls,
)
from ortserve.server.engine.generation import Guidance, Prompt, SamplingParams, Started, TextGenerator
from ortserve.server.errors import InvalidRequestError, NotSupportedError
from ortserve.server.images import ImageRef, load_images
from ortserve.server.protocol.chat import (
    ChatCompletionMessage,
    ChatCompletionMessageToolCall,
    ChatCompletionRequest,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
    DeltaMessage,
    Function,
)
from ortserve.server.protocol.common import ResponseFormat
from ortserve.server.serving.common import fit_vocabulary
from ortserve.server.settings import ServerSettings


@dataclass(frozen=True)
class ChatPlan:
    prompt: Prompt
    params: SamplingParams
    parser: type[ToolParser] | None  # None: the reply is all content (no tools offered)
    tool_names: tuple[str, ...] = ()
    max_calls: int | None = None
    reasoning: ReasoningMarkers | None = None  # a reasoning model: its reasoning is split from the answer

    def tool_stream(self) -> ToolCallStream | None:
        return None if self.parser is None else ToolCallStream(self.parser, self.tool_names, self.max_calls)

    def reasoning_stream(self, started: Started) -> ReasoningStream | None:
        """The reasoning splitter of one generation (it starts inside the reasoning when the prompt opened it)."""
        if self.reasoning is None:
            return None
        return ReasoningStream(self.reasoning, prompt_opens_reasoning(started.prompt_text, self.reasoning))

    def message(self, text: str, started: Started | None = None) -> ChatCompletionMessage:
        """The whole reply as OpenAI's assistant message: reasoning apart, tool calls read from the answer."""
        reasoning = None
        if self.reasoning is not None:
            inside = started is not None and prompt_opens_reasoning(started.prompt_text, self.reasoning)
            reasoning, text = split_reasoning(text, self.reasoning, inside)
        if self.parser is None:
            return ChatCompletionMessage(content=text, reasoning_content=reasoning)
        reply = parse_tool_calls(self.parser, text, self.tool_names, self.max_calls)
        calls = [
            ChatCompletionMessageToolCall(id=call.id, function=Function(name=call.name, arguments=call.arguments))
            for call in reply.tool_calls
        ]
        return ChatCompletionMessage(content=reply.content, reasoning_content=reasoning, tool_calls=calls or None)


def finish_reason(engine_reason: str, called: bool) -> str:
    """OpenAI's "tool_calls" when the model ended its turn with calls."""
    return "tool_calls" if called and engine_reason == "stop" else engine_reason


def deltas(events: Iterable[Event]) -> list[DeltaMessage]:
    """Stream deltas for parsed events: content; a call's id, type and name (arguments ""); argument fragments."""
    out = []
    for event in events:
        if isinstance(event, Content):
            out.append(DeltaMessage(content=event.text))
        elif isinstance(event, CallStarted):
            function = ChoiceDeltaToolCallFunction(name=event.name, arguments="")
            out.append(
                DeltaMessage(
                    tool_calls=[ChoiceDeltaToolCall(index=event.index, id=event.id, type="function", function=function)]
                )
            )
        elif isinstance(event, ArgumentsDelta):
            function = ChoiceDeltaToolCallFunction(arguments=event.text)
            out.append(DeltaMessage(tool_calls=[ChoiceDeltaToolCall(index=event.index, function=function)]))
    return out


def answer_deltas(
    text: str | None, parser: ToolCallStream | None, thought: ReasoningStream | None
) -> list[DeltaMessage]:
    """Stream deltas for a piece of a reply (None: its end): reasoning apart, then tool calls read from the answer."""
    if thought is None:
        pieces: list[Reasoning | Answer] = [Answer(text)] if text is not None else []
    else:
        pieces = thought.feed(text) if text is not None else thought.finish()
    out = []
    for piece in pieces:
        if isinstance(piece, Reasoning):
            out.append(DeltaMessage(reasoning_content=piece.text))
        elif parser is None:
            out.append(DeltaMessage(content=piece.text))
        else:
            out.extend(deltas(parser.feed(piece.text)))
    if text is None and parser is not None:
        out.extend(deltas(parser.finish()))
    return out


async def plan_chat(
    entry: ModelEntry, generator: TextGenerator, request: ChatCompletionRequest, settings: ServerSettings | None = None
) -> ChatPlan:
    """The prompt (its images loaded last, after every cheaper check), grammar and tool-call reading."""
    config = entry.config
    settings = settings or ServerSettings()
    image_parts = request.image_parts()
    check_images_accepted(entry, request.model, image_parts, settings.max_images)
    profile = await asyncio.to_thread(chat_profile, entry.folder, entry.manifest)
    parser = profile.tool_parser
    prompt = request.to_prompt(system=config.system)
    messages, template_tools = parser.prepare(prompt.messages or [], prompt.tools)
    tools = request.tool_dicts()
    guidance = chat_guidance(
        parser,
        tools=tools,
        tool_choice=request.tool_choice_value(),
        parallel_tool_calls=request.parallel_tool_calls is not False,
        response_format=request.response_format.as_dict() if request.response_format else None,
        special_tokens=profile.special_tokens,
    )
    require_guidance(generator, guidance)
    markers = profile.reasoning
    keep = (parser.special_texts() if tools else ()) + ((markers.open, markers.close) if markers else ())
    params = fit_vocabulary(request.to_sampling_params(config.defaults), entry)
    if guidance is not None and markers is not None and not (markers.switch and request.thinking() is False):
        limit = reasoning_limit(params.max_tokens, generator.context_length)  # the grammar applies to the answer
        guidance = reasoning_guidance(guidance, markers, special=profile.special_tokens, max_chars=limit)
    params = replace(params, guidance=guidance, keep_special=keep)
    template_vars = request.template_vars(markers.switch if markers else None)
    images: tuple[bytes, ...] = ()
    if image_parts:
        fit = await asyncio.to_thread(image_fit_pixels, entry)
        images = await load_images([ImageRef(url, param) for param, url in image_parts], settings, fit_pixels=fit)
    return ChatPlan(
        prompt=Prompt(
            messages=messages,
            tools=template_tools,
            images=images,
            template_vars=template_vars,
            template=profile.template if template_vars else None,
        ),
        params=params,
        parser=parser if tools else None,
        tool_names=tuple(tool["function"]["name"] for tool in tools or ()),
        max_calls=None if request.parallel_tool_calls is not False else 1,
        reasoning=markers,
    )


def accepts_images(entry: ModelEntry) -> bool:
    """A model reads images when its manifest lists the "image" modality."""
    return "image" in (entry.manifest.get("modalities") or ())


# Images are scaled down in the server to this many times the most pixels the model's processor keeps:
# it shrinks them once more itself (a second, small resampling step, so the pixels differ slightly from a
# single resize), but a 12 MP photo no longer crosses the pipe or holds the runner's GIL in preprocessing.
IMAGE_FIT_FACTOR = 2


def image_fit_pixels(entry: ModelEntry) -> int | None:
    """IMAGE_FIT_FACTOR x the `max_pixels` of the model's processor_config.json; None when it names none."""
    return _fit_pixels(str(entry.folder / "processor_config.json"), entry.manifest.get("_folder_mtime"))


@functools.lru_cache(maxsize=64)
def _fit_pixels(path: str, _version: object) -> int | None:
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = [v for v in _values(config, "max_pixels") if isinstance(v, int) and v > 0]
    return IMAGE_FIT_FACTOR * min(found) if found else None


def _values(tree: object, key: str) -> Iterable[object]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key:
                yield v
            yield from _values(v, key)
    elif isinstance(tree, list):
        for v in tree:
            yield from _values(v, key)


def check_images_accepted(entry: ModelEntry, model: str, image_parts: list[tuple[str, str]], max_images: int) -> None:
    """Refuse images a model cannot read, or too many, before anything is fetched (param: the part)."""
    if not image_parts:
        return
    part = image_parts[0][0].removesuffix(".image_url")
    if not accepts_images(entry):
        raise InvalidRequestError(
            f"Invalid content part in '{part}': the model '{model}' does not accept images (a text-only model).",
            param=part,
        )
    if len(image_parts) > max_images:
        extra = image_parts[max_images][0].removesuffix(".image_url")
        raise InvalidRequestError(
            f"Too many images: the request has {len(image_parts)}, at most {max_images} are accepted (max_images).",
            param=extra,
        )


def completion_guidance(generator: TextGenerator, response_format: ResponseFormat | None) -> Guidance | None:
    guidance = response_format_guidance(response_format.as_dict() if response_format else None)
    require_guidance(generator, guidance)
    return guidance


def require_guidance(generator: TextGenerator, guidance: Guidance | None) -> None:
    """A grammar the model cannot enforce is a 501, never unconstrained text."""
    if guidance is not None and generator.guidance_error is not None:
        raise NotSupportedError(
            f"'{guidance.param}' needs constrained decoding, which is not available with this model "
            f"({generator.guidance_error}).",
            param=guidance.param,
        )
