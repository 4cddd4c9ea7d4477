"""Embeddings without a model: pooling, `dimensions`, base64, the request model, tokenizing rules,
the micro-batcher's scheduling, and the route through `app.test_app()` with a fake embedder."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading

import numpy as np
import pytest

from ortserve.core.encoder import BadTokenError, EncoderTokenizer, TooLongError, length_batches, make_feeds, pool
from ortserve.core.store import ModelStore
from ortserve.server.app import create_app
from ortserve.server.engine.batcher import MicroBatcher
from ortserve.server.engine.embedder import Embeddings
from ortserve.server.errors import BackendError, ContextLengthError, InvalidRequestError
from ortserve.server.protocol import EmbeddingRequest, parse_request
from ortserve.server.protocol.embeddings import EmbeddingResponse
from ortserve.server.serving.embeddings import encode_vectors, response_body, response_pieces, shorten
from ortserve.server.settings import ServerSettings
from tests.unit.fake_app import add_model, assert_error


# ---- pooling ---------------------------------------------------------------------------
def test_pool_modes_on_a_padded_batch():
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)  # [batch, seq, dim]
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    np.testing.assert_allclose(pool(hidden, mask, "mean", False), [[2, 3], [7, 8]])  # padding left out
    np.testing.assert_allclose(pool(hidden, mask, "cls", False), [[0, 1], [6, 7]])
    np.testing.assert_allclose(pool(hidden, mask, "lasttoken", False), [[4, 5], [8, 9]])  # last *attended*
    left = np.array([[1, 1, 1], [0, 1, 1]])  # left padding: first attended token is 1
    np.testing.assert_allclose(pool(hidden, left, "cls", False), [[0, 1], [8, 9]])
    normed = pool(hidden, mask, "mean", True)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown pooling mode 'max'"):
        pool(hidden, mask, "max", False)


def test_feeds_are_right_padded_with_the_pad_id():
    feeds = make_feeds([np.array([5, 6, 7]), np.array([8])], ["input_ids", "attention_mask"], pad_id=3)
    assert set(feeds) == {"input_ids", "attention_mask"}
    assert feeds["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]] and feeds["input_ids"].dtype == np.int64
    assert feeds["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_length_batches_sort_and_respect_both_limits():
    lengths = [3, 10, 1, 10, 5, 2]
    batches = length_batches(lengths, max_rows=2, max_tokens=100)
    assert batches == [[1, 3], [4, 0], [5, 2]]  # longest first, ties in input order
    assert length_batches(lengths, max_rows=10, max_tokens=20) == [[1, 3], [4, 0, 5, 2]]  # 2 x 10, then 4 x 5
    assert length_batches([50], max_rows=4, max_tokens=10) == [[0]]  # one row always runs


# ---- dimensions and base64 -------------------------------------------------------------
def test_shorten_truncates_and_renormalizes_unit_vectors():
    rng = np.random.default_rng(0)
    full = rng.standard_normal((3, 16)).astype(np.float32)
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    short = shorten(full, 4, renormalize=True)
    assert short.shape == (3, 4) and short.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(short, full[:, :4] / np.linalg.norm(full[:, :4], axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(shorten(full * 3, 4, renormalize=False), full[:, :4] * 3)  # unnormalized model
    assert shorten(full, None, renormalize=True) is full and shorten(full, 16, renormalize=True) is full


def test_base64_is_little_endian_float32_and_float_is_exact():
    vectors = np.array([[0.5, -1.25, 3.0e-8], [1 / 3, 2.0, -0.0]], dtype=np.float32)
    encoded = encode_vectors(vectors, "base64")
    assert all(isinstance(e, str) for e in encoded)
    for row, text in zip(vectors, encoded, strict=True):
        raw = base64.b64decode(text)
        assert list(struct.unpack("<3f", raw)) == row.tolist()
        np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), row)  # how the openai client decodes
    floats = json.loads(json.dumps(encode_vectors(vectors, "float")))
    np.testing.assert_array_equal(np.array(floats, dtype=np.float32), vectors)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
async def test_a_large_response_in_pieces_is_the_same_json(encoding_format):
    vectors = np.random.default_rng(1).standard_normal((10, 3)).astype(np.float32)
    whole = response_body(vectors, encoding_format, "mödel", 42)
    assert EmbeddingResponse.model_validate(whole).model_dump() == whole  # OpenAI's shape, field order included
    pieces = [p async for p in response_pieces(vectors, encoding_format, "mödel", 42, rows=4)]
    assert len(pieces) == 5  # head, 3 pieces of at most 4 vectors, tail
    assert json.loads(b"".join(pieces)) == json.loads(json.dumps(whole))


# ---- the request model -----------------------------------------------------------------
def embedding_request(**fields) -> EmbeddingRequest:
    return parse_request(EmbeddingRequest, json.dumps({"model": "m", **fields}))


@pytest.mark.parametrize(
    ("value", "inputs"),
    [
        ("hello", ["hello"]),
        (["a", "b c"], ["a", "b c"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_the_four_input_shapes(value, inputs):
    request = embedding_request(input=value, user="u-1")
    assert request.inputs() == inputs
    assert (request.format, request.dimensions, request.truncate) == ("float", None, False)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": [[1], []]}, "input"),
        ({"input": ["a", 1]}, "input"),
        ({"input": [True, False]}, "input"),
        ({"input": [[1.5]]}, "input"),
        ({"input": {"text": "x"}}, "input"),
        ({"input": ["x"] * 2049}, "input"),
        ({}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": "8"}, "dimensions"),
        ({"input": "x", "model": ""}, "model"),
    ],
)
def test_bad_requests_name_their_param(fields, param):
    with pytest.raises(InvalidRequestError) as e:
        embedding_request(**fields)
    assert e.value.param == param and e.value.status == 400


# ---- tokenizing rules (a tiny in-memory tokenizer) ---------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "hello", "world", "query:", "a", "b"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    tok.enable_truncation(5)  # as the conversion writes it: the tokenizer itself would cut silently
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def test_texts_and_their_ids_give_the_same_sequence(tokenizer):
    encoder = EncoderTokenizer.create(tokenizer)
    assert (encoder.max_length, encoder.prefix, encoder.suffix, encoder.pad_id) == (5, (1,), (2,), 0)
    assert tokenizer.truncation is not None  # the caller's tokenizer is left as it was
    (text,) = encoder.encode_texts(["hello world"])
    (ids,) = encoder.encode_ids([[4, 5]])
    assert text.tolist() == ids.tolist() == [1, 4, 5, 2]


def test_over_long_inputs_are_refused_unless_truncated(tokenizer):
    encoder = EncoderTokenizer.create(tokenizer)
    assert encoder.encode_texts(["a b a"])[0].tolist() == [1, 7, 8, 7, 2]  # exactly the limit
    with pytest.raises(TooLongError) as e:
        encoder.encode_texts(["a", "a b a b"])
    assert (e.value.index, e.value.tokens, e.value.limit) == (1, 6, 5)
    assert encoder.encode_texts(["a b a b"], truncate=True)[0].tolist() == [1, 7, 8, 7, 2]
    with pytest.raises(TooLongError):
        encoder.encode_ids([[7, 8, 7, 8]])
    assert encoder.encode_ids([[7, 8, 7, 8]], truncate=True)[0].tolist() == [1, 7, 8, 7, 2]


def test_token_ids_outside_the_vocabulary(tokenizer):
    encoder = EncoderTokenizer.create(tokenizer)
    for bad in (9, -1):
        with pytest.raises(BadTokenError) as e:
            encoder.encode_ids([[4], [4, bad]])
        assert (e.value.index, e.value.token, e.value.vocab_size) == (1, bad, 9)


def test_prompt_and_lowercase_apply_to_texts_and_ids(tokenizer):
    encoder = EncoderTokenizer.create(tokenizer, max_length=6, prompt="query: ", lowercase=True)
    assert encoder.encode_texts(["HELLO World"])[0].tolist() == [1, 6, 4, 5, 2]
    assert encoder.encode_ids([[4, 5]])[0].tolist() == [1, 6, 4, 5, 2]


# ---- the micro-batcher's scheduling (a fake `run`; the real session: tests/integration) -----
class GatedRun:
    """A `run` that records its batches and holds the first one until `release()`."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        self.fail_on: int | None = None

    def __call__(self, sequences: list[np.ndarray]) -> np.ndarray:
        self.batches.append([int(s[0]) for s in sequences])
        self.started.set()
        self.gate.wait(30)
        if self.fail_on is not None and self.fail_on in self.batches[-1]:
            raise RuntimeError("onnxruntime fell over")
        return np.array([[float(s[0]), float(len(s))] for s in sequences], dtype=np.float32)


