"""The runner process: one per loaded model, started with multiprocessing's "spawn".

Why a process: `og.Generator.append_tokens` holds the GIL for the whole prefill, so
inside the server process it would stall the event loop. Here it stalls nobody.

The runner is single-threaded. Each scheduler tick it reads every waiting message
from the server, then gives each active request one step (a prefill chunk or one
decode step), round-robin, and sends that tick's events back in one message. A
short request therefore finishes while a long prompt is still prefilling.

This module imports no onnxruntime-genai at import time (the server process imports
it for `main`, the spawn target); the runner loads it in `main`.
"""
from __future__ import annotations

import json
import os
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any

from ortserve.server.engine import devices, ipc
from ortserve.server.engine.base import TextDelta

# Text from fast models is sent at most this often, merged per request; Started, Finished,
# errors and each request's first text go out at once. 5 ms is below what a reader notices
# and spares a server wake-up per token for models faster than 200 tokens/s.
FLUSH_INTERVAL = 0.005

FIM_CANDIDATES = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, Granite, ...
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SantaCoder
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder: begin = prefix, hole = suffix, end = middle
)


def find_fim_tokens(to_token_id: Any) -> tuple[str, str, str] | None:
    """The (prefix, suffix, middle) special tokens of the first family whose three tokens all exist."""
    for names in FIM_CANDIDATES:
        if all(to_token_id(name) >= 0 for name in names):
            return names
    return None


def main(folder: str, options: ipc.RunnerOptions, requests: Any, events: Any) -> None:
    """Entry point of the runner process."""
    # Ctrl-C reaches the whole process group; the server decides when runners stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ortserve.server.engine import paged

    engine = paged.uses_engine(Path(folder))  # a paged-attention model: served by og.Engine (paged.py)
    try:
        lm, info = (paged.load if engine else load)(Path(folder), options)
    except Exception as exc:  # a broken model must not look like a crash: say why
        events.send((ipc.FAILED, f"{type(exc).__name__}: {exc}"))
        return
    events.send((ipc.READY, info))
    (paged.EngineRunner if engine else Runner)(lm, options, requests, events).serve()


def load(folder: Path, options: ipc.RunnerOptions) -> tuple[Any, ipc.RunnerInfo]:
    import onnxruntime_genai as og

    from ortserve.server.engine.detok import load_hf_tokenizer
    from ortserve.server.engine.slots import LoadedModel, probe_guidance

    config = og.Config(str(folder))
    devices.configure(config, options.device, options.threads, og)
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    raw_tokenizer = og.Tokenizer(model)
    raw_tokenizer.update_options(skip_special_tokens=False)

    genai = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"]
    model_ctx = int(genai["context_length"])
    context_length = min(options.num_ctx, model_ctx) if options.num_ctx else model_ctx
    eos = genai.get("eos_token_id", [])
    eos_ids = frozenset(int(t) for t in (eos if isinstance(eos, list) else [eos])) | frozenset(tokenizer.eos_token_ids)
    # og skips special tokens when decoding; tool-call markers must stay visible to the tool-call parsers
    special_text = {
        int(genai[key]): raw_tokenizer.decode([int(genai[key])])
        for key in ("bot_token_id", "eot_token_id")
        if isinstance(genai.get(key), int) and 0 <= genai[key] < int(genai["vocab_size"])
    }
    bos = genai.get("bos_token_id")
    lm = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        raw_tokenizer=raw_tokenizer,
        context_length=context_length,
        vocab_size=int(genai["vocab_size"]),
        eos_ids=eos_ids,
        bos_id=bos if isinstance(bos, int) and bos >= 0 else None,
        special_text=special_text,
        hf_tokenizer=load_hf_tokenizer(folder),
        logits_output=str(genai.get("decoder", {}).get("outputs", {}).get("logits", "logits")),
        model_type=str(genai.get("type", "")),
        # images go through onnxruntime-genai's multimodal processor (vision encoder + embeddings at prefill)
        processor=model.create_multimodal_processor() if genai.get("vision") else None,
    )
    lm.guidance_error = probe_guidance(lm)
    info = ipc.RunnerInfo(
        context_length, find_fim_tokens(tokenizer.to_token_id), options.device, options.threads, lm.guidance_error
    )
    return lm, info


