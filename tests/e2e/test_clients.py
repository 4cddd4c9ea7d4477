"""The OpenAI-compatibility examples of Ollama's docs, run as written against a real server: the Python
`openai` client, the JavaScript `openai` client under Node.js, and curl. Only the address differs; the
store has the names the examples use (`llama3.2`, a copy of the tiny chat model, and `all-minilm`).
Streaming goes through each client: Python `stream=True`, JavaScript `stream: true` with `for await`,
curl `-N` reading the SSE events.

Node.js: `node` (18 or later) and `npm` must be on PATH (they are on our machines; README, Tests). The
client (tests/e2e/clients/package.json) is installed from the npm registry once into pytest's cache
folder (.pytest_cache), keyed by that file's hash, and reused by later runs.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess

import numpy as np
import openai
import pytest

from ortserve.core.store import ModelStore
from tests.e2e.conftest import ROOT, start_server, stop_server_cleanly, vision_messages

pytestmark = pytest.mark.slow

CLIENTS = ROOT / "tests" / "e2e" / "clients"
MODEL = "llama3.2"
VISION = "llava"  # a copy of the tiny vision-language fixture (tiny-vlm), under the name Ollama's example uses
EMBEDDER = "all-minilm"
SKY = ["why is the sky blue?", "why is the grass green?"]


@pytest.fixture(scope="module")
def seed_server(store_home, vision_store_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e-clients") / "home"
    shutil.copytree(store_home, home)
    shutil.copytree(vision_store_home, home, dirs_exist_ok=True)
    store = ModelStore(home / "models")
    store.copy("tiny-llama", MODEL)
    store.copy("tiny-vlm", VISION)
    store.write_config(MODEL, store.get(MODEL).config.model_copy(update={"num_ctx": 256}))  # short answers
    server = start_server(home, home.parent / "server.log")
    yield server
    stop_server_cleanly(server)


@pytest.fixture(scope="module")
def client(seed_server):
    # as in Ollama's docs: client = OpenAI(base_url='http://localhost:11434/v1/', api_key='ollama')
    with openai.OpenAI(base_url=f"{seed_server.base_url}/v1/", api_key="ollama") as client:
        yield client


def check_chat(body: dict, model: str = MODEL) -> None:
    assert body["object"] == "chat.completion" and body["model"] == model
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def check_completion(body: dict) -> None:
    assert body["object"] == "text_completion" and body["model"] == MODEL
    [choice] = body["choices"]
    assert isinstance(choice["text"], str) and choice["finish_reason"] in ("stop", "length")
    assert 0 < body["usage"]["completion_tokens"] <= 16  # OpenAI's default max_tokens for completions


def check_embeddings(body: dict) -> np.ndarray:
    assert body["object"] == "list" and body["model"] == EMBEDDER
    assert [d["index"] for d in body["data"]] == [0, 1]
    vectors = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    return vectors


def streamed_text(chunks: list[dict], field: str) -> tuple[str, str | None]:
    """The text of a stream's chunks and its finish_reason (chat: field "delta"; completions: "text")."""
    text, finish = [], None
    for chunk in chunks:
        for choice in chunk["choices"]:
            text.append((choice["delta"].get("content") or "") if field == "delta" else choice["text"])
            finish = choice.get("finish_reason") or finish
    return "".join(text), finish


# ---- Python ------------------------------------------------------------------
def test_python_chat(client):
    chat_completion = client.chat.completions.create(
        messages=[
            {
                "role": "user",
                "content": "Say this is a test",
            }
        ],
        model="llama3.2",
    )
    check_chat(chat_completion.model_dump())


def test_python_chat_stream(client):
    request = dict(
        model=MODEL, messages=[{"role": "user", "content": "Say this is a test"}], temperature=0, max_tokens=12
    )
    whole = client.chat.completions.create(**request)
    stream = client.chat.completions.create(**request, stream=True)
    text, finish = streamed_text([chunk.model_dump() for chunk in stream], "delta")
    assert (text, finish) == (whole.choices[0].message.content, whole.choices[0].finish_reason)


def test_python_completions(client):
    completion = client.completions.create(
        model="llama3.2",
        prompt="Say this is a test",
    )
    check_completion(completion.model_dump())
    greedy = client.completions.create(model=MODEL, prompt="Say this is a test", temperature=0)
    stream = client.completions.create(model=MODEL, prompt="Say this is a test", temperature=0, stream=True)
    text, finish = streamed_text([chunk.model_dump() for chunk in stream], "text")
    assert (text, finish) == (greedy.choices[0].text, greedy.choices[0].finish_reason)


def test_python_models(client):
    list_completion = client.models.list()
    model = client.models.retrieve("llama3.2")
    assert {MODEL, EMBEDDER} <= {m.id for m in list_completion.data}
    assert model.id == MODEL and model.object == "model" and model.owned_by == "library"


def test_python_embeddings(client):
    embeddings = client.embeddings.create(
        model="all-minilm",
        input=["why is the sky blue?", "why is the grass green?"],
    )
    check_embeddings(embeddings.model_dump())


