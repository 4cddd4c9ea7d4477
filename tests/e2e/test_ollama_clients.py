"""Ollama's native API against a real `ortserve serve`, driven by the official `ollama` Python library and
LangChain's ChatOllama / OllamaEmbeddings with only the host changed; and the reasoning split on /v1 and /api
with the tiny Qwen3-shaped reasoning model (tests/reasoning_fixture.py).

The models have random weights: tests check shapes, counts, grammars and the split, never wording. The
examples follow the clients' READMEs (`chat(model=..., messages=[...])`, `for part in chat(..., stream=True)`).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess

import httpx
import ollama
import pytest

from tests.e2e.conftest import CHAT_MODEL, start_server, stop_server_cleanly
from tests.reasoning_fixture import add_reasoning_model

THINKER = "tiny-think"
EMBEDDER = "all-minilm"
VISION = "tiny-vlm"
OPTIONS = {"num_predict": 12, "seed": 7}
ASK = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def ollama_server(store_home, vision_store_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e-ollama") / "home"
    shutil.copytree(store_home, home)
    for path in (vision_store_home / "models").iterdir():
        target = home / "models" / path.name
        (shutil.copytree if path.is_dir() else shutil.copy)(path, target)
    add_reasoning_model(home / "models", source="tiny-qwen", name=THINKER)
    server = start_server(home, tmp_path_factory.mktemp("e2e-ollama-logs") / "server.log")
    yield server
    stop_server_cleanly(server)


@pytest.fixture(scope="module")
def client(ollama_server) -> ollama.Client:
    client = ollama.Client(host=ollama_server.base_url, timeout=120)
    yield client
    client._client.close()  # the library's httpx client (it has no close of its own)


# ---- the ollama library ------------------------------------------------------------------------------
def test_chat_and_its_durations(client):
    response = client.chat(model=CHAT_MODEL, messages=ASK, options=OPTIONS)
    assert response.done and response.done_reason == "length" and response.message.role == "assistant"
    assert response.eval_count == 12 and response.prompt_eval_count > 5
    assert (
        response.total_duration >= response.load_duration + response.prompt_eval_duration + response.eval_duration > 0
    )
    again = client.chat(model=CHAT_MODEL, messages=ASK, options=OPTIONS, stream=False)
    assert again.message.content == response.message.content  # the same seed


def test_chat_streamed(client):
    parts = list(client.chat(model=CHAT_MODEL, messages=ASK, options=OPTIONS, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].eval_count == 12
    whole = client.chat(model=CHAT_MODEL, messages=ASK, options=OPTIONS).message.content
    assert "".join(p.message.content for p in parts) == whole


def test_generate_raw_and_load(client):
    response = client.generate(model=CHAT_MODEL, prompt="Why is the sky blue?", options=OPTIONS)
    assert response.done and response.eval_count == 12 and isinstance(response.response, str)
    raw = client.generate(model=CHAT_MODEL, prompt="Once upon", raw=True, options=OPTIONS)
    assert raw.prompt_eval_count < response.prompt_eval_count  # no chat template around it
    assert client.generate(model=CHAT_MODEL, prompt="").done_reason == "load"
    assert CHAT_MODEL in [m.model for m in client.ps().models]


def test_format_schema(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "integer"}}, "required": ["n"]}
    response = client.chat(model=CHAT_MODEL, messages=ASK, format=schema, options={"num_predict": 60, "seed": 1})
    assert isinstance(json.loads(response.message.content)["n"], int)


def test_tools_and_their_results(client):
    def get_weather(city: str) -> str:
        """Get the current weather for a city.

        Args:
          city: The name of the city
        """
        return "sunny"

    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    response = client.chat(model=CHAT_MODEL, messages=messages, tools=[get_weather], options=OPTIONS)
    assert response.done and "<tool_call>" not in response.message.content


def test_embed(client):
    response = client.embed(model=EMBEDDER, input=["The sky is blue.", "Grass is green."])
    assert len(response.embeddings) == 2 and len(response.embeddings[0]) == 384
    assert abs(sum(x * x for x in response.embeddings[0]) - 1) < 1e-4
    assert client.embed(model=EMBEDDER, input="x", dimensions=64).embeddings[0].__len__() == 64
    old = client.embeddings(model=EMBEDDER, prompt="The sky is blue.")
    assert old.embedding == pytest.approx(response.embeddings[0], abs=1e-5)


def test_list_show_copy_delete(client):
    names = [m.model for m in client.list().models]
    assert {CHAT_MODEL, THINKER, EMBEDDER} <= set(names)
    shown = client.show(THINKER)
    assert set(shown.capabilities) >= {"completion", "thinking"} and "<think>" in shown.template
    assert client.show(EMBEDDER).capabilities == ["embedding"]
    assert "vision" in client.show(VISION).capabilities
    client.copy(CHAT_MODEL, "ollama-copy")
    assert client.show("ollama-copy").modelfile.startswith(f"FROM {CHAT_MODEL}")
    client.create(model="ollama-terse", from_="ollama-copy", system="Be terse.", parameters={"temperature": 0.2})
    assert 'SYSTEM "Be terse."' in client.show("ollama-terse").modelfile
    client.delete("ollama-terse")
    client.delete("ollama-copy")
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("ollama-copy")
    assert info.value.status_code == 404


def test_errors_in_ollamas_shape(client, ollama_server):
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="no-such-model", messages=ASK)
    assert info.value.status_code == 404 and "no-such-model" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model=CHAT_MODEL, messages=ASK, think=True)  # not a reasoning model
    assert info.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as info:
        client.pull("some/model")
    assert "ortserve convert" in info.value.error
    answer = httpx.post(f"{ollama_server.base_url}/api/chat", json={"model": CHAT_MODEL, "options": {"mirostat": 1}})
    assert answer.status_code == 400 and answer.json() == {"error": answer.json()["error"]}
    assert httpx.get(f"{ollama_server.base_url}/").text == "ortserve is running"


def test_image_on_the_vision_model(client):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    message = {"role": "user", "content": "What is in the picture?", "images": [image]}
    response = client.chat(model=VISION, messages=[message], options=OPTIONS)
    text_only = client.chat(
        model=VISION, messages=[{"role": "user", "content": "What is in the picture?"}], options=OPTIONS
    )
    assert response.prompt_eval_count > text_only.prompt_eval_count  # the image's tokens were read


# ---- reasoning: the tiny model's template opens <think>; with think false it writes an empty block --------
def test_think_on_and_off(client):
    on = client.chat(model=THINKER, messages=ASK, options=OPTIONS)
    assert on.message.thinking and on.message.content == ""  # a random model never closes its reasoning
    off = client.chat(model=THINKER, messages=ASK, think=False, options=OPTIONS)
    assert off.message.thinking is None and off.message.content
    assert off.prompt_eval_count > on.prompt_eval_count  # the empty <think></think> block in the prompt
    parts = list(client.chat(model=THINKER, messages=ASK, options=OPTIONS, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == on.message.thinking
    generated = client.generate(model=THINKER, prompt="Why?", options=OPTIONS)
    assert generated.thinking and generated.response == ""


def test_reasoning_on_v1(ollama_server):
    with ollama_server.client(max_retries=0, timeout=120) as openai_client:
        kwargs = {"model": THINKER, "messages": ASK, "max_tokens": 12, "seed": 7}
        on = openai_client.chat.completions.create(**kwargs)
        assert on.choices[0].message.reasoning_content and on.choices[0].message.content == ""
        chunks = list(openai_client.chat.completions.create(**kwargs, stream=True))
        streamed = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
        assert streamed == on.choices[0].message.reasoning_content
        off = openai_client.chat.completions.create(**kwargs, reasoning_effort="none")
        assert getattr(off.choices[0].message, "reasoning_content", None) is None and off.choices[0].message.content
        vllm = openai_client.chat.completions.create(
            **kwargs, extra_body={"chat_template_kwargs": {"enable_thinking": False}}
        )
        assert vllm.choices[0].message.content == off.choices[0].message.content


def test_format_applies_to_the_answer_after_thinking(client, ollama_server):
    """The tiny model never closes its reasoning: the grammar closes it (at num_predict characters)."""
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["n"],
    }
    options = {"num_predict": 200, "seed": 3}
    on = client.chat(model=THINKER, messages=ASK, format=schema, think=True, options=options)
    assert on.done_reason == "stop" and on.message.thinking and 0 <= json.loads(on.message.content)["n"] <= 99
    parts = list(client.chat(model=THINKER, messages=ASK, format=schema, think=True, options=options, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == on.message.thinking
    assert "".join(p.message.content for p in parts) == on.message.content
    off = client.chat(model=THINKER, messages=ASK, format="json", think=False, options=options)
    assert off.message.thinking is None and isinstance(json.loads(off.message.content), dict)
    with ollama_server.client(max_retries=0, timeout=120) as openai_client:
        kwargs = {"model": THINKER, "messages": ASK, "max_tokens": 200, "seed": 3}
        fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
        v1 = openai_client.chat.completions.create(**kwargs, response_format=fmt).choices[0].message
        assert v1.reasoning_content and 0 <= json.loads(v1.content)["n"] <= 99
        tool = {"type": "function", "function": {"name": "pick", "parameters": schema}}
        called = openai_client.chat.completions.create(
            **kwargs, tools=[tool], tool_choice="required", parallel_tool_calls=False
        )
        [call] = called.choices[0].message.tool_calls
        assert called.choices[0].message.reasoning_content and "n" in json.loads(call.function.arguments)


# ---- LangChain -----------------------------------------------------------------------------------------
def test_langchain_chat_stream_tools_and_embeddings(ollama_server):
    from langchain_ollama import ChatOllama, OllamaEmbeddings

    llm = ChatOllama(model=CHAT_MODEL, base_url=ollama_server.base_url, num_predict=12, seed=7, temperature=0)
    embeddings = OllamaEmbeddings(model=EMBEDDER, base_url=ollama_server.base_url)
    try:
        _langchain_calls(llm, embeddings)
    finally:  # their ollama.Client's httpx clients (LangChain leaves them to the garbage collector)
        for owner in (llm, embeddings):
            for name in ("_client", "_async_client"):
                inner = getattr(getattr(owner, name, None), "_client", None)
                if isinstance(inner, httpx.Client):
                    inner.close()


def _langchain_calls(llm, embeddings) -> None:
    from langchain_core.tools import tool

    reply = llm.invoke("Why is the sky blue?")
    assert reply.usage_metadata["output_tokens"] == 12
    assert "".join(chunk.content for chunk in llm.stream("Why is the sky blue?")) == reply.content

    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply a and b."""
        return a * b

    answer = llm.bind_tools([multiply]).invoke("What is 3 times 4?")
    assert answer.response_metadata["done_reason"] in ("stop", "length")
    assert len(embeddings.embed_query("The sky is blue.")) == 384
    assert len(embeddings.embed_documents(["a", "b"])) == 2


# ---- the ollama JavaScript library under Node.js ------------------------------------------------------
def test_the_javascript_library(node_clients, ollama_server):
    node, folder = node_clients
    ran = subprocess.run(
        [node, "ollama_examples.mjs", ollama_server.base_url, CHAT_MODEL, EMBEDDER],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    results = json.loads(ran.stdout)
    chat = results["chat"]
    assert chat["done"] and chat["eval_count"] == 12 and chat["message"]["role"] == "assistant"
    parts = results["chat_stream"]
    assert parts[-1]["done"] and "".join(p["message"]["content"] for p in parts) == chat["message"]["content"]
    assert results["generate"]["done"] and results["generate"]["eval_count"] == 12
    assert len(results["embed"]["embeddings"]) == 2 and len(results["embed"]["embeddings"][0]) == 384
    assert CHAT_MODEL in {m["model"] for m in results["list"]["models"]}
    assert "completion" in results["show"]["capabilities"]
    assert any(CHAT_MODEL in m["names"] for m in results["ps"]["models"])
    assert results["error"]["status"] == 404 and "no-such-model" in results["error"]["message"]
