"""Chat completions: a ChatCompletionRequest in, engine calls, OpenAI's response or chunks out."""
from __future__ import annotations

from contextlib import aclosing
from typing import Any, AsyncIterator, Callable

from server.engine.base import Finished, GenerationRequest, TextDelta
from server.protocol.chat import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    DeltaMessage,
)
from server.protocol.common import Usage
from server.registry import Registry
from server.serving.common import SYSTEM_FINGERPRINT, Generation, new_id, now
from server.serving.structured import ChatPlan, deltas, finish_reason, plan_chat


async def create_chat_completion(
    registry: Registry, request: ChatCompletionRequest
) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
    """The response JSON, or (for `stream: true`) an iterator of chunk JSONs, started already."""
    lease = await registry.acquire(request.model, task="chat")
    try:
        plan = await plan_chat(lease.entry, lease.generator, request)
        request_id = new_id("chatcmpl")
        engine_request = GenerationRequest(request_id=request_id, prompt=plan.prompt, params=plan.params)
        generation = await Generation.start(lease.generator, engine_request)
    except BaseException:
        lease.release()
        raise
    if request.stream:
        return _stream(request, request_id, plan, generation, lease.release)
    try:
        text, finished = await generation.collect()
    finally:
        await generation.aclose()
        lease.release()
    message = plan.message(text)
    return ChatCompletionResponse(
        id=request_id,
        created=now(),
        model=request.model,
        system_fingerprint=SYSTEM_FINGERPRINT,
        choices=[
            ChatCompletionChoice(
                index=0,
                message=message,
                finish_reason=finish_reason(finished.finish_reason, bool(message.tool_calls)),
            )
        ],
        usage=Usage.of(finished.prompt_tokens, finished.completion_tokens),
    ).model_dump()


async def _stream(
    request: ChatCompletionRequest,
    request_id: str,
    plan: ChatPlan,
    generation: Generation,
    release: Callable[[], None],
) -> AsyncIterator[dict[str, Any]]:
    created = now()
    include_usage = request.include_usage
    calls = plan.tool_stream()  # reads tool calls out of the text as it comes

    def chunk(delta: DeltaMessage | None, finish_reason: str | None = None, usage: Usage | None = None) -> dict:
        choices = [] if delta is None else [
            ChatCompletionChunkChoice(index=0, delta=delta, finish_reason=finish_reason)
        ]
        body = ChatCompletionChunk(
            id=request_id,
            created=created,
            model=request.model,
            system_fingerprint=SYSTEM_FINGERPRINT,
            choices=choices,
            usage=usage,
        ).model_dump()
        if not include_usage:
            del body["usage"]
        return body

    try:
        yield chunk(DeltaMessage(role="assistant", content=""))
        async with aclosing(generation.deltas()) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    if event.text:  # a token that ends mid-character has no text yet
                        for delta in deltas(calls.feed(event.text)) if calls else [DeltaMessage(content=event.text)]:
                            yield chunk(delta)
                elif isinstance(event, Finished):
                    if calls:
                        for delta in deltas(calls.finish()):
                            yield chunk(delta)
                    reason = finish_reason(event.finish_reason, bool(calls and calls.calls))
                    yield chunk(DeltaMessage(), finish_reason=reason)
                    if include_usage:
                        yield chunk(None, usage=Usage.of(event.prompt_tokens, event.completion_tokens))
    finally:
        await generation.aclose()
        release()
