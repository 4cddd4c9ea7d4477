"""logprobs, top_logprobs, logit_bias, n, best_of and echo on a real server, checked against transformers.

The reference is independent: transformers' logits for the same checkpoint (fp32), its
tokenizer, and GPT-2's byte alphabet from transformers to spell tokens as bytes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.e2e.conftest import CHAT_MODEL

MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is the weather in Paris today?"},
]
TOL = 1e-3


class Reference:
    """transformers' tokenizer and model for the checkpoint CHAT_MODEL was converted from."""

    def __init__(self, checkpoint):
        import torch
        import transformers
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        self.tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        alphabet = {c: b for b, c in bytes_to_unicode().items()}
        added = {i: t.content for i, t in self.tok.added_tokens_decoder.items()}
        self.spelling = {  # token id -> its bytes
            i: added[i].encode() if i in added else bytes(alphabet[c] for c in piece)
            for piece, i in self.tok.get_vocab().items()
        }
        self.ids = {raw: i for i, raw in sorted(self.spelling.items(), reverse=True)}  # bytes -> lowest id

    def chat_ids(self, messages=MESSAGES) -> list[int]:
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]

    def logits(self, ids: list[int]) -> np.ndarray:
        """Row i: the logits after ids[: i + 1]."""
        import torch

        with torch.no_grad():
            return self.model(torch.tensor([ids])).logits[0].numpy().astype(np.float64)

    def id_of(self, raw) -> int:
        return self.ids[bytes(raw)]

    def token(self, token_id: int) -> str:
        """A token's text as OpenAI spells it: bytes of split characters as \\xNN escapes."""
        return self.spelling[token_id].decode("utf-8", errors="backslashreplace")

    def greedy(self, ids: list[int], count: int) -> list[int]:
        out = list(ids)
        for _ in range(count):
            out.append(int(np.argmax(self.logits(out)[-1])))
        return out[len(ids) :]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def ref(checkpoints) -> Reference:
    return Reference(checkpoints["llama"])


def chat(client, **fields):
    return client.chat.completions.create(**{"model": CHAT_MODEL, "messages": MESSAGES, **fields})


def streamed_chat(client, **fields) -> dict[int, dict]:
    """Per choice index: its content, logprobs entries (as dicts) and finish reason, from a stream."""
    out: dict[int, dict] = {}
    for chunk in chat(client, stream=True, **fields):
        for choice in chunk.choices:
            got = out.setdefault(choice.index, {"content": "", "logprobs": [], "finish_reason": None})
            got["content"] += choice.delta.content or ""
            if choice.logprobs is not None:
                got["logprobs"] += [entry.model_dump() for entry in choice.logprobs.content]
            got["finish_reason"] = choice.finish_reason or got["finish_reason"]
    return out


