"""/v1/embeddings on a real `ortserve serve`, driven by the official openai client (and httpx for raw
bodies): the served all-MiniLM-L6-v2 against sentence-transformers' `encode`, base64 against float,
`dimensions`, token arrays, usage, and every bad input as a 400 naming its param."""

from __future__ import annotations

import asyncio
import base64
import shutil

import httpx
import numpy as np
import openai
import pytest

from tests.e2e.conftest import start_server, stop_server_cleanly

pytestmark = pytest.mark.slow

ALIAS = "text-embedding-3-small"  # given to all-minilm: apps written for OpenAI keep their model name
LONG = " ".join(["Retrieval systems split documents into chunks before embedding them."] * 30)  # > 256 tokens

# 52 texts: short, medium, long (up to the 256-token limit), code, numbers, and many scripts.
SENTENCES = [
    "ok",
    "Hi!",
    "why?",
    "3.14159",
    "New York",
    "I love it.",
    "See you soon.",
    "Where is the station?",
    "The cat is sleeping on the sofa.",
    "Please close the door when you leave.",
    "Our flight was delayed by two hours because of the storm.",
    "The committee will publish its final report early next year.",
    "Vaccines train the immune system to recognise a specific pathogen.",
    "A binary search halves the remaining interval at every step.",
    "The museum's new wing displays sculptures from the Bronze Age.",
    "Interest rates and inflation are closely watched by central banks.",
    "Sort the list, then remove the duplicates, then print the result.",
    "git rebase -i HEAD~3 lets you squash the last three commits.",
    "def mean(xs):\n    return sum(xs) / len(xs)",
    'curl -X POST http://localhost:8000/v1/embeddings -d \'{"input": "hi"}\'',
    "Total: 1,234.56 EUR (VAT 20%) due on 2025-03-31.",
    "Le petit chat dort sur le canapé du salon.",
    "Wir treffen uns morgen um acht Uhr am Bahnhof.",
    "El perro corre feliz por el parque cada mañana.",
    "A reunião foi adiada para a próxima semana.",
    "La pasta è pronta, venite a tavola!",
    "Ik heb vandaag een nieuwe fiets gekocht.",
    "Jutro będzie padać śnieg w górach.",
    "Сегодня хорошая погода для прогулки.",
    "Η θάλασσα είναι ήρεμη σήμερα το πρωί.",
    "Yarın sabah erkenden yola çıkacağız.",
    "הספר מונח על השולחן במטבח.",
    "القهوة جاهزة في المطبخ.",
    "मुझे चाय बहुत पसंद है।",
    "ฉันชอบกินข้าวผัด",
    "今日はとても暑いですね。",
    "我们明天去图书馆学习。",
    "오늘 저녁에 영화를 볼까요?",
    "Tôi thích đọc sách vào buổi tối.",
    "Ñandú, pingüino, über, façade, smörgåsbord",
    "🚀 launch day! 🎉🎉",
    "∫ f(x) dx = F(b) − F(a)",
    "    indented text with    irregular   spacing   ",
    "MIXED case And Punctuation!!! ???",
    " ".join(["The quick brown fox jumps over the lazy dog."] * 10),
    " ".join(["Embedding servers batch requests to keep the CPU busy."] * 15),
    " ".join(["Les modèles d'embedding transforment le texte en vecteurs."] * 12),
    " ".join(["Модели эмбеддингов превращают текст в векторы."] * 6),
    " ".join(["向量检索系统使用嵌入模型。"] * 12),
    "token " * 120,
    "".join(["abc"] * 30),
    "The end.",
]
assert len(SENTENCES) == 52


@pytest.fixture(scope="module")
def embedding_server(store_home, tmp_path_factory):
    """A server of its own, on a copy of the store with the embedding models (all-minilm has an alias)."""
    from ortserve.core.store import ModelStore

    home = tmp_path_factory.mktemp("e2e-embeddings") / "home"
    shutil.copytree(store_home, home)
    store = ModelStore(home / "models")
    store.write_config("all-minilm", store.get("all-minilm").config.model_copy(update={"aliases": [ALIAS]}))
    log = tmp_path_factory.mktemp("e2e-embeddings-logs") / "server.log"
    server = start_server(home, log)
    yield server
    stop_server_cleanly(server)


@pytest.fixture(scope="module")
def client(embedding_server) -> openai.OpenAI:
    with embedding_server.client(max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def http(embedding_server) -> httpx.Client:
    with httpx.Client(base_url=embedding_server.base_url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def reference(minilm_dir) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu").encode([*SENTENCES, LONG])


@pytest.fixture(scope="module")
def tokenizer(store_home):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(store_home / "models" / "all-minilm" / "tokenizer.json"))
    tok.no_truncation()
    return tok


def vectors(response) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize(("model", "bar"), [("all-minilm", 0.999), (ALIAS, 0.999), ("all-minilm-int8", 0.99)])
def test_served_vectors_match_sentence_transformers(client, reference, tokenizer, model, bar):
    response = client.embeddings.create(model=model, input=SENTENCES)  # the client asks for base64 and decodes
    ours = vectors(response)
    assert response.model == model and response.object == "list" and ours.shape == (52, 384)
    cos = cosines(ours, reference[:-1])
    assert cos.min() >= bar, SENTENCES[int(cos.argmin())]
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, rtol=1e-5)
    tokens = sum(len(tokenizer.encode(s).ids) for s in SENTENCES)  # special tokens included
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (tokens, tokens)


