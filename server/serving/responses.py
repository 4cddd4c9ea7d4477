"""Responses: a ResponsesRequest run through the chat pipeline (the same chat request, plan, grammars, tool-call
reading, reasoning split and engine call as /v1/chat/completions), its reply turned into Responses output items.

The conversation a request continues (`previous_response_id`) comes from the stored responses; the input is
put after it as chat messages, `instructions` first as the system message. An error about a chat field is
renamed to the Responses field it came from ("messages.2.content.0" -> "input.1.content.0").

One event core (`ResponseRun.events`, serving/response_events.py) builds the output for both answers: a
streamed response is its events; an unstreamed one is the response of its last event. So the two are the same.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, contextmanager
from typing import Any

from ortserve.server.engine.generation import Finished, GenerationRequest, TextDelta
from ortserve.server.errors import APIError, InvalidRequestError, NotFoundError, error_body
from ortserve.server.protocol.chat import ChatCompletionRequest
from ortserve.server.protocol.common import parse_request
from ortserve.server.protocol.response_objects import ResponseDeleted, ResponsesResponse, ResponseUsage
from ortserve.server.protocol.responses import ResponsesRequest
from ortserve.server.registry import Registry
from ortserve.server.responses_store import ResponseStore
from ortserve.server.serving.chat_plan import ChatPlan, answer_deltas, plan_chat
from ortserve.server.serving.common import Generation
from ortserve.server.serving.response_events import OutputBuilder, output_messages

log = logging.getLogger(__name__)


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


async def create_response(
    registry: Registry, store: ResponseStore, request: ResponsesRequest
) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
    """The response JSON, or (for `stream: true`) an iterator of its stream events, started already."""
    history: list[dict[str, Any]] = []
    if request.previous_response_id is not None:
        previous = await store.get(request.previous_response_id)
        if previous is None:
            raise NotFoundError(
                f"Previous response with id '{request.previous_response_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        history = previous.conversation
    inputs, origins = request.input_messages()
    system = [{"role": "system", "content": request.instructions}] if request.instructions else []
    if not history and not inputs:
        raise InvalidRequestError("Invalid value for 'input': the input has no message.", param="input")
    origins = ["instructions"] * len(system) + ["previous_response_id"] * len(history) + origins
    with responses_params(origins):
        chat = parse_request(ChatCompletionRequest, {**request.chat_fields(), "messages": system + history + inputs})
        lease = await registry.acquire(request.model, task="chat", keep_alive=request.keep_alive)
        try:
            plan = await plan_chat(lease.entry, lease.generator, chat, registry.settings)
            response_id = new_response_id()
            generation = await Generation.start(
                lease.generator, GenerationRequest(response_id, plan.prompt, plan.params)
            )
        except BaseException:
            lease.release()
            raise
    run = ResponseRun(request, response_id, plan, generation, lease.release, store, history + inputs)
    if request.stream:
        return run.stream()
    return await run.result()


async def retrieve_response(store: ResponseStore, response_id: str) -> dict[str, Any]:
    stored = await store.get(response_id)
    if stored is None:
        raise _unknown(response_id)
    return stored.response


async def delete_response(store: ResponseStore, response_id: str) -> dict[str, Any]:
    if not await store.delete(response_id):
        raise _unknown(response_id)
    return ResponseDeleted(id=response_id).model_dump()


def _unknown(response_id: str) -> NotFoundError:
    return NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")


# ---- error params: chat's names -> the Responses request's ------------------------------------------------
_RENAMES = (
    (re.compile(r"^response_format\.json_schema(?=\.|$)"), "text.format"),
    (re.compile(r"^response_format(?=\.|$)"), "text.format"),
    (re.compile(r"^max_completion_tokens$"), "max_output_tokens"),
    (re.compile(r"^reasoning_effort$"), "reasoning.effort"),
    (re.compile(r"^tools\.(\d+)\.function(?=\.|$)"), r"tools.\1"),
)
_QUOTED = re.compile(r"'((?:messages|response_format|max_completion_tokens|reasoning_effort|tools)\b[^']*)'")
_MESSAGE = re.compile(r"^messages\.(\d+)(\.content|\.tool_calls|\.tool_call_id)?(.*)$")


def responses_param(param: str | None, origins: list[str]) -> str | None:
    """The Responses field a chat request's `param` names (`origins`: where each chat message came from)."""
    if param is None:
        return None
    found = _MESSAGE.match(param)
    if found is None:
        for pattern, replacement in _RENAMES:
            param = pattern.sub(replacement, param)
        return param
    index, part, rest = int(found[1]), found[2], found[3]
    origin = origins[index] if index < len(origins) else "input"
    if part == ".content" and origin.startswith("input."):
        return f"{origin}.content{rest}"
    return origin


@contextmanager
def responses_params(origins: list[str]):
    """Errors raised inside are renamed to the Responses request's fields."""
    try:
        yield
    except APIError as exc:
        exc.param = responses_param(exc.param, origins)
        exc.message = _QUOTED.sub(lambda found: f"'{responses_param(found[1], origins)}'", exc.message)
        raise