def seqs(*pairs: tuple[int, int]) -> list[np.ndarray]:
    """Sequences tagged by their first id, of the given lengths."""
    return [np.full(length, tag, dtype=np.int64) for tag, length in pairs]


async def until(predicate) -> None:
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never met")


async def test_requests_queued_during_a_batch_run_together_sorted_by_length():
    run = GatedRun()
    batcher = MicroBatcher(run, max_batch=8, window_s=0)
    first = asyncio.ensure_future(batcher.submit(seqs((1, 3))))
    await until(run.started.is_set)
    later = [asyncio.ensure_future(batcher.submit(seqs(*s))) for s in ([(2, 1), (3, 5)], [(4, 2)], [(5, 9)])]
    await until(lambda: batcher.pending_rows == 4)
    run.gate.set()
    results = await asyncio.gather(first, *later)
    assert run.batches == [[1], [5, 3, 4, 2]]  # one batch for the three queued requests, longest first
    assert (batcher.runs, batcher.rows) == (2, 5)
    assert [r.tolist() for r in results] == [[[1, 3]], [[2, 1], [3, 5]], [[4, 2]], [[5, 9]]]  # scattered back
    await batcher.close()


async def test_the_burst_window_is_skipped_after_a_lone_request():
    run = GatedRun()
    run.gate.set()
    batcher = MicroBatcher(run, max_batch=8, window_s=0.001)
    await batcher.submit(seqs((1, 1)))  # after start-up: wait for a possible burst
    assert batcher.windows == 1
    await batcher.submit(seqs((2, 1)))  # the last round served one request alone: no wait
    await batcher.submit(seqs((3, 1)))
    assert batcher.windows == 1
    await asyncio.gather(*(batcher.submit(seqs((t, 1))) for t in (4, 5)))  # no wait, but company seen
    assert run.batches[-1] == [4, 5] and batcher.windows == 1
    await batcher.submit(seqs((6, 1)))  # so the next idle wake-up waits again
    assert batcher.windows == 2
    await batcher.close()


