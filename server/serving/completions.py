"""Text completions: one choice per prompt, the prompts generated concurrently."""
from __future__ import annotations

from contextlib import aclosing
from dataclasses import replace
from typing import Any, AsyncIterator, Callable

from server.engine.base import Finished, GenerationRequest, TextDelta
from server.protocol.common import Usage
from server.protocol.completions import CompletionChoice, CompletionRequest, CompletionResponse
from server.registry import Registry
from server.serving.common import SYSTEM_FINGERPRINT, Generation, gather_all, merge, new_id, now, start_all
from server.serving.structured import completion_guidance


async def create_completion(
    registry: Registry, request: CompletionRequest
) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
    """The response JSON, or (for `stream: true`) an iterator of chunk JSONs, started already."""
    lease = await registry.acquire(request.model, task="chat")
    try:
        config = lease.entry.config
        request_id = new_id("cmpl")
        guidance = completion_guidance(lease.generator, request.response_format)
        params = replace(request.to_sampling_params(config.defaults), guidance=guidance)
        prompts = request.to_prompts(lease.generator.fim_tokens)
        generations = await start_all(
            lease.generator,
            [GenerationRequest(f"{request_id}-{i}", prompt, params) for i, prompt in enumerate(prompts)],
        )
    except BaseException:
        lease.release()
        raise
    if request.stream:
        return _stream(request, request_id, generations, lease.release)
    try:
        results = await gather_all(g.collect() for g in generations)
    finally:
        for generation in generations:
            await generation.aclose()
        lease.release()
    choices = []
    for index, (generation, (text, finished)) in enumerate(zip(generations, results)):
        if request.echo:
            text = (generation.started.prompt_text or "") + text
        choices.append(CompletionChoice(index=index, text=text, finish_reason=finished.finish_reason))
    return CompletionResponse(
        id=request_id,
        created=now(),
        model=request.model,
        system_fingerprint=SYSTEM_FINGERPRINT,
        choices=choices,
        usage=Usage.of(
            sum(finished.prompt_tokens for _, finished in results),
            sum(finished.completion_tokens for _, finished in results),
        ),
    ).model_dump()


async def _stream(
    request: CompletionRequest, request_id: str, generations: list[Generation], release: Callable[[], None]
) -> AsyncIterator[dict[str, Any]]:
    created = now()
    include_usage = request.include_usage

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> dict[str, Any]:
        body = CompletionResponse(
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

    prompt_tokens = completion_tokens = 0
    try:
        if request.echo:
            for index, generation in enumerate(generations):
                text = generation.started.prompt_text or ""
                yield chunk([CompletionChoice(index=index, text=text, finish_reason=None)])
        async with aclosing(merge(generations)) as events:
            async for index, event in events:
                if isinstance(event, TextDelta):
                    if event.text:
                        yield chunk([CompletionChoice(index=index, text=event.text, finish_reason=None)])
                elif isinstance(event, Finished):
                    prompt_tokens += event.prompt_tokens
                    completion_tokens += event.completion_tokens
                    yield chunk([CompletionChoice(index=index, text="", finish_reason=event.finish_reason)])
        if include_usage:
            yield chunk([], usage=Usage.of(prompt_tokens, completion_tokens))
    finally:
        for generation in generations:
            await generation.aclose()
        release()