# ---- vision ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_url() -> str:
    """A PNG as a data: URL, as in Ollama's image example (theirs is a photo; ours is a small gradient)."""
    from PIL import Image

    image = Image.linear_gradient("L").resize((56, 84)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def text_only_prompt_tokens(client) -> int:
    reply = client.chat.completions.create(
        model=VISION, max_tokens=1, messages=[{"role": "user", "content": "What's in this image?"}]
    )
    return reply.usage.prompt_tokens


def test_python_vision(client, image_url):
    response = client.chat.completions.create(model="llava", messages=vision_messages(image_url), max_tokens=300)
    check_chat(response.model_dump(), VISION)
    # the image's tokens are in the prompt: (56 / 14) * (84 / 14) patches, merged 2x2, plus its two markers
    assert response.usage.prompt_tokens == text_only_prompt_tokens(client) + 6 + 2


# ---- JavaScript (Node.js) ------------------------------------------------------
@pytest.fixture(scope="module")
def js_results(node_clients, seed_server, image_url) -> dict:
    node, folder = node_clients
    ran = subprocess.run(
        [node, "examples.mjs", f"{seed_server.base_url}/v1/", image_url],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def test_js_chat_completions_and_models(js_results):
    check_chat(js_results["chat"])
    check_completion(js_results["completion"])
    assert {MODEL, EMBEDDER} <= {m["id"] for m in js_results["models"]}
    assert js_results["model"]["id"] == MODEL and js_results["model"]["object"] == "model"


def test_js_streams_with_for_await(js_results):
    greedy = js_results["chat_greedy"]["choices"][0]
    assert streamed_text(js_results["chat_stream"], "delta") == (greedy["message"]["content"], greedy["finish_reason"])
    assert all(c["object"] == "chat.completion.chunk" for c in js_results["chat_stream"])
    text, finish = streamed_text(js_results["completion_stream"], "text")
    assert finish in ("stop", "length") and isinstance(text, str)


def test_js_vision_matches_python(js_results, client, image_url):
    check_chat(js_results["vision"], VISION)
    python = client.chat.completions.create(
        model=VISION, messages=vision_messages(image_url), temperature=0, max_tokens=8
    )
    assert js_results["vision_greedy"]["choices"][0]["message"]["content"] == python.choices[0].message.content


def test_js_responses_match_python_and_chat(js_results, client, image_url):
    js = js_results["responses"]
    assert js["object"] == "response" and js["id"].startswith("resp_") and js["model"] == MODEL
    python = client.responses.create(
        model=MODEL,
        instructions="You are a terse assistant.",
        input="Say this is a test",
        temperature=0,
        max_output_tokens=12,
    )
    assert js["output_text"] == python.output_text
    # the prompt cache serves the second one's prompt: only the cached count differs
    assert (js["usage"]["input_tokens"], js["usage"]["output_tokens"]) == (
        python.usage.input_tokens,
        python.usage.output_tokens,
    )
    # input_image parts reach the model as chat's image_url parts do: the same prompt, the same greedy reply
    chat = client.chat.completions.create(
        model=VISION, messages=vision_messages(image_url), temperature=0, max_tokens=8
    )
    vision = js_results["responses_vision"]
    assert vision["output_text"] == chat.choices[0].message.content
    assert vision["usage"]["input_tokens"] == chat.usage.prompt_tokens


def test_js_embeddings_match_python(js_results, client):
    # the JavaScript client asks for base64 and decodes it; the vectors are those the Python client gets
    js = check_embeddings(js_results["embedding"])
    py = check_embeddings(client.embeddings.create(model=EMBEDDER, input=SKY, encoding_format="float").model_dump())
    np.testing.assert_allclose(js, py, atol=1e-6)


# ---- curl ----------------------------------------------------------------------------------
def curl(*args: str) -> str:
    assert shutil.which("curl"), "curl is needed for the curl examples"
    ran = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail-with-body", *args], capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr + ran.stdout
    return ran.stdout


def test_curl_examples(seed_server):
    url = seed_server.base_url
    check_chat(
        json.loads(
            curl(
                f"{url}/v1/chat/completions",
                "-H",
                "Content-Type: application/json",
                "-d",
                '{"model": "llama3.2","messages": [{"role": "system","content": "You are a helpful assistant."},'
                '{"role": "user","content": "Hello!"}]}',
            )
        )
    )
    check_completion(
        json.loads(
            curl(
                f"{url}/v1/completions",
                "-H",
                "Content-Type: application/json",
                "-d",
                '{"model": "llama3.2","prompt": "Say this is a test"}',
            )
        )
    )
    assert MODEL in [m["id"] for m in json.loads(curl(f"{url}/v1/models"))["data"]]
    assert json.loads(curl(f"{url}/v1/models/llama3.2"))["id"] == MODEL
    check_embeddings(
        json.loads(
            curl(
                f"{url}/v1/embeddings",
                "-H",
                "Content-Type: application/json",
                "-d",
                '{"model": "all-minilm","input": ["why is the sky blue?", "why is the grass green?"]}',
            )
        )
    )


def test_curl_streams_sse(seed_server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "temperature": 0, "max_tokens": 12}
    raw = curl(
        "-N",
        f"{seed_server.base_url}/v1/chat/completions",
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps({**body, "stream": True}),
    )
    events = [line.removeprefix("data: ") for line in raw.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 2
    text, finish = streamed_text([json.loads(e) for e in events[:-1]], "delta")
    whole = json.loads(
        curl(
            f"{seed_server.base_url}/v1/chat/completions",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
        )
    )["choices"][0]
    assert (text, finish) == (whole["message"]["content"], whole["finish_reason"])


def test_curl_vision(seed_server, client, image_url):
    body = {"model": VISION, "messages": vision_messages(image_url), "temperature": 0, "max_tokens": 8}
    reply = json.loads(
        curl(
            f"{seed_server.base_url}/v1/chat/completions",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
        )
    )
    check_chat(reply, VISION)
    python = client.chat.completions.create(**body)
    assert reply["choices"][0]["message"]["content"] == python.choices[0].message.content
