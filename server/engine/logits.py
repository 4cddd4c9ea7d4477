"""Our own logits processing, for the requests that need it: penalties, logit_bias, logprobs.

The fast path leaves every step to onnxruntime-genai. A request with one of these
features instead reads each step's logits (`get_logits`) and `LogitsProcessor`
applies, in onnxruntime-genai's own order:

  1. OpenAI's presence and frequency penalties;
  2. logit_bias (added to the logit; -100 practically bans a token, +100 forces it);
  3. the min_tokens ban on the end of sequence;
  4. the repetition penalty (HF's: a seen token's logit is divided by it if positive, else multiplied).

The result goes back with `set_logits`, and onnxruntime-genai's own min_length and
repetition penalty are switched off for the request, so nothing is applied twice.
onnxruntime-genai then applies the grammar (if any), the temperature and top-k/top-p,
and samples. The logprobs we report are `log_softmax(result / temperature)` (with
temperature 0, greedy: `log_softmax(result)`): the distribution sampled from, before
the top-k/top-p cut and the grammar's mask, which onnxruntime-genai applies inside
`generate_next_token` where we cannot read them.

Pure numpy: no onnxruntime-genai here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ortserve.server.engine.generation import SamplingParams, TokenLogprob

FLOOR = -9999.0  # the logprob reported for a token that cannot be sampled (OpenAI's value; JSON has no -inf)
BANNED = np.finfo(np.float32).min  # how onnxruntime-genai bans a token

Spell = Callable[[int], tuple[str, bytes]]


def log_softmax(row: np.ndarray) -> np.ndarray:
    """log_softmax of a 1-D row, in float32 (float64 sums)."""
    shifted = row - row.max()
    return (shifted - np.log(np.exp(shifted, dtype=np.float64).sum())).astype(np.float32)


def top_ids(logprobs: np.ndarray, k: int, chosen: int | None = None) -> np.ndarray:
    """The k likeliest token ids, best first (ties: lower id first); `chosen` is among them when it ranks."""
    k = min(k, len(logprobs))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    ids = np.argpartition(-logprobs, k - 1)[:k]
    if chosen is not None and chosen not in ids and logprobs[chosen] >= logprobs[ids].min():
        ids[np.argmin(logprobs[ids])] = chosen  # a tie at the cut: keep the token that was sampled
    return ids[np.lexsort((ids, -logprobs[ids]))]


def entry(logprobs: np.ndarray, token: int, k: int, spell: Spell) -> TokenLogprob:
    """`token`'s TokenLogprob at a position whose log-distribution is `logprobs`, with its k likeliest tokens."""

    def one(t: int) -> TokenLogprob:
        text, raw = spell(t)
        value = float(logprobs[t])
        return TokenLogprob(t, text, raw, value if value >= FLOOR else FLOOR)  # -inf and NaN too: JSON has neither

    top = tuple(one(int(t)) for t in top_ids(logprobs, k, token))
    head = one(token)
    return TokenLogprob(head.token_id, head.token, head.bytes, head.logprob, top)