# ---- one response's run ---------------------------------------------------------------------------------------
class ResponseRun:
    """One response being generated: its stream events, its final object, and storing it."""

    def __init__(
        self,
        request: ResponsesRequest,
        response_id: str,
        plan: ChatPlan,
        generation: Generation,
        release: Callable[[], None],
        store: ResponseStore,
        conversation: list[dict[str, Any]],
    ):
        self.request, self.plan, self.generation, self.release = request, plan, generation, release
        self.store, self.conversation = store, conversation
        self.response = skeleton(request, response_id)
        self.output = OutputBuilder(summary=request.summary is not None)

    async def result(self) -> dict[str, Any]:
        final: dict[str, Any] = {}
        async with aclosing(self.events()) as events:
            async for event in events:
                final = event
        return final["response"]  # the last event: response.completed or response.incomplete

    async def stream(self) -> AsyncGenerator[dict[str, Any], None]:
        """The events; a failure ends them with an `error` event, then response.failed (the stream has started:
        its HTTP status cannot change any more), as the chat streams end with an error event."""
        try:
            async with aclosing(self.events()) as events:
                async for event in events:
                    yield event
        except Exception as exc:  # CancelledError (the client left) is not an Exception: it propagates
            if not isinstance(exc, APIError):
                log.exception("error inside a stream")
            error = error_body(exc)[0]["error"]
            yield self.output.event("error", code=error["code"], message=error["message"], param=error["param"])
            failed = self._final("failed", error={"code": error["code"] or error["type"], "message": error["message"]})
            await self._store(failed)
            yield self.output.event("response.failed", response=failed)

    async def events(self) -> AsyncGenerator[dict[str, Any], None]:
        """Every stream event up to response.completed (or .incomplete); raises what the generation raises."""
        output, plan = self.output, self.plan
        parser, thought = plan.tool_stream(), plan.reasoning_stream(self.generation.started)
        reasoning_tokens = 0
        finished: Finished | None = None
        try:
            yield output.event("response.created", response=self.response)
            yield output.event("response.in_progress", response=self.response)
            async with aclosing(self.generation.deltas()) as deltas:
                async for event in deltas:
                    if isinstance(event, TextDelta):
                        before = (thought.reasoned, thought.closed) if thought is not None else (False, False)
                        pieces = answer_deltas(event.text, parser, thought) if event.text else []
                        if thought is not None and (before == (True, False) or thought.reasoned and not before[0]):
                            reasoning_tokens += len(event.token_ids)  # the delta that closes it counts whole
                        for delta in pieces:
                            for out in output.feed(delta):
                                yield out
                    else:
                        finished = event
                        for delta in answer_deltas(None, parser, thought):
                            for out in output.feed(delta):
                                yield out
        finally:
            await self.generation.aclose()
            self.release()
        assert finished is not None  # deltas() ends with Finished or raises
        incomplete = finished.finish_reason == "length"
        for out in output.close(incomplete):
            yield out
        usage = ResponseUsage.of(
            finished.prompt_tokens, finished.completion_tokens, finished.cached_tokens, reasoning_tokens
        ).model_dump()
        if incomplete:
            final = self._final("incomplete", usage=usage, incomplete_details={"reason": "max_output_tokens"})
        else:
            final = self._final("completed", usage=usage)
        await self._store(final)
        yield output.event("response.incomplete" if incomplete else "response.completed", response=final)

    def _final(self, status: str, **fields: Any) -> dict[str, Any]:
        body = {**self.response, "status": status, "completed_at": int(time.time()), "output": self.output.items}
        return ResponsesResponse.model_validate({**body, **fields}).model_dump()

    async def _store(self, response: dict[str, Any]) -> None:
        if self.request.store is not False:
            await self.store.put(response, self.conversation + output_messages(response["output"]))


def skeleton(request: ResponsesRequest, response_id: str) -> dict[str, Any]:
    """The response object before its output: the request's settings as OpenAI echoes them."""
    text_format = request.text.format if request.text and request.text.format else None
    choice = request.tool_choice
    reasoning = request.reasoning
    return ResponsesResponse(
        id=response_id,
        created_at=int(time.time()),
        status="in_progress",
        instructions=request.instructions,
        max_output_tokens=request.max_output_tokens,
        model=request.model,
        output=[],
        parallel_tool_calls=request.parallel_tool_calls is not False,
        previous_response_id=request.previous_response_id,
        reasoning={"effort": reasoning.effort, "summary": request.summary} if reasoning else None,
        store=request.store is not False,
        temperature=request.temperature,
        text={"format": text_format.model_dump(by_alias=True, exclude_none=True) if text_format else {"type": "text"}},
        tool_choice=(
            choice.model_dump(exclude_none=True) if choice is not None and not isinstance(choice, str) else choice
        )
        or "auto",
        tools=[tool.model_dump(exclude_none=True) for tool in request.tools or ()],
        top_p=request.top_p,
        user=request.user,
        metadata=request.metadata or {},
    ).model_dump()
