"""`OrtEmbedder`: an embedding model converted by `ortserve convert`, served in-process by onnxruntime.

Per request: tokenizing (a worker thread; `tokenizers` releases the GIL) checks every input's length
and token ids before anything runs, then the sequences join the model's `MicroBatcher`, which runs
`InferenceSession.run` in its own thread. The event loop only moves requests around.

The execution providers come from the registry in `ortserve.server.engine.devices` (device name -> onnxruntime
provider, checked against `onnxruntime.get_available_providers()` and, with a CUDA build, against what
really loads: `ortserve.core.cuda`), with the CPU behind each for what the accelerator cannot run. "auto"
takes the best one available and falls back to the CPU. CUDA's libraries are loaded from their wheels
before a CUDA session starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ortserve.core.encoder import (
    POOLING_MODES,
    BadTokenError,
    EncoderTokenizer,
    TooLongError,
    load_tokenizer,
    run_batch,
)
from ortserve.server.engine.batcher import MicroBatcher
from ortserve.server.engine.embedder import EmbeddingInput, Embeddings
from ortserve.server.errors import BackendError, ContextLengthError, InvalidRequestError, NotSupportedError

if TYPE_CHECKING:
    from ortserve.core.devices import Environment
    from ortserve.core.store import ModelEntry

log = logging.getLogger(__name__)

MAX_BATCH = 32  # rows per session.run: past this, CPU throughput no longer grows
MAX_BATCH_TOKENS = 16384  # padded tokens per session.run (bounds activation memory for long inputs)
WINDOW_S = 0.002  # an idle model waits this long for the rest of a burst of requests
INLINE_SIZE = 2048  # inputs up to this many characters / token ids are tokenized on the event loop:
# a few tens of microseconds, less than a hop to a worker thread and back


def providers_for(
    device: str, available: Sequence[str] | None = None, machine: Environment | None = None
) -> tuple[str, list[str]]:
    """(device, onnxruntime providers) for a device name; "auto" is the best available one, else the CPU.

    `available`: onnxruntime's providers (default: `onnxruntime.get_available_providers()`); `machine`: the rest of
    the machine (default: `devices.detect()`, with what loading CUDA showed). A device this onnxruntime lacks is a
    NotSupportedError that says what to install."""
    from ortserve.server.engine import devices

    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    env = dataclasses.replace(machine or devices.detect(), ort_providers=tuple(available))
    chosen = devices.resolve_device(device, "embeddings", env)
    return chosen, devices.ort_providers(chosen)


def check_session_device(session_providers: list[str], chosen: str, *, asked: str) -> str:
    """The device a session really runs on. onnxruntime quietly falls back to the CPU when an accelerator's
    provider cannot start (no GPU, missing CUDA libraries): for a device asked by name that is an error,
    for "auto" a warning."""
    from ortserve.server.engine import devices

    running = devices.device_of_providers(session_providers)
    if running != chosen:
        message = (
            f"onnxruntime could not start {devices.PROVIDERS[chosen].ort_ep} (the session runs on "
            f"{', '.join(session_providers)}): check the GPU driver and the CUDA / DirectML libraries"
        )
        if asked != "auto":
            raise NotSupportedError(f"device '{asked}' is not available for embeddings: {message}")
        log.warning("device auto: embeddings on %s, not %s: %s", running, chosen, message)
    return running


def session_options(threads: int | None = None):
    import onnxruntime as ort

    from ortserve.server.engine.devices import physical_cores

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle intra-op threads sleep instead of spinning: between batches the event loop, HTTP and the
    # tokenizer need those cores (2-core A/B: same or better sentences/s, 20-45% less server CPU).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OrtEmbedder:
    """One loaded embedding model (implements `ortserve.server.engine.embedder.Embedder`)."""

    def __init__(
        self,
        session,
        tokenizer: EncoderTokenizer,
        *,
        name: str,
        pooling: str,
        normalize: bool,
        dimensions: int,
        device: str = "cpu",
        max_batch: int = MAX_BATCH,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        window_s: float = WINDOW_S,
    ):
        if pooling not in POOLING_MODES:
            raise NotSupportedError(f"pooling '{pooling}' is not supported; supported: {', '.join(POOLING_MODES)}")
        self.session = session
        self.tokenizer = tokenizer
        self.name = name
        self.pooling = pooling
        self.normalized = normalize
        self.dimensions = dimensions
        self.device = device
        self.input_names = [i.name for i in session.get_inputs()]
        self.batcher = MicroBatcher(
            self._run, max_batch=max_batch, max_batch_tokens=max_batch_tokens, window_s=window_s, name=name
        )

    @property
    def batch_sizes(self) -> dict[int, int]:
        """Rows per onnxruntime run -> runs, since the model loaded (GET /metrics)."""
        return dict(self.batcher.batch_sizes)

    @property
    def max_input_tokens(self) -> int:
        return self.tokenizer.max_length

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        manifest: dict,
        *,
        name: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
        max_input_tokens: int | None = None,
        **batching: Any,
    ) -> OrtEmbedder:
        """Load a converted folder (blocking: call it from a thread). `max_input_tokens` may only lower
        the model's max_seq_length."""
        import onnxruntime as ort

        folder = Path(folder)
        if manifest.get("pooled_in_graph"):
            raise NotSupportedError("embedding graphs with pooling inside are not supported yet")
        limit = int(manifest["max_seq_length"])
        if max_input_tokens:
            limit = min(limit, int(max_input_tokens))
        prompts = manifest.get("prompts") or {}
        tokenizer = EncoderTokenizer.create(
            load_tokenizer(folder),
            max_length=limit,
            lowercase=bool(manifest.get("lowercase")),
            prompt=prompts.get(manifest.get("default_prompt_name") or ""),
        )
        chosen, providers = providers_for(device)
        from ortserve.server.engine import devices

        devices.load_libraries(chosen, "embeddings")  # CUDA's libraries from their wheels, before onnxruntime starts it
        session = ort.InferenceSession(str(folder / "model.onnx"), session_options(threads), providers=providers)
        running = check_session_device(session.get_providers(), chosen, asked=device)
        embedder = cls(
            session,
            tokenizer,
            name=name or folder.name,
            pooling=manifest["pooling"],
            normalize=bool(manifest["normalize"]),
            dimensions=int(manifest["dimensions"]),
            device=running,
            **batching,
        )
        embedder._check()
        return embedder

    def _check(self) -> None:
        """One tiny run: the graph loads, takes our inputs and gives vectors of the manifest's size."""
        (probe,) = self.tokenizer.encode_texts(["hello"])
        got = self._run([probe]).shape[1]
        if got != self.dimensions:
            raise BackendError(f"the model gives {got}-dimensional vectors, its manifest says {self.dimensions}")

    # ---- serving ------------------------------------------------------------------------
    async def embed(self, inputs: Sequence[EmbeddingInput], *, truncate: bool = False) -> Embeddings:
        if not inputs:
            return Embeddings(np.empty((0, self.dimensions), dtype=np.float32), ())
        size = sum(len(x) for x in inputs)
        if size <= INLINE_SIZE:
            sequences = self.encode(inputs, truncate)
        else:
            sequences = await asyncio.to_thread(self.encode, inputs, truncate)
        vectors = await self.batcher.submit(sequences)
        return Embeddings(vectors, tuple(len(s) for s in sequences))

    def encode(self, inputs: Sequence[EmbeddingInput], truncate: bool = False) -> list[np.ndarray]:
        """Token-id sequences for the model, or ContextLengthError / InvalidRequestError (param "input")."""
        texts = [x for x in inputs if isinstance(x, str)]
        if texts and len(texts) != len(inputs):
            raise InvalidRequestError("'input' must be all strings or all token arrays.", param="input")
        try:
            if texts:
                return self.tokenizer.encode_texts(texts, truncate=truncate)
            return self.tokenizer.encode_ids(inputs, truncate=truncate)  # type: ignore[arg-type]
        except TooLongError as e:
            which = "the input" if len(inputs) == 1 else f"input {e.index}"
            raise ContextLengthError(
                f"This model's maximum input length is {e.limit} tokens, but {which} "
                f'has {e.tokens} tokens (special tokens included). Please shorten it, or set "truncate": true '
                f"to cut inputs at {e.limit} tokens.",
                param="input",
            ) from None
        except BadTokenError as e:
            raise InvalidRequestError(
                f"Input {e.index} holds the token id {e.token}, but this model's token ids are 0 to "
                f"{e.vocab_size - 1}. Token arrays are ids of the model's own tokenizer, without special tokens.",
                param="input",
            ) from None

    def _run(self, sequences: list[np.ndarray]) -> np.ndarray:
        return run_batch(
            self.session,
            sequences,
            pooling=self.pooling,
            normalize=self.normalized,
            pad_id=self.tokenizer.pad_id,
            input_names=self.input_names,
        )

    async def close(self) -> None:
        await self.batcher.close()


async def load_embedder(
    entry: ModelEntry, *, num_ctx: int | None = None, device: str = "cpu", threads: int | None = None
) -> OrtEmbedder:
    """Load `entry`'s converted folder without blocking the event loop.

    num_ctx: the most tokens per input, if lower than the model's max_seq_length; device: "auto", "cpu",
    "cuda", "dml" or "coreml" (see `ortserve.server.engine.devices`); threads: intra-op threads (None: the physical
    cores).
    """
    return await asyncio.to_thread(
        OrtEmbedder.from_folder,
        entry.folder,
        entry.manifest,
        name=entry.name,
        device=device,
        threads=threads,
        max_input_tokens=num_ctx,
    )
