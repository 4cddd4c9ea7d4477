"""A converted encoder folder's serving pieces: tokenizing, padding, pooling (numpy + `tokenizers` only).

`ortserve convert` writes `model.onnx` (output `last_hidden_state`, pooling *not* in the graph) and a
`tokenizer.json` set to truncate at the model's max_seq_length and to pad to the longest row. Serving
and the conversion's validation both go through `EncoderTokenizer` -> `run_batch` (-> `pool`), so what
is validated is what is served; `embed_texts` is that path for a plain list of texts.

Token ids here are always the model's own tokenizer ids. `EncoderTokenizer` tokenizes *without*
truncation (an over-long input must be seen, not silently cut) and adds the special tokens itself,
so a text and the ids of that text (tokenized without special tokens) give the same sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ONNX_OUTPUT = "last_hidden_state"
POOLING_MODES = ("mean", "cls", "lasttoken")
_PROBE = "hello world"  # any text whose tokens sit between the special tokens


def pool(hidden: np.ndarray, attention_mask: np.ndarray, mode: str, normalize: bool) -> np.ndarray:
    """Sentence embeddings [batch, dim] from token embeddings [batch, seq, dim], as sentence-transformers pools."""
    mask = attention_mask.astype(np.float32)
    if mode == "mean":
        summed = np.einsum("bsd,bs->bd", hidden.astype(np.float32), mask)
        out = summed / np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
    elif mode == "cls":  # first attended token (index 0 with right padding)
        out = hidden[np.arange(len(hidden)), attention_mask.argmax(axis=1)]
    elif mode == "lasttoken":  # last attended token, for right or left padding
        last = hidden.shape[1] - 1 - attention_mask[:, ::-1].argmax(axis=1)
        out = hidden[np.arange(len(hidden)), last]
    else:
        raise ValueError(f"unknown pooling mode {mode!r}; expected one of {', '.join(POOLING_MODES)}")
    out = out.astype(np.float32)
    if normalize:
        out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out


def load_tokenizer(folder: Path):
    """The converted folder's tokenizer, truncation and padding as the conversion configured them."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


class TooLongError(ValueError):
    """An input has more tokens than the model takes (and truncation was not asked for)."""

    def __init__(self, index: int, tokens: int, limit: int):
        super().__init__(f"input {index} has {tokens} tokens; the limit is {limit}")
        self.index, self.tokens, self.limit = index, tokens, limit


class BadTokenError(ValueError):
    """A token id outside the model's vocabulary."""

    def __init__(self, index: int, token: int, vocab_size: int):
        super().__init__(f"input {index} has token id {token}, outside the vocabulary [0, {vocab_size})")
        self.index, self.token, self.vocab_size = index, token, vocab_size


