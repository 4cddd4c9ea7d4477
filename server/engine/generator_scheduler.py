"""`GeneratorScheduler`: the runner's own scheduler over one `og.Generator` per request (every model but
the paged-attention ones), and its loader.

Up to `parallel` requests generate at once; each tick gives every active request one step (a prefill
chunk or one decode step), round-robin, so a short request finishes while a long prompt is still
prefilling. Others wait in the runner's queue. Finished requests leave their generators in the runner's
`PromptCache` (prompt_cache.py), from which a later request sharing a prefix of its prompt starts.

Imported only by the runner process (it imports onnxruntime-genai).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime_genai as og

from ortserve.server.engine import ipc
from ortserve.server.engine.admission import admit
from ortserve.server.engine.generator_request import GeneratorRequest
from ortserve.server.engine.guidance import probe_guidance
from ortserve.server.engine.prompt_cache import PromptCache
from ortserve.server.engine.runner_loop import RunnerLoop
from ortserve.server.engine.runner_model import RunnerModel, load_runner_model, read_genai_config


def load(folder: Path, options: ipc.RunnerOptions) -> tuple[RunnerModel, ipc.RunnerInfo]:
    """Load a model for the Generator path (in the runner process), probing whether grammars are enforced."""
    model = load_runner_model(folder, options)
    model.guidance_error = probe_guidance(model, lambda *args: generate_greedy(model, *args))
    model.kv_bytes_per_token = measure_kv_bytes_per_token(model, folder) or model.kv_bytes_per_token
    return model, model.info(options, options.device)


def measure_kv_bytes_per_token(model: RunnerModel, folder: Path) -> int:
    """KV bytes per token of max_length, read off a real generator's first layer (its dtype and, when the KV is
    one buffer of max_length, its shape); 0 when the model does not show it."""
    decoder = read_genai_config(folder)["model"].get("decoder", {})
    name = str(decoder.get("outputs", {}).get("present_key_names", "present.%d.key")).replace("%d", "0")
    max_length = 8
    try:
        gp = og.GeneratorParams(model.og())
        gp.set_search_options(max_length=max_length)
        generator = og.Generator(model.og(), gp)
        # a word's tokens, not a lone id 0: Qwen2.5-VL's pipeline masks id 0 out as padding, and GQA then fails
        # (onnxruntime logs the error to stderr on every load)
        generator.append_tokens(
            np.asarray(list(model.tokenizer.encode("Hi"))[:4] or [model.bos_id or 0], dtype=np.int32)
        )
        key = generator.get_output(name)
    except Exception:  # noqa: BLE001 - an output og does not expose: keep the estimate
        return 0
    per_layer = key.nbytes // (max_length if key.shape[-2] == max_length else key.shape[-2])
    return 2 * int(decoder.get("num_hidden_layers", 1)) * per_layer


def generate_greedy(model: RunnerModel, prompt: np.ndarray, most: int, grammar: tuple[str, str]) -> list[int]:
    """Up to `most` greedy tokens under `grammar` (kind, data), on an og.Generator; stops at an end token."""
    gp = og.GeneratorParams(model.og())
    gp.set_search_options(max_length=len(prompt) + most, do_sample=False)
    gp.set_guidance(*grammar)
    generator = og.Generator(model.og(), gp)
    generator.append_tokens(prompt)
    out: list[int] = []
    while not generator.is_done() and len(out) < most:
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
        if out[-1] in model.eos_ids:
            break
    return out


class GeneratorScheduler(RunnerLoop):
    """Steps up to `options.parallel` GeneratorRequests round-robin, one prefill chunk or decode step each."""

    def __init__(self, model: RunnerModel, options: ipc.RunnerOptions, requests: Any, events: Any):
        super().__init__(options, requests, events)
        self.model = model
        self.prompt_cache = PromptCache(options.prompt_cache_bytes)

    def _new_request(self, rid: int, request: Any) -> GeneratorRequest:
        return GeneratorRequest(
            rid, self.model, admit(self.model, request), self.options.prefill_chunk, self.prompt_cache
        )

    def _drop(self, rid: int) -> None:
        for queue in (self.active, self.waiting):
            for accepted in list(queue):
                if accepted.rid == rid:
                    queue.remove(accepted)
                    accepted.close()

    def stats(self) -> dict[str, Any]:
        prefilling = sum(1 for r in self.active if r.prefilling)
        return {**super().stats(), "prefilling": prefilling, "prompt_cache": self.prompt_cache.stats()}

    def _has_room(self) -> bool:
        return len(self.active) < self.options.parallel

    def _start(self, accepted: GeneratorRequest) -> bool:
        accepted.start()
        return True

    def _tick(self) -> None:
        self._step(list(self.active))

    def _step(self, requests: list[GeneratorRequest]) -> None:
        """One unit of work for each of `requests`; the finished ones leave `active`."""
        for accepted in requests:
            events: list[Any]
            try:
                events = accepted.step()
            except Exception as exc:  # onnxruntime failed on this request: fail it, keep the others
                accepted.close()
                events = [ipc.Failure.from_exception(exc)]
            self._emit(accepted, events)
            if accepted.done:
                self.active.remove(accepted)