async def test_max_batch_splits_and_a_cancelled_request_is_skipped():
    run = GatedRun()
    batcher = MicroBatcher(run, max_batch=2, window_s=0)
    first = asyncio.ensure_future(batcher.submit(seqs((1, 1))))
    await until(run.started.is_set)
    gone = asyncio.ensure_future(batcher.submit(seqs((2, 1), (3, 1))))
    kept = asyncio.ensure_future(batcher.submit(seqs((4, 1), (5, 1), (6, 1))))
    await until(lambda: batcher.pending_rows == 5)
    gone.cancel()
    run.gate.set()
    await first
    assert (await kept)[:, 0].tolist() == [4, 5, 6]
    assert run.batches == [[1], [4, 5], [6]]
    await batcher.close()


async def test_a_failed_batch_fails_only_its_requests():
    run = GatedRun()
    run.fail_on = 2
    run.gate.set()
    batcher = MicroBatcher(run, max_batch=1, window_s=0)
    bad, good = await asyncio.gather(batcher.submit(seqs((2, 1))), batcher.submit(seqs((3, 1))), return_exceptions=True)
    assert isinstance(bad, BackendError) and "onnxruntime fell over" in bad.message
    assert good.tolist() == [[3, 1]]
    assert (await batcher.submit(seqs((4, 1)))).tolist() == [[4, 1]]  # the worker lives on
    await batcher.close()


