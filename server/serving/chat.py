"""Chat completions: a ChatCompletionRequest in, engine calls (one per choice), OpenAI's response or chunks out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from ortserve.server.engine.generation import Finished, GenerationRequest, TextDelta, TokenLogprob
from ortserve.server.protocol.chat import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    DeltaMessage,
)
from ortserve.server.protocol.common import Usage
from ortserve.server.protocol.logprobs import ChoiceLogprobs
from ortserve.server.registry import Registry
from ortserve.server.serving.chat_plan import ChatPlan, answer_deltas, finish_reason, plan_chat
from ortserve.server.serving.common import (
    SYSTEM_FINGERPRINT,
    Generation,
    choice_params,
    chunk_body,
    gather_all,
    merge,
    new_id,
    now,
    start_all,
)


async def create_chat_completion(
    registry: Registry, request: ChatCompletionRequest
) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
    """The response JSON, or (for `stream: true`) an iterator of chunk JSONs, started already."""
    lease = await registry.acquire(request.model, task="chat", keep_alive=request.keep_alive)
    try:
        plan = await plan_chat(lease.entry, lease.generator, request, registry.settings)
        request_id = new_id("chatcmpl")
        n = request.n or 1
        generations = await start_all(
            lease.generator,
            [GenerationRequest(f"{request_id}-{i}", plan.prompt, choice_params(plan.params, i)) for i in range(n)],
        )
    except BaseException:
        lease.release()
        raise
    if request.stream:
        return _stream(request, request_id, plan, generations, lease.release)
    try:
        results = await gather_all(g.collect() for g in generations)
    finally:
        for generation in generations:
            await generation.aclose()
        lease.release()
    choices = []
    for index, result in enumerate(results):
        message = plan.message(result.text, generations[index].started)
        choices.append(
            ChatCompletionChoice(
                index=index,
                message=message,
                logprobs=ChoiceLogprobs.of(result.logprobs) if request.logprobs else None,
                finish_reason=finish_reason(result.finished.finish_reason, bool(message.tool_calls)),
            )
        )
    return ChatCompletionResponse(
        id=request_id,
        created=now(),
        model=request.model,
        system_fingerprint=SYSTEM_FINGERPRINT,
        choices=choices,
        # the prompt is counted once, as OpenAI does; every choice's tokens count
        usage=Usage.of(
            results[0].finished.prompt_tokens,
            sum(r.finished.completion_tokens for r in results),
            results[0].finished.cached_tokens,
        ),
    ).model_dump()


async def _stream(
    request: ChatCompletionRequest,
    request_id: str,
    plan: ChatPlan,
    generations: list[Generation],
    release: Callable[[], None],
) -> AsyncIterator[dict[str, Any]]:
    created = now()
    include_usage = request.include_usage
    calls = [plan.tool_stream() for _ in generations]  # each choice's tool calls, read out of its text as it comes
    thoughts = [plan.reasoning_stream(g.started) for g in generations]  # each choice's reasoning, split off first
    # logprobs of tokens whose text is not out yet (held by a tool-call parser): they go with the choice's next chunk
    waiting: list[list[TokenLogprob]] = [[] for _ in generations]

    def chunk(index: int | None, delta: DeltaMessage | None = None, reason: str | None = None, usage=None) -> dict:
        choices = []
        if index is not None:
            logprobs = ChoiceLogprobs.of(waiting[index]) if waiting[index] else None
            waiting[index] = []
            choices = [ChatCompletionChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=reason)]
        chunk_model = ChatCompletionChunk(
            id=request_id,
            created=created,
            model=request.model,
            system_fingerprint=SYSTEM_FINGERPRINT,
            choices=choices,
            usage=usage,
        )
        return chunk_body(chunk_model, include_usage)

    prompt_tokens = completion_tokens = cached_tokens = 0
    try:
        for index in range(len(generations)):
            yield chunk(index, DeltaMessage(role="assistant", content=""))
        async with aclosing(merge(generations)) as events:
            async for index, event in events:
                parser, thought = calls[index], thoughts[index]
                if isinstance(event, TextDelta):
                    waiting[index].extend(event.logprobs)
                    if event.text:  # a token that ends mid-character has no text yet
                        for delta in answer_deltas(event.text, parser, thought):
                            yield chunk(index, delta)
                elif isinstance(event, Finished):
                    for delta in answer_deltas(None, parser, thought):
                        yield chunk(index, delta)
                    reason = finish_reason(event.finish_reason, bool(parser and parser.calls))
                    yield chunk(index, DeltaMessage(), reason)
                    if index == 0:  # the prompt is counted once: the first choice's
                        prompt_tokens, cached_tokens = event.prompt_tokens, event.cached_tokens
                    completion_tokens += event.completion_tokens
        if include_usage:
            yield chunk(None, usage=Usage.of(prompt_tokens, completion_tokens, cached_tokens))
    finally:
        for generation in generations:
            await generation.aclose()
        release()