@dataclass(frozen=True)
class EncoderTokenizer:
    """Texts or token ids -> the int64 id sequences the encoder takes, special tokens and prompt included."""

    tokenizer: Any  # a tokenizers.Tokenizer with truncation and padding off
    max_length: int  # most tokens per sequence, special tokens included
    prefix: tuple[int, ...]  # special tokens before the text ([CLS])
    suffix: tuple[int, ...]  # special tokens after it ([SEP])
    prompt: str = ""  # the default prompt, prepended to every input
    lowercase: bool = False
    pad_id: int = 0

    @classmethod
    def create(
        cls, tokenizer, *, max_length: int | None = None, prompt: str | None = None, lowercase: bool = False
    ) -> EncoderTokenizer:
        """From the converted tokenizer; `max_length` defaults to its truncation length."""
        from tokenizers import Tokenizer

        truncation, padding = tokenizer.truncation or {}, tokenizer.padding or {}
        limit = max_length or truncation.get("max_length")
        if not limit:
            raise ValueError("the tokenizer has no truncation length; pass max_length")
        plain = Tokenizer.from_str(tokenizer.to_str())  # a copy: the caller's tokenizer keeps its settings
        plain.no_truncation()
        plain.no_padding()
        with_special = plain.encode(_PROBE).ids
        bare = plain.encode(_PROBE, add_special_tokens=False).ids
        start = _find(with_special, bare)
        if start is None or len(with_special) - len(bare) != plain.num_special_tokens_to_add(False):
            raise ValueError("cannot tell where the tokenizer's special tokens go")
        return cls(
            tokenizer=plain,
            max_length=int(limit),
            prefix=tuple(with_special[:start]),
            suffix=tuple(with_special[start + len(bare) :]),
            prompt=prompt or "",
            lowercase=lowercase,
            pad_id=int(padding.get("pad_id", 0)),
        )

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def specials(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def _wrap(self, body: Sequence[int], index: int, truncate: bool) -> np.ndarray:
        room = self.max_length - self.specials
        if len(body) > room:
            if not truncate:
                raise TooLongError(index, len(body) + self.specials, self.max_length)
            body = body[:room]
        return np.array([*self.prefix, *body, *self.suffix], dtype=np.int64)

    def encode_texts(self, texts: Sequence[str], *, truncate: bool = False, first_index: int = 0) -> list[np.ndarray]:
        """One id sequence per text; TooLongError (naming the input) past max_length unless `truncate`."""
        texts = [self.prompt + t for t in texts]
        if self.lowercase:
            texts = [t.lower() for t in texts]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [self._wrap(e.ids, first_index + i, truncate) for i, e in enumerate(encodings)]

    def encode_ids(self, inputs: Sequence[Sequence[int]], *, truncate: bool = False) -> list[np.ndarray]:
        """Token-id inputs (the model's ids, without special tokens): BadTokenError for ids outside the vocabulary."""
        vocab = self.vocab_size
        head = self.tokenizer.encode(self.prompt, add_special_tokens=False).ids if self.prompt else []
        out = []
        for index, ids in enumerate(inputs):
            bad = next((t for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise BadTokenError(index, bad, vocab)
            out.append(self._wrap([*head, *ids], index, truncate))
        return out


def _find(haystack: Sequence[int], needle: Sequence[int]) -> int | None:
    n = len(needle)
    return next((i for i in range(len(haystack) - n + 1) if list(haystack[i : i + n]) == list(needle)), None)


def make_feeds(sequences: Sequence[np.ndarray], input_names: Sequence[str], pad_id: int = 0) -> dict[str, np.ndarray]:
    """Right-padded int64 input_ids, attention_mask (and token_type_ids) for the names the graph takes."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: feeds[name] for name in input_names}


def run_batch(
    session,
    sequences: Sequence[np.ndarray],
    *,
    pooling: str,
    normalize: bool,
    pad_id: int = 0,
    input_names: Sequence[str] | None = None,
) -> np.ndarray:
    """One `session.run` over `sequences` (padded to the longest), pooled: [len(sequences), dim] float32."""
    names = input_names or [i.name for i in session.get_inputs()]
    feeds = make_feeds(sequences, names, pad_id)
    (hidden,) = session.run([ONNX_OUTPUT], feeds)
    return pool(hidden, feeds["attention_mask"], pooling, normalize)


def length_batches(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped longest first into batches of at most `max_rows` rows and `max_tokens` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        # the batch's first row is its longest, so the padded size is rows * that length
        if batch is None or len(batch) >= max_rows or (len(batch) + 1) * lengths[batch[0]] > max_tokens:
            batches.append([i])
        else:
            batch.append(i)
    return batches


def embed_texts(
    session,
    tokenizer,
    texts: Sequence[str],
    *,
    pooling: str,
    normalize: bool,
    batch_size: int = 32,
    prompt: str | None = None,
    lowercase: bool = False,
) -> np.ndarray:
    """Embed `texts` with an onnxruntime session (truncating at the tokenizer's max length, as
    sentence-transformers does); rows come back in input order. Batched by length, so batches pad little."""
    encoder = EncoderTokenizer.create(tokenizer, prompt=prompt, lowercase=lowercase)
    sequences = encoder.encode_texts(texts, truncate=True)
    names = [i.name for i in session.get_inputs()]
    out: np.ndarray | None = None
    for batch in length_batches([len(s) for s in sequences], batch_size, batch_size * encoder.max_length):
        pooled = run_batch(
            session,
            [sequences[i] for i in batch],
            pooling=pooling,
            normalize=normalize,
            pad_id=encoder.pad_id,
            input_names=names,
        )
        if out is None:
            out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
        out[batch] = pooled
    return out if out is not None else np.empty((0, 0), dtype=np.float32)
