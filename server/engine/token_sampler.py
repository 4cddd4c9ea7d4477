"""`TokenSampler`: picks a request's next token from its logits on the batched path, where onnxruntime-genai
does not sample for us (pure numpy).

Greedy (temperature 0) is the first highest logit, as onnxruntime-genai's. Otherwise: the logits divided by
the temperature, cut to the top_k likeliest (0: no cut), then to the smallest set whose probability reaches
top_p, and one token drawn with the request's own random stream (seeded when the request gives a seed, so a
seeded request repeats itself whatever else runs beside it).
"""

from __future__ import annotations

import numpy as np

from ortserve.server.engine.generation import SamplingParams

NUCLEUS_GUESS = 256  # top_p: sort only this many candidates when they already hold top_p of the probability


class TokenSampler:
    def __init__(self, params: SamplingParams):
        self.greedy = params.temperature <= 0
        self.temperature = np.float32(params.temperature if params.temperature > 0 else 1.0)
        self.top_k = int(params.top_k)
        self.top_p = float(params.top_p)
        self.rng = np.random.default_rng(params.seed)

    def pick(self, logits: np.ndarray) -> int:
        """The next token id, given a float32 row of logits over the vocabulary."""
        if self.greedy:
            return int(np.argmax(logits))
        scaled = logits / self.temperature
        if 0 < self.top_k < len(scaled):
            ids = np.argpartition(-scaled, self.top_k - 1)[: self.top_k]
        else:
            ids = None
        values = scaled if ids is None else scaled[ids]
        probs = np.exp(values - values.max(), dtype=np.float64)
        probs /= probs.sum()
        if self.top_p < 1.0:
            ids, probs = self._nucleus(ids, probs)
        cdf = np.cumsum(probs)
        at = min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")), len(cdf) - 1)
        return int(at if ids is None else ids[at])

    def _nucleus(self, ids: np.ndarray | None, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The smallest likeliest set of tokens whose probability reaches top_p (ids, probabilities)."""
        if ids is None:
            ids = np.arange(len(probs))
        order = None
        if len(probs) > NUCLEUS_GUESS:  # most of the mass usually sits in a few tokens: sort those alone
            guess = np.argpartition(-probs, NUCLEUS_GUESS - 1)[:NUCLEUS_GUESS]
            if probs[guess].sum() >= self.top_p:
                order = guess[np.argsort(-probs[guess], kind="stable")]
        if order is None:
            order = np.argsort(-probs, kind="stable")
        kept = np.cumsum(probs[order])
        cut = min(int(np.searchsorted(kept, self.top_p)) + 1, len(order))
        return ids[order[:cut]], probs[order[:cut]]