def test_base64_decodes_to_the_float_vectors(client):
    floats = vectors(client.embeddings.create(model="all-minilm", input=SENTENCES[:8], encoding_format="float"))
    raw = client.embeddings.create(model="all-minilm", input=SENTENCES[:8], encoding_format="base64")
    assert all(isinstance(d.embedding, str) for d in raw.data)
    decoded = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data])
    np.testing.assert_array_equal(decoded, floats)


def test_dimensions_truncate_and_renormalize(client):
    full = vectors(client.embeddings.create(model="all-minilm", input=SENTENCES[:5]))
    short = vectors(client.embeddings.create(model="all-minilm", input=SENTENCES[:5], dimensions=64))
    assert short.shape == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(short, full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True), atol=1e-6)


def test_token_arrays_give_the_vectors_of_their_texts(client, tokenizer):
    texts = SENTENCES[20:30]
    ids = [tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    by_text = client.embeddings.create(model="all-minilm", input=texts)
    by_ids = client.embeddings.create(model="all-minilm", input=ids)
    np.testing.assert_allclose(vectors(by_ids), vectors(by_text), atol=1e-5)
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens
    single = client.embeddings.create(model="all-minilm", input=ids[0])  # one flat array of ids: one vector
    np.testing.assert_allclose(vectors(single)[0], vectors(by_text)[0], atol=1e-5)


def test_single_string_user_and_opt_in_truncation(client, reference):
    one = client.embeddings.create(model="all-minilm", input="Where is the station?", user="user-42")
    assert len(one.data) == 1 and one.usage.prompt_tokens == 7
    cut = client.embeddings.create(model="all-minilm", input=LONG, extra_body={"truncate": True})
    assert cut.usage.prompt_tokens == 256
    assert cosines(vectors(cut), reference[-1:])[0] >= 0.999  # sentence-transformers truncates at 256 too


def test_a_large_response_arrives_whole(client, http):
    """800 x 384 floats are sent in pieces (ortserve.server.serving.embeddings.STREAM_VALUES); the JSON is the same."""
    few = vectors(client.embeddings.create(model="all-minilm", input=SENTENCES[:8], encoding_format="float"))
    response = http.post("/v1/embeddings", json={"model": "all-minilm", "input": SENTENCES[:8] * 100})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert [d["index"] for d in body["data"]] == list(range(800))
    np.testing.assert_allclose(np.array([d["embedding"] for d in body["data"]]), np.tile(few, (100, 1)), atol=1e-5)
    assert (
        body["usage"]["prompt_tokens"]
        == 100 * client.embeddings.create(model="all-minilm", input=SENTENCES[:8]).usage.prompt_tokens
    )


async def test_concurrent_clients_get_their_own_vectors(embedding_server, reference):
    async with embedding_server.async_client(max_retries=0, timeout=120) as client:
        responses = await asyncio.gather(
            *(client.embeddings.create(model="all-minilm", input=[s]) for s in SENTENCES[:24])
        )
    ours = np.concatenate([vectors(r) for r in responses])
    assert cosines(ours, reference[:24]).min() >= 0.999


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": []}, "input", None),
        ({"input": ""}, "input", None),
        ({"input": ["fine", ""]}, "input", None),
        ({"input": [[]]}, "input", None),
        ({"input": [[101, 30522]]}, "input", None),
        ({"input": [[-1, 5]]}, "input", None),
        ({"input": ["text", [7592]]}, "input", None),
        ({"input": ["x"] * 2049}, "input", None),
        ({"input": LONG}, "input", "context_length_exceeded"),
        ({}, "input", None),
        ({"input": "x", "encoding_format": "float16"}, "encoding_format", None),
        ({"input": "x", "dimensions": 0}, "dimensions", None),
        ({"input": "x", "dimensions": 385}, "dimensions", None),
        ({"input": "x", "model": "tiny-llama"}, "model", None),
    ],
)
def test_bad_input_is_a_400_naming_the_param_and_the_server_goes_on(http, body, param, code):
    response = http.post("/v1/embeddings", json={"model": "all-minilm", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    if code == "context_length_exceeded":
        assert "256" in error["message"]
    ok = http.post("/v1/embeddings", json={"model": "all-minilm", "input": "next"})
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 384


def test_openai_client_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="all-minilm", input="x", dimensions=1000)
    assert e.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="all-minilm", input=LONG)
    assert (e.value.param, e.value.code) == ("input", "context_length_exceeded")
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="no-such-embedder", input="x")
    assert (e.value.param, e.value.code) == ("model", "model_not_found")


def batch_sizes(http, model: str) -> dict[str, float]:
    """The embedding batch-size histogram's samples of `model` (its weights folder) from GET /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        if family.name == "ortserve_embedding_batch_size":
            for sample in family.samples:
                if sample.labels["model"] == model:
                    found[sample.name.rsplit("_", 1)[1] + sample.labels.get("le", "")] = sample.value
    return found


def test_the_batch_size_histogram_counts_every_row_of_a_request(client, http):
    client.embeddings.create(model="all-minilm", input="load it")
    before = batch_sizes(http, "all-minilm")
    client.embeddings.create(model="all-minilm", input=SENTENCES)
    after = batch_sizes(http, "all-minilm")
    assert after["sum"] - before["sum"] == len(SENTENCES)  # every row ran in exactly one batch
    runs = after["count"] - before["count"]
    assert 2 <= runs <= len(SENTENCES) and after["bucket+Inf"] == after["count"]
    assert after["bucket1"] <= after["bucket32"] <= after["count"]  # cumulative buckets
