"""`OrtEmbedder` with real onnxruntime sessions on the converted all-MiniLM-L6-v2 (fp32 and int8):
vectors against sentence-transformers, tokens against the converted tokenizer, the micro-batcher
with the real session, the event loop kept free, and serving without torch."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from ortserve.server.engine.ort_embedder import OrtEmbedder
from ortserve.server.errors import ContextLengthError, InvalidRequestError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    "hello world",
    "Is this the real life?",
    "Der Zug nach Berlin fährt um 9 Uhr ab.",
    "北京是中国的首都。",
    "Ceci n'est pas une pipe.",
    "SELECT * FROM users;",
    "🙂 emoji and words",
    "Москва — столица России.",
    " ".join(["A long paragraph about model serving, batching and padding."] * 18),  # 236 tokens
    "x",
]
LONG = " ".join(["Too long for the model, which stops at 256 tokens."] * 30)


@pytest.fixture(scope="module")
def minilm_st(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


def load(store, name: str, **options) -> OrtEmbedder:
    entry = store.get(name)
    return OrtEmbedder.from_folder(entry.folder, entry.manifest, name=name, **options)


@pytest.fixture(scope="module")
async def fp32(store):
    embedder = load(store, "all-minilm")
    yield embedder
    await embedder.close()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize(("name", "bar"), [("all-minilm", 0.999), ("all-minilm-int8", 0.99)])
async def test_vectors_match_sentence_transformers(store, minilm_st, name, bar):
    embedder = load(store, name)
    try:
        assert (embedder.dimensions, embedder.max_input_tokens, embedder.normalized) == (384, 256, True)
        result = await embedder.embed([*TEXTS, LONG], truncate=True)
    finally:
        await embedder.close()
    reference = minilm_st.encode([*TEXTS, LONG])  # sentence-transformers truncates at 256 too
    assert cosines(result.vectors, reference).min() >= bar
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1, rtol=1e-5)
    assert result.token_counts[-1] == 256


async def test_token_counts_are_the_converted_tokenizers(store, fp32):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(store.get("all-minilm").folder / "tokenizer.json"))
    result = await fp32.embed(TEXTS)
    assert list(result.token_counts) == [len(tokenizer.encode(t).ids) for t in TEXTS]
    for text, sequence in zip(TEXTS, fp32.encode(TEXTS), strict=True):
        assert sequence.tolist() == tokenizer.encode(text).ids  # [CLS] ... [SEP], as the tokenizer adds them


async def test_token_ids_give_the_vector_of_their_text(store, fp32):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(store.get("all-minilm").folder / "tokenizer.json"))
    ids = [tokenizer.encode(t, add_special_tokens=False).ids for t in TEXTS]
    by_text, by_ids = await asyncio.gather(fp32.embed(TEXTS), fp32.embed(ids))
    np.testing.assert_allclose(by_ids.vectors, by_text.vectors, atol=1e-5)
    assert by_ids.token_counts == by_text.token_counts


async def test_over_long_input_and_bad_token_ids_are_400s_naming_input(fp32):
    with pytest.raises(ContextLengthError) as e:
        await fp32.embed(["short", LONG])
    assert e.value.param == "input" and "256" in e.value.message and "input 1" in e.value.message
    for bad in ([[101, 30522]], [[-5]]):
        with pytest.raises(InvalidRequestError) as e:
            await fp32.embed(bad)
        assert e.value.param == "input" and "token id" in e.value.message
    with pytest.raises(InvalidRequestError):
        await fp32.embed(["text", [1, 2]])
    assert (await fp32.embed(["still serving"])).vectors.shape == (1, 384)


async def test_num_ctx_lowers_the_limit(store):
    embedder = load(store, "all-minilm", max_input_tokens=8)
    try:
        assert embedder.max_input_tokens == 8
        with pytest.raises(ContextLengthError, match="maximum input length is 8 tokens"):
            await embedder.embed(["one two three four five six seven"])
        assert (await embedder.embed(["one two three four five six seven"], truncate=True)).token_counts == (8,)
    finally:
        await embedder.close()


class GatedSession:
    """The real session, counting its runs; the first run waits for `gate`."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[tuple[int, int]] = []  # input_ids shapes
        self.started, self.gate = threading.Event(), threading.Event()

    def get_inputs(self):
        return self.inner.get_inputs()

    def run(self, names, feeds):
        self.batches.append(feeds["input_ids"].shape)
        self.started.set()
        self.gate.wait(60)
        return self.inner.run(names, feeds)


async def test_concurrent_requests_share_one_session_run(fp32):
    session = GatedSession(fp32.session)
    embedder = OrtEmbedder(session, fp32.tokenizer, name="gated", pooling="mean", normalize=True, dimensions=384)
    try:
        first = asyncio.ensure_future(embedder.embed(["the first request runs alone"]))
        while not session.started.is_set():
            await asyncio.sleep(0.001)
        others = [asyncio.ensure_future(embedder.embed([t])) for t in TEXTS[:6]]
        while embedder.batcher.pending_rows < 6:
            await asyncio.sleep(0.001)
        session.gate.set()
        results = await asyncio.gather(first, *others)
    finally:
        await embedder.close()
    alone_length = len(fp32.encode(["the first request runs alone"])[0])
    longest = max(len(s) for s in fp32.encode(TEXTS[:6]))
    assert session.batches == [
        (1, alone_length),
        (6, longest),
    ]  # the six queued requests: one run, padded to the longest
    alone = await fp32.embed(TEXTS[:6])
    np.testing.assert_allclose(np.concatenate([r.vectors for r in results[1:]]), alone.vectors, atol=1e-5)


async def test_the_event_loop_runs_while_the_model_does(fp32):
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    runs = fp32.batcher.runs
    await fp32.embed([f"{i} {TEXTS[8]}" for i in range(64)])  # two full batches of ~240 tokens
    done.set()
    await task
    assert fp32.batcher.runs - runs == 2
    assert ticks > 100  # a loop blocked by session.run would tick a handful of times


def test_serving_imports_neither_torch_nor_transformers(store):
    entry = store.get("all-minilm")
    code = textwrap.dedent(f"""
        import asyncio, sys
        from ortserve.server.app import create_app
        from ortserve.server.engine.ort_embedder import load_embedder
        from ortserve.core.store import ModelStore
        store = ModelStore({str(store.models_dir)!r})

        async def main():
            embedder = await load_embedder(store.get({entry.name!r}))
            result = await embedder.embed(["hi"])
            await embedder.close()
            return result.vectors.shape

        shape = asyncio.run(main())
        heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)
        print(heavy, shape)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] (1, 384)"