class LogitsProcessor:
    """One request's logits processing; `process` before each step, `observe` the token sampled."""

    def __init__(
        self,
        params: SamplingParams,
        vocab_size: int,
        eos_ids: frozenset[int],
        prompt_ids: np.ndarray,
        budget: int,
    ):
        self.params = params
        self.vocab_size = vocab_size
        self.generated = 0
        penalize = bool(params.presence_penalty or params.frequency_penalty)
        self._counts = np.zeros(vocab_size, dtype=np.float32) if penalize else None
        self._bias_ids = np.asarray([t for t, _ in params.logit_bias], dtype=np.int64)
        self._bias = np.asarray([b for _, b in params.logit_bias], dtype=np.float32)
        self._min_tokens = min(params.min_tokens, budget)
        self._eos = np.asarray(sorted(t for t in eos_ids if 0 <= t < vocab_size), dtype=np.int64)
        self._seen: np.ndarray | None = None
        if params.repetition_penalty != 1.0:
            self._seen = np.zeros(vocab_size, dtype=bool)
            self._seen[prompt_ids] = True
        self._temperature = np.float32(params.temperature if params.temperature > 0 else 1.0)

    @property
    def changes_logits(self) -> bool:
        """False when the logits need not be written back (only logprobs are asked, or min_tokens is met)."""
        return (
            self._counts is not None
            or len(self._bias) > 0
            or self.generated < self._min_tokens
            or self._seen is not None
        )

    def process(self, logits: np.ndarray) -> np.ndarray:
        """The logits to sample from (a new array of the same shape), for the next token."""
        out = np.array(logits, dtype=np.float32, copy=True)
        row = out.reshape(-1)[: self.vocab_size]  # a view: the model's row may be padded past the vocabulary
        if self._counts is not None:
            c = self._counts
            row -= c * np.float32(self.params.frequency_penalty) + (c > 0) * np.float32(self.params.presence_penalty)
        if len(self._bias):
            row[self._bias_ids] += self._bias
        if self.generated < self._min_tokens:
            row[self._eos] = BANNED
        if self._seen is not None:
            seen = row[self._seen]
            p = np.float32(self.params.repetition_penalty)
            row[self._seen] = np.where(seen < 0, seen * p, seen / p)
        return out

    def logprobs(self, processed: np.ndarray) -> np.ndarray:
        """The log-distribution sampled from, given `process`'s output."""
        return log_softmax(processed.reshape(-1)[: self.vocab_size] / self._temperature)

    def observe(self, token: int) -> None:
        self.generated += 1
        if not 0 <= token < self.vocab_size:
            return
        if self._counts is not None:
            self._counts[token] += 1
        if self._seen is not None:
            self._seen[token] = True


class LogprobsTrail:
    """Generated tokens' logprobs, released with the text they make.

    A token's entry is sent once some of its text is (text held back while it may be the
    start of a stop string waits with it); when a stop string matches, the tokens whose
    text was all cut are not reported: the tokens spell the content, up to the stop.
    """

    def __init__(self) -> None:
        self.cumulative = 0.0  # every generated token's logprob, the end of sequence included
        self._waiting: list[tuple[int, TokenLogprob]] = []  # (where its text starts in the stream, entry)
        self._made = 0  # characters the detokenizer has produced
        self._sent = 0  # characters sent

    def add(self, item: TokenLogprob, chars: int) -> None:
        self._waiting.append((self._made, item))
        self._made += chars

    def grow(self, chars: int) -> None:
        """Text that the detokenizer released late (at the end), made by tokens already added."""
        self._made += chars

    def release(self, chars: int, final: bool = False) -> tuple[TokenLogprob, ...]:
        """The entries to send with `chars` more characters of text; `final`: all that remain."""
        self._sent += chars
        if final:
            out, self._waiting = self._waiting, []
        else:
            cut = next((i for i, (at, _) in enumerate(self._waiting) if at >= self._sent), len(self._waiting))
            out, self._waiting = self._waiting[:cut], self._waiting[cut:]
        return tuple(item for _, item in out)


class PromptReader:
    """The logprobs of a prompt's tokens, read from the model's logits for every position of each chunk.

    Position i's logits predict token i + 1, so a chunk's last row is kept for the next
    chunk's first token. Nothing is sampled here: these are the model's own log-softmax.
    """

    def __init__(self, ids: np.ndarray, k: int, vocab_size: int, output: str, spell: Spell):
        self.ids = ids
        self.k = k
        self.vocab_size = vocab_size
        self.output = output  # the model output holding the logits
        self.spell = spell
        text, raw = spell(int(ids[0]))
        self.entries: list[TokenLogprob] = [TokenLogprob(int(ids[0]), text, raw, None)]
        self._last: np.ndarray | None = None  # the previous chunk's last row

    def read(self, generator: Any, start: int, end: int) -> bool:
        """Add the entries of tokens start..end-1 (just appended); False if the model gave too few rows."""
        logits = np.asarray(generator.get_output(self.output))
        rows = logits.reshape(-1, logits.shape[-1])[:, : self.vocab_size].astype(np.float32, copy=False)
        if len(rows) != end - start:
            return False
        predicting = ([] if start == 0 else [self._last]) + list(rows[:-1])
        for token, row in zip(self.ids[max(start, 1) : end], predicting, strict=True):
            self.entries.append(entry(log_softmax(row), int(token), self.k, self.spell))
        self._last = rows[-1].copy()
        return True
