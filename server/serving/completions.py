"""Text completions: n choices per prompt (best_of candidates, the likeliest kept), generated concurrently.

Choices are ordered by prompt, then by choice: prompt p's choice j has index p * n + j.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from ortserve.server.engine.generation import Finished, GenerationRequest, SamplingParams, TextDelta, TokenLogprob
from ortserve.server.protocol.common import Usage
from ortserve.server.protocol.completions import CompletionChoice, CompletionRequest, CompletionResponse
from ortserve.server.protocol.logprobs import CompletionLogprobs, TextOffsets
from ortserve.server.registry import Registry
from ortserve.server.serving.chat_plan import completion_guidance
from ortserve.server.serving.common import (
    SYSTEM_FINGERPRINT,
    Collected,
    Generation,
    choice_params,
    chunk_body,
    fit_vocabulary,
    gather_all,
    merge,
    new_id,
    now,
    start_all,
)


def _candidate_params(request: CompletionRequest, params: SamplingParams, index: int) -> SamplingParams:
    """Candidate `index` of a prompt. Ranking (best_of > n) needs logprobs; echo's prompt logprobs are
    read once per prompt, by its first candidate."""
    params = choice_params(params, index)
    if request.candidates_per_prompt > request.choices_per_prompt and params.logprobs is None:
        params = replace(params, logprobs=0)
    if request.echo and request.logprobs is not None and index == 0:
        params = replace(params, prompt_logprobs=request.logprobs)
    return params


async def create_completion(
    registry: Registry, request: CompletionRequest
) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
    """The response JSON, or (for `stream: true`) an iterator of chunk JSONs, started already."""
    lease = await registry.acquire(request.model, task="chat", keep_alive=request.keep_alive)
    try:
        config = lease.entry.config
        request_id = new_id("cmpl")
        guidance = completion_guidance(lease.generator, request.response_format)
        params = replace(fit_vocabulary(request.to_sampling_params(config.defaults), lease.entry), guidance=guidance)
        prompts = request.to_prompts(lease.generator.fim_tokens)
        k = request.candidates_per_prompt
        generations = await start_all(
            lease.generator,
            [
                GenerationRequest(f"{request_id}-{p}-{j}", prompt, _candidate_params(request, params, j))
                for p, prompt in enumerate(prompts)
                for j in range(k)
            ],
        )
    except BaseException:
        lease.release()
        raise
    if request.stream:
        return _stream(request, request_id, generations, lease.release)
    try:
        results = await gather_all(g.collect() for g in generations)
        if request.echo and request.logprobs is not None:
            for generation in generations[::k]:
                await generation.read_prompt_logprobs()  # arrived before the text: no wait
    finally:
        for generation in generations:
            await generation.aclose()
        lease.release()
    choices = []
    for p in range(len(prompts)):
        first = generations[p * k]
        candidates = results[p * k : (p + 1) * k]
        if k > request.choices_per_prompt:  # best_of: the likeliest per token, best first
            candidates = sorted(candidates, key=lambda c: -c.mean_logprob)[: request.choices_per_prompt]
        for j, result in enumerate(candidates):
            choices.append(_choice(request, p * request.choices_per_prompt + j, first, result))
    return CompletionResponse(
        id=request_id,
        created=now(),
        model=request.model,
        system_fingerprint=SYSTEM_FINGERPRINT,
        choices=choices,
        # each prompt counted once, as OpenAI does; every candidate's tokens count (best_of's included)
        usage=Usage.of(
            sum(r.finished.prompt_tokens for r in results[::k]),
            sum(r.finished.completion_tokens for r in results),
            sum(r.finished.cached_tokens for r in results[::k]),
        ),
    ).model_dump()


def _choice(request: CompletionRequest, index: int, first: Generation, result: Collected) -> CompletionChoice:
    """A choice of the prompt whose first candidate is `first` (it holds the echo's prompt logprobs)."""
    prompt_text = (first.started.prompt_text or "") if request.echo else ""
    logprobs = None
    if request.logprobs is not None:
        logprobs = CompletionLogprobs.of((first.prompt_logprobs or ()) if request.echo else (), TextOffsets())
        logprobs.extend(CompletionLogprobs.of(result.logprobs, TextOffsets(len(prompt_text))))
    return CompletionChoice(
        index=index, text=prompt_text + result.text, logprobs=logprobs, finish_reason=result.finished.finish_reason
    )


async def _stream(
    request: CompletionRequest, request_id: str, generations: list[Generation], release: Callable[[], None]
) -> AsyncIterator[dict[str, Any]]:
    created = now()
    include_usage = request.include_usage
    want_logprobs = request.logprobs is not None
    n = request.choices_per_prompt  # best_of == n when streaming
    offsets = [TextOffsets() for _ in generations]
    waiting: list[list[TokenLogprob]] = [[] for _ in generations]  # logprobs of tokens with no text out yet

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> dict[str, Any]:
        chunk_model = CompletionResponse(
            id=request_id,
            created=created,
            model=request.model,
            system_fingerprint=SYSTEM_FINGERPRINT,
            choices=choices,
            usage=usage,
        )
        return chunk_body(chunk_model, include_usage)

    def choice(index: int, text: str, reason: str | None = None) -> CompletionChoice:
        logprobs = CompletionLogprobs.of(waiting[index], offsets[index]) if want_logprobs else None
        waiting[index] = []
        return CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=reason)

    prompt_tokens = completion_tokens = cached_tokens = 0
    try:
        if request.echo:
            for index, generation in enumerate(generations):
                text = generation.started.prompt_text or ""
                if want_logprobs:
                    first = generations[index - index % n]  # the prompt's first choice reads its logprobs
                    waiting[index] = list(await first.read_prompt_logprobs())
                yield chunk([choice(index, text)])
                offsets[index] = TextOffsets(len(text))
        async with aclosing(merge(generations)) as events:
            async for index, event in events:
                if isinstance(event, TextDelta):
                    waiting[index].extend(event.logprobs)
                    if event.text:
                        yield chunk([choice(index, event.text)])
                elif isinstance(event, Finished):
                    if index % n == 0:
                        prompt_tokens += event.prompt_tokens
                        cached_tokens += event.cached_tokens
                    completion_tokens += event.completion_tokens
                    yield chunk([choice(index, "", event.finish_reason)])
        if include_usage:
            yield chunk([], usage=Usage.of(prompt_tokens, completion_tokens, cached_tokens))
    finally:
        for generation in generations:
            await generation.aclose()
        release()
