"""LangChain's OpenAI integration against a real server on the embedded default models, configured as the
README says: `ChatOpenAI` as it is, `OpenAIEmbeddings` with `check_embedding_ctx_length=False` (else it sends
tiktoken's token ids, which ortserve reads as its own model's ids, and fetches tiktoken's files)."""

from __future__ import annotations

import math

from langchain_openai import ChatOpenAI, OpenAIEmbeddings


def test_chat_openai(fresh_server):
    llm = ChatOpenAI(model="tiny-demo", base_url=f"{fresh_server.base_url}/v1", api_key="unused", max_tokens=5)
    reply = llm.invoke("Hello")
    assert isinstance(reply.content, str) and reply.response_metadata["finish_reason"] in ("stop", "length")
    streamed = list(llm.stream("Hello"))
    assert any(chunk.response_metadata.get("finish_reason") in ("stop", "length") for chunk in streamed)


def test_openai_embeddings(fresh_server):
    embeddings = OpenAIEmbeddings(
        model="all-minilm",
        base_url=f"{fresh_server.base_url}/v1",
        api_key="unused",
        check_embedding_ctx_length=False,
    )
    documents = embeddings.embed_documents(["A man is eating food.", "A man is eating pasta.", "The sky is blue."])
    query = embeddings.embed_query("Someone eats a meal.")
    assert [len(v) for v in documents] == [384] * 3 and len(query) == 384
    assert math.isclose(sum(x * x for x in query), 1.0, rel_tol=1e-4)  # all-MiniLM-L6-v2 vectors are unit length

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))

    # the real all-MiniLM-L6-v2: eating is nearer eating than the sky
    assert cosine(query, documents[0]) > cosine(query, documents[2])
    assert cosine(query, documents[1]) > cosine(query, documents[2])