class Runner:
    def __init__(self, lm: Any, options: ipc.RunnerOptions, requests: Any, events: Any):
        self.lm = lm
        self.options = options
        self.requests = requests
        self.events = events
        self.waiting: deque[Any] = deque()  # accepted, waiting for a free slot
        self.active: list[Any] = []  # generating, stepped round-robin
        self.outbox: list[tuple[int, Any]] = []
        self.urgent = False  # the outbox holds something that must not wait for FLUSH_INTERVAL
        self.last_send = 0.0

    def serve(self) -> None:
        while self._receive(block=not self.active and not self.waiting):
            self._admit()
            self._tick()
            if self.outbox and (self.urgent or not self.active or time.monotonic() - self.last_send >= FLUSH_INTERVAL):
                if not self._send():
                    return

    # ---- messages from the server ------------------------------------------
    def _receive(self, block: bool) -> bool:
        """Handle every message already waiting (blocking for the first one when idle). False: stop."""
        try:
            while self.requests.poll(None if block else 0):
                block = False
                if not self._handle(self.requests.recv()):
                    return False
        except (EOFError, OSError):  # the server went away
            return False
        return True

    def _handle(self, message: tuple) -> bool:
        kind = message[0]
        if kind == ipc.GENERATE:
            self._accept(message[1], message[2])
        elif kind == ipc.CANCEL:
            self._drop(message[1])
        elif kind == ipc.STATS:
            self._post(message[1], self.stats())
        elif kind == ipc.SHUTDOWN:
            return False
        return True

    def _accept(self, rid: int, request: Any) -> None:
        from ortserve.server.engine.slots import Slot

        try:
            slot = Slot(rid, self.lm, request, self.options.prefill_chunk)
        except Exception as exc:  # a bad request fails alone
            self._post(rid, ipc.Failure.from_exception(exc))
            return
        self._post(rid, slot.started)
        self.waiting.append(slot)

    def _drop(self, rid: int) -> None:
        for queue in (self.active, self.waiting):
            for slot in list(queue):
                if slot.rid == rid:
                    queue.remove(slot)
                    slot.close()

    def stats(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "active": len(self.active),
            "queued": len(self.waiting),
            "prefilling": sum(1 for s in self.active if s.prefilling),
        }

    # ---- scheduling ---------------------------------------------------------
    def _admit(self) -> None:
        while self.waiting and len(self.active) < self.options.parallel:
            slot = self.waiting.popleft()
            try:
                slot.start()
            except Exception as exc:
                self._post(slot.rid, ipc.Failure.from_exception(exc))
                continue
            self.active.append(slot)

    def _tick(self) -> None:
        for slot in list(self.active):
            try:
                events = slot.step()
            except Exception as exc:  # onnxruntime failed on this request: fail it, keep the others
                slot.close()
                events = [ipc.Failure.from_exception(exc)]
            for event in events:
                if not isinstance(event, TextDelta) or not slot.announced:
                    slot.announced = True
                    self.urgent = True
                self.outbox.append((slot.rid, event))
            if slot.done:
                self.active.remove(slot)

    def _post(self, rid: int, item: Any) -> None:
        self.outbox.append((rid, item))
        self.urgent = True

    def _send(self) -> bool:
        batch, self.outbox, self.urgent = merge_deltas(self.outbox), [], False
        try:
            self.events.send((ipc.EVENTS, batch))
        except (OSError, EOFError):
            return False
        self.last_send = time.monotonic()
        return True


def merge_deltas(batch: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Join each request's consecutive TextDeltas into one (order per request is kept)."""
    merged: list[tuple[int, Any]] = []
    open_delta: dict[int, int] = {}  # rid -> index in `merged` of its last item, if a TextDelta
    for rid, item in batch:
        at = open_delta.get(rid)
        if isinstance(item, TextDelta) and at is not None:
            prev = merged[at][1]
            merged[at] = (
                rid,
                TextDelta(prev.text + item.text, prev.token_ids + item.token_ids, prev.logprobs + item.logprobs),
            )
            continue
        merged.append((rid, item))
        if isinstance(item, TextDelta):
            open_delta[rid] = len(merged) - 1
        else:
            open_delta.pop(rid, None)
    return merged