async def test_close_answers_queued_requests_and_refuses_new_ones():
    run = GatedRun()
    batcher = MicroBatcher(run, max_batch=1, window_s=0)
    running = asyncio.ensure_future(batcher.submit(seqs((1, 1))))
    await until(run.started.is_set)
    queued = asyncio.ensure_future(batcher.submit(seqs((2, 1))))
    await until(lambda: batcher.pending_rows == 1)
    closing = asyncio.ensure_future(batcher.close())
    await until(lambda: queued.done())
    run.gate.set()
    await closing
    for future in (running, queued):
        with pytest.raises(BackendError, match="unloaded"):
            await future
    with pytest.raises(BackendError, match="being unloaded"):
        await batcher.submit(seqs((3, 1)))


# ---- the route, with a fake embedder -------------------------------------------------------
class FakeEmbedder:
    """Vectors [len(words), 1, 1, ...] normalized; at most 4 words per input."""

    dimensions, max_input_tokens, normalized, device = 8, 4, True, "cpu"

    def __init__(self):
        self.calls: list[tuple[list, bool]] = []
        self.closed = False

    async def embed(self, inputs, *, truncate=False) -> Embeddings:
        self.calls.append((list(inputs), truncate))
        counts = [len(x.split()) if isinstance(x, str) else len(x) for x in inputs]
        if not truncate and max(counts) > self.max_input_tokens:
            raise ContextLengthError("too long", param="input")
        counts = [min(c, self.max_input_tokens) for c in counts]
        vectors = np.ones((len(inputs), self.dimensions), dtype=np.float32)
        vectors[:, 0] = counts
        return Embeddings(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), tuple(counts))

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
async def app_client(tmp_path):
    settings = ServerSettings(models_dir=tmp_path / "models", configs_dir=tmp_path / "configs")
    store = ModelStore(settings.models_dir)
    add_model(store, "embedder", task="embedding", aliases=["text-embedding-3-small"])
    add_model(store, "chatty")
    embedders: list[FakeEmbedder] = []

    async def load(entry, *, num_ctx=None, device="cpu"):
        embedders.append(FakeEmbedder())
        return embedders[-1]

    app = create_app(settings, store, loaders={"embedding": load})
    async with app.test_app() as test_app:
        yield test_app.test_client(), embedders
    assert len(embedders) == 1 and embedders[0].closed


async def test_embedding_response_shape(app_client):
    client, embedders = app_client
    response = await client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": ["a b", "c"]})
    body = await response.get_json()
    assert response.status_code == 200 and body["object"] == "list" and body["model"] == "text-embedding-3-small"
    assert [(d["object"], d["index"], len(d["embedding"])) for d in body["data"]] == [
        ("embedding", 0, 8),
        ("embedding", 1, 8),
    ]
    assert body["data"][0]["embedding"][0] == pytest.approx(2 / np.sqrt(11))
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert embedders[0].calls == [(["a b", "c"], False)]


async def test_dimensions_base64_and_truncate(app_client):
    client, embedders = app_client
    request = {
        "model": "embedder",
        "input": [[1, 2, 3, 4, 5]],
        "dimensions": 2,
        "encoding_format": "base64",
        "truncate": True,
    }
    body = await (await client.post("/v1/embeddings", json=request)).get_json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, np.array([4, 1]) / np.sqrt(17), rtol=1e-6)
    assert body["usage"]["prompt_tokens"] == 4 and embedders[0].calls[-1] == ([[1, 2, 3, 4, 5]], True)


@pytest.mark.parametrize(
    ("request_fields", "status", "param", "code"),
    [
        ({"input": "a b c d e"}, 400, "input", "context_length_exceeded"),
        ({"input": "a", "dimensions": 9}, 400, "dimensions", None),
        ({"input": "a", "model": "chatty"}, 400, "model", None),
        ({"input": "a", "model": "nope"}, 404, "model", "model_not_found"),
        ({"input": []}, 400, "input", None),
    ],
)
async def test_errors_then_the_next_request_works(app_client, request_fields, status, param, code):
    client, _ = app_client
    response = await client.post("/v1/embeddings", json={"model": "embedder", **request_fields})
    assert response.status_code == status
    assert_error(await response.get_json(), type="invalid_request_error", param=param, code=code)
    assert (await client.post("/v1/embeddings", json={"model": "embedder", "input": "ok"})).status_code == 200
