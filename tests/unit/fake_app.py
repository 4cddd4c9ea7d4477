"""A fake engine behind the real Quart app, for the unit tests of the HTTP layer (test_app_errors,
test_bad_input, test_embedding_logic): what the server does around generation, not generation itself."""

from __future__ import annotations

import asyncio
import json

from ortserve.core.model_config import ModelConfig
from ortserve.core.store import MANIFEST, ModelStore
from ortserve.server.engine.generation import Finished, GenerationRequest, Started, TextDelta
from ortserve.server.errors import ContextLengthError

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hello there"}]


class FakeGenerator:
    device = "cpu"
    guidance_error = "the fake engine cannot constrain its output"  # like an onnxruntime-genai without llguidance

    def __init__(self, reply=("Hel", "lo", "!"), fim_tokens=None, context_length=32, gate=None, fail_at=None):
        self.reply, self.fim_tokens, self.context_length = reply, fim_tokens, context_length
        self.gate, self.fail_at = gate, fail_at
        self.requests: list[GenerationRequest] = []
        self.stopped_early = 0
        self.closed = False
        self.interrupted: Exception | None = None  # set by interrupt(): raised at the next piece

    async def generate(self, request: GenerationRequest):
        self.requests.append(request)
        prompt = request.prompt
        text = prompt.text if prompt.text is not None else " ".join(m["content"] or "" for m in prompt.messages or [])
        n_prompt = len(prompt.token_ids) if prompt.token_ids else len(text.split())
        if n_prompt > self.context_length:
            raise ContextLengthError(f"{n_prompt} prompt tokens > {self.context_length}", param="messages")
        budget = request.params.max_tokens or len(self.reply)
        yield Started(prompt_tokens=n_prompt, max_tokens=budget, prompt_text=text)
        done = 0
        try:
            for piece in self.reply[:budget]:
                if self.gate is not None:
                    await self.gate.wait()
                if self.interrupted is not None:
                    raise self.interrupted
                if done == self.fail_at:
                    raise RuntimeError("the runner crashed")
                yield TextDelta(piece, (done,))
                done += 1
        except (GeneratorExit, asyncio.CancelledError):
            self.stopped_early += 1
            raise
        yield Finished("length" if budget < len(self.reply) else "stop", n_prompt, done)

    def interrupt(self, error: Exception) -> None:
        self.interrupted = error
        if self.gate is not None:
            self.gate.set()

    async def close(self) -> None:
        self.closed = True


class FakeBackend:
    """Stands in for ortserve.server.engine.load_generator; remembers every load."""

    def __init__(self):
        self.options: dict = {}
        self.generators: list[FakeGenerator] = []
        self.loads: list[tuple] = []
        self.fail_next_load = False

    async def load(self, entry, *, num_ctx=None, device="cpu"):
        self.loads.append((entry.name, num_ctx, device))
        await asyncio.sleep(0.02)
        if self.fail_next_load:
            self.fail_next_load = False
            raise RuntimeError("out of memory")
        self.generators.append(FakeGenerator(**self.options))
        return self.generators[-1]


def add_model(store: ModelStore, name: str, task: str = "chat", **config) -> None:
    folder = store.models_dir / name
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(json.dumps({"task": task, "created": "2025-01-01T00:00:00"}))
    store.write_config(name, ModelConfig(**config))


def chat_body(**fields) -> dict:
    return {"model": "tiny", "messages": USER, **fields}


def sse_data(raw: str) -> list[str]:
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: ") :] for e in events]


def assert_error(body: dict, *, type: str, param=None, code=None) -> None:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert (body["error"]["type"], body["error"]["param"], body["error"]["code"]) == (type, param, code)