# ---- chat --------------------------------------------------------------------------------
def test_greedy_chat_logprobs_equal_transformers(client, ref):
    reply = chat(client, temperature=0, max_tokens=12, logprobs=True, top_logprobs=5)
    content = reply.choices[0].logprobs.content
    assert b"".join(bytes(e.bytes) for e in content).decode(errors="replace") == reply.choices[0].message.content
    ids = ref.chat_ids() + [ref.id_of(e.bytes) for e in content]
    expected = log_softmax(ref.logits(ids))[len(ref.chat_ids()) - 1 :]
    for position, item in enumerate(content):
        row = expected[position]
        chosen = ref.id_of(item.bytes)
        assert chosen == int(np.argmax(row))  # greedy
        assert item.logprob == pytest.approx(row[chosen], abs=TOL)
        tops = item.top_logprobs
        assert len(tops) == 5
        assert [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
        assert tops[0].bytes == item.bytes and tops[0].logprob == item.logprob  # the chosen one ranks first
        for top in tops:
            assert top.logprob == pytest.approx(row[ref.id_of(top.bytes)], abs=TOL)
            assert top.token == bytes(top.bytes).decode("utf-8", errors="backslashreplace")
        assert tops[-1].logprob >= np.sort(row)[-5] - TOL  # they are the five likeliest


def test_logprobs_are_of_the_distribution_sampled_from(client, ref):
    """After penalties, logit_bias, the repetition penalty and the temperature, in that order."""
    bias_id = ref.tok.encode(" weather", add_special_tokens=False)[0]
    temperature, presence, frequency, repetition = 0.7, 0.5, 0.3, 1.3
    reply = chat(
        client,
        temperature=temperature,
        seed=3,
        max_tokens=10,
        logprobs=True,
        top_logprobs=2,
        presence_penalty=presence,
        frequency_penalty=frequency,
        logit_bias={str(bias_id): 5},
        extra_body={"repetition_penalty": repetition},
    )
    content = reply.choices[0].logprobs.content
    prompt = ref.chat_ids()
    generated = [ref.id_of(e.bytes) for e in content]
    logits = ref.logits(prompt + generated)[len(prompt) - 1 :]
    for position, item in enumerate(content):
        row = logits[position].copy()
        counts = np.bincount(generated[:position], minlength=row.size)[: row.size]
        row -= counts * frequency + (counts > 0) * presence
        row[bias_id] += 5
        seen = np.zeros(row.size, dtype=bool)
        seen[prompt + generated[:position]] = True
        row[seen] = np.where(row[seen] < 0, row[seen] * repetition, row[seen] / repetition)
        expected = log_softmax(row / temperature)
        assert item.logprob == pytest.approx(expected[generated[position]], abs=TOL)
        assert [t.logprob for t in item.top_logprobs] == pytest.approx(np.sort(expected)[::-1][:2], abs=TOL)


def test_logit_bias_bans_and_forces(client, ref):
    greedy = chat(client, temperature=0, max_tokens=4, logprobs=True).choices[0]
    first = ref.id_of(greedy.logprobs.content[0].bytes)
    banned = chat(client, temperature=0, max_tokens=4, logprobs=True, logit_bias={str(first): -100}).choices[0]
    assert ref.id_of(banned.logprobs.content[0].bytes) != first
    assert banned.message.content != greedy.message.content
    (forced_id,) = ref.tok.encode(" weather", add_special_tokens=False)
    assert forced_id not in [ref.id_of(e.bytes) for e in greedy.logprobs.content]
    forced = chat(client, temperature=0, max_tokens=4, logprobs=True, logit_bias={str(forced_id): 100}).choices[0]
    assert forced.message.content == " weather" * 4
    assert all(e.logprob == pytest.approx(0, abs=TOL) for e in forced.logprobs.content)  # the biased distribution
    sampled = chat(client, temperature=1.5, seed=1, max_tokens=4, logit_bias={str(forced_id): 100})
    assert sampled.choices[0].message.content == " weather" * 4


def test_n_choices_with_a_seed_are_reproducible(client):
    fields = dict(n=3, seed=42, temperature=1.0, max_tokens=8, logprobs=True)
    first, again = chat(client, **fields), chat(client, **fields)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert len(set(texts)) == 3  # independent choices
    assert [c.message.content for c in again.choices] == texts
    single = chat(client, seed=42, temperature=1.0, max_tokens=8)
    assert single.choices[0].message.content == texts[0]  # choice 0 samples with the seed itself
    assert first.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once
    assert all(c.finish_reason == "length" for c in first.choices)
    assert first.usage.completion_tokens == 3 * 8
    streamed = streamed_chat(client, **fields)
    assert [streamed[i]["content"] for i in range(3)] == texts
    assert [streamed[i]["logprobs"] for i in range(3)] == [
        [e.model_dump() for e in c.logprobs.content] for c in first.choices
    ]


def test_streaming_and_non_streaming_logprobs_agree(client):
    fields = dict(temperature=0, max_tokens=16, logprobs=True, top_logprobs=3, stop=["e"])
    whole = chat(client, **fields).choices[0]
    streamed = streamed_chat(client, **fields)[0]
    assert streamed["content"] == whole.message.content
    assert streamed["logprobs"] == [e.model_dump() for e in whole.logprobs.content]
    # the tokens that made only the text a stop string cut are not reported
    spelled = [bytes(e.bytes) for e in whole.logprobs.content]
    assert whole.finish_reason == "stop" and spelled
    assert b"".join(spelled).decode(errors="replace").startswith(whole.message.content)
    assert len(b"".join(spelled[:-1]).decode(errors="replace")) < len(whole.message.content)
    assert whole.logprobs.refusal is None


def test_without_logprobs_there_are_none(client):
    reply = chat(client, temperature=0, max_tokens=3)
    assert reply.choices[0].logprobs is None
    for chunk in chat(client, temperature=0, max_tokens=3, stream=True):
        assert all(c.logprobs is None for c in chunk.choices)


def test_logprobs_and_bias_compose_with_a_grammar(client, ref):
    """The grammar is applied after logit_bias: a forced token the grammar forbids is not sampled."""
    (forced_id,) = ref.tok.encode(" weather", add_special_tokens=False)
    reply = chat(
        client,
        temperature=0,
        max_tokens=30,
        logprobs=True,
        top_logprobs=2,
        response_format={"type": "json_object"},
        logit_bias={str(forced_id): 100},
    )
    choice = reply.choices[0]
    assert not choice.message.content.startswith(" weather")
    if choice.finish_reason == "stop":
        json.loads(choice.message.content)
    spelled = b"".join(bytes(e.bytes) for e in choice.logprobs.content)
    assert spelled.decode(errors="replace") == choice.message.content


# ---- completions ---------------------------------------------------------------------------
PROMPT = "The weather in Paris is"


def test_echo_with_logprobs_scores_the_prompt_as_transformers(client, ref):
    reply = client.completions.create(
        model=CHAT_MODEL, prompt=PROMPT, echo=True, logprobs=3, max_tokens=6, temperature=0
    )
    choice = reply.choices[0]
    assert choice.text.startswith(PROMPT)
    lp = choice.logprobs
    prompt_ids = ref.tok.encode(PROMPT, add_special_tokens=False)
    ids = prompt_ids + ref.greedy(prompt_ids, 6)
    assert choice.finish_reason == "length"
    assert lp.tokens == [ref.token(i) for i in ids]
    assert len(ids) == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first token
    expected = log_softmax(ref.logits(ids))
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(expected[i - 1][ids[i]], abs=TOL)
        top = lp.top_logprobs[i]
        assert lp.tokens[i] in top and 3 <= len(top) <= 4  # the three likeliest and the token itself
        assert list(top.values()) == sorted(top.values(), reverse=True)
        assert list(top.values())[:3] == pytest.approx(np.sort(expected[i - 1])[::-1][:3], abs=TOL)
    assert lp.text_offset[0] == 0 and lp.text_offset[len(prompt_ids)] == len(PROMPT)
    whole = [
        (at, t)
        for at, t, i in zip(lp.text_offset, lp.tokens, ids, strict=True)
        if "\ufffd" not in ref.spelling[i].decode(errors="replace")
    ]
    assert all(choice.text[at : at + len(t)] == t for at, t in whole)  # tokens of whole characters


def test_echo_alone_scores_a_prompt(client, ref):
    reply = client.completions.create(model=CHAT_MODEL, prompt=PROMPT, echo=True, logprobs=0, max_tokens=0)
    choice = reply.choices[0]
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 0
    ids = ref.tok.encode(PROMPT, add_special_tokens=False)
    expected = log_softmax(ref.logits(ids))
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(
        [expected[i - 1][ids[i]] for i in range(1, len(ids))], abs=TOL
    )
    assert "".join(choice.logprobs.tokens) == PROMPT


def test_completion_logprobs_of_token_prompts(client, ref):
    ids = ref.tok.encode(PROMPT, add_special_tokens=False)
    reply = client.completions.create(
        model=CHAT_MODEL, prompt=[ids, ids[:3]], logprobs=1, max_tokens=5, temperature=0, n=2
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]  # by prompt, then by choice
    assert reply.choices[0].text == reply.choices[1].text  # greedy choices are equal
    for choice, prompt in zip(reply.choices, [ids, ids, ids[:3], ids[:3]], strict=True):
        generated = ref.greedy(prompt, 5)
        assert choice.logprobs.tokens == [ref.token(i) for i in generated]
        expected = log_softmax(ref.logits(prompt + generated))[len(prompt) - 1 :]
        assert choice.logprobs.token_logprobs == pytest.approx(
            [expected[i][t] for i, t in enumerate(generated)], abs=TOL
        )
        assert choice.logprobs.text_offset[0] == 0
    assert reply.usage.prompt_tokens == len(ids) + 3  # each prompt once, not once per choice


def test_best_of_returns_the_likeliest_candidates(client):
    ids = [5, 80, 200, 31]
    fields = dict(model=CHAT_MODEL, prompt=ids, temperature=1.0, max_tokens=6, logprobs=0)
    for seed in range(10):
        candidates = client.completions.create(n=3, seed=seed, **fields)  # the same candidates best_of=3 draws
        if any(c.finish_reason != "length" for c in candidates.choices):
            continue  # an end of sequence's logprob is scored but not shown
        means = [np.mean(c.logprobs.token_logprobs) for c in candidates.choices]
        if int(np.argmax(means)) != 0:
            break
    else:
        pytest.fail("no seed where the likeliest candidate is not the first")
    order = np.argsort(means)[::-1]
    best = client.completions.create(n=2, best_of=3, seed=seed, **fields)
    assert [c.text for c in best.choices] == [candidates.choices[i].text for i in order[:2]]
    assert [c.index for c in best.choices] == [0, 1]
    assert best.usage.completion_tokens == 3 * 6  # every candidate was generated
    plain = client.completions.create(best_of=3, seed=seed, **{**fields, "logprobs": None})
    assert plain.choices[0].text == candidates.choices[order[0]].text and plain.choices[0].logprobs is None


def test_streamed_completion_logprobs_agree(client):
    fields = dict(model=CHAT_MODEL, prompt=PROMPT, echo=True, logprobs=2, max_tokens=8, temperature=0.8, seed=5, n=2)
    whole = client.completions.create(**fields)
    got: dict[int, dict] = {}
    for chunk in client.completions.create(stream=True, **fields):
        for choice in chunk.choices:
            acc = got.setdefault(
                choice.index, {"text": "", "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            )
            acc["text"] += choice.text
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                acc[key] += getattr(choice.logprobs, key)
    for choice in whole.choices:
        assert got[choice.index]["text"] == choice.text
        assert {k: v for k, v in got[choice.index].items() if k != "text"} == choice.logprobs.model_dump()


def test_tool_calls_carry_logprobs_in_both_modes(client):
    """Tool-call text held back by the parser: its tokens' logprobs ride on the choice's next chunk."""
    city = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    }
    fields = dict(
        temperature=0,
        max_tokens=100,
        logprobs=True,
        tool_choice="required",
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": city}}],
    )
    whole = chat(client, **fields).choices[0]
    assert whole.message.tool_calls and whole.finish_reason == "tool_calls"
    streamed = streamed_chat(client, **fields)[0]
    assert streamed["finish_reason"] == "tool_calls"
    assert streamed["logprobs"] == [e.model_dump() for e in whole.logprobs.content]
    assert "get_weather" in b"".join(bytes(e.bytes) for e in whole.logprobs.content).decode(errors="replace")
