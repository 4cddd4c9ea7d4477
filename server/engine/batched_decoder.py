"""`BatchedDecoder`: one onnxruntime session over a chat model's decoder graph, and one KV cache with a row per
sequence, so that the next-token step of every active sequence runs in a single call.

The graphs onnxruntime-genai's builder writes use `GroupQueryAttention` with past and present sharing one
buffer (`past_present_share_buffer` in genai_config.json): each layer's keys and values live in a
`[rows, kv_heads, capacity, head_size]` tensor, and a row's own length comes from its attention mask (row i:
`lengths[i] + new` ones, then zeros). So rows of different lengths step together, and a row's prefill runs
alone on that row's slice of the same buffers. Everything is bound by pointer (IO binding): no KV is copied
per step. The buffers are remade (a copy) when a row needs more than their capacity, up to `max_capacity`.

`unsupported(folder, device)` says why a model cannot be served this way (it then stays on og.Generator).
Imported only by the runner process (it imports onnxruntime).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ortserve.server.engine.runner_model import kv_bytes_per_token

GROWTH_STEP = 256  # capacity grows in multiples of this many tokens (and at least doubles)
NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
NUMPY_TYPES["tensor(int32)"] = np.int32


def last_position_graph(path: Path, logits: str) -> bytes | None:
    """The decoder graph with the LM head fed only the last position: a prefill chunk's other positions' logits are
    never read on this path (prompt logprobs run on og.Generator), and the LM head is ~15-20% of a prefill's work
    on small models. None when the graph is not the expected shape (or `onnx` is not installed): use it as is."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        return None
    model = onnx.load(str(path), load_external_data=False)
    producers = {output: node for node in model.graph.node for output in node.output}
    head = producers.get(logits)
    while head is not None and head.op_type == "Cast":
        head = producers.get(head.input[0])
    if head is None or head.op_type not in ("MatMulNBits", "MatMul", "Gemm"):
        return None
    hidden = head.input[0]
    last = f"{hidden}/ortserve_last_position"
    model.graph.initializer.extend(
        [
            helper.make_tensor("ortserve_last_start", TensorProto.INT64, [1], [-1]),
            helper.make_tensor("ortserve_last_end", TensorProto.INT64, [1], [2**62]),
            helper.make_tensor("ortserve_last_axis", TensorProto.INT64, [1], [1]),
        ]
    )
    cut = helper.make_node(
        "Slice", [hidden, "ortserve_last_start", "ortserve_last_end", "ortserve_last_axis"], [last], name=last
    )
    head.input[0] = last
    model.graph.node.insert(list(model.graph.node).index(head), cut)
    return model.SerializeToString()


def unsupported(folder: Path, device: str) -> str | None:
    """Why `folder`'s model cannot run on the batched path (None: it can). Its decoder must be one graph with
    input_ids, attention_mask and a shared past/present KV buffer per layer, and nothing else (no position ids,
    no vision or embedding sessions); the device must be the CPU (others have og's own batching)."""
    if device != "cpu":
        return f"batched decoding runs on the CPU only (this model runs on {device})"
    spec = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
    model, search = spec.get("model", {}), spec.get("search", {})
    decoder = model.get("decoder", {})
    if any(key in model for key in ("vision", "speech", "embedding")):
        return "the model has more than a decoder (vision, speech or embedding sessions)"
    if not search.get("past_present_share_buffer"):
        return "its decoder does not share past and present KV buffers"
    inputs = decoder.get("inputs", {})
    if set(inputs) != {"input_ids", "attention_mask", "past_key_names", "past_value_names"}:
        return f"its decoder takes inputs we do not feed ({', '.join(sorted(inputs))})"
    if "pipeline" in decoder or not isinstance(decoder.get("filename"), str):
        return "its decoder is not one graph"
    return None


@dataclass(frozen=True)
class DecoderShape:
    layers: int
    kv_heads: int
    head_size: int
    vocab_size: int
    logits: str  # output names
    past: tuple[str, ...]  # input names, layer by layer: key, value
    present: tuple[str, ...]


def read_shape(folder: Path) -> DecoderShape:
    model = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"]
    decoder = model["decoder"]
    layers = int(decoder["num_hidden_layers"])
    names_in, names_out = decoder["inputs"], decoder.get("outputs", {})
    past_k, past_v = names_in["past_key_names"], names_in["past_value_names"]
    present_k = names_out.get("present_key_names", "present.%d.key")
    present_v = names_out.get("present_value_names", "present.%d.value")
    return DecoderShape(
        layers=layers,
        kv_heads=int(decoder.get("num_key_value_heads", decoder["num_attention_heads"])),
        head_size=int(decoder["head_size"]),
        vocab_size=int(model["vocab_size"]),
        logits=str(names_out.get("logits", "logits")),
        past=tuple(name.replace("%d", str(i)) for i in range(layers) for name in (past_k, past_v)),
        present=tuple(name.replace("%d", str(i)) for i in range(layers) for name in (present_k, present_v)),
    )


class BatchedDecoder:
    """The decoder session and its KV rows. `run` steps rows [first, first + n) together; `swap` and `reshape`
    move KV between rows and into new buffers."""

    def __init__(self, folder: Path, rows: int, threads: int, max_capacity: int, capacity: int = GROWTH_STEP):
        import onnxruntime as ort

        self.shape = shape = read_shape(folder)
        decoder = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        path = folder / decoder["filename"]
        graph = last_position_graph(path, shape.logits)
        if graph is not None:  # its weights stay in the folder's external data file
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
        self.session = ort.InferenceSession(graph or str(path), options, ["CPUExecutionProvider"])
        self.last_position_only = graph is not None
        types = {i.name: i.type for i in self.session.get_inputs()}
        self.kv_type = NUMPY_TYPES[types[shape.past[0]]]
        self.ids_type = NUMPY_TYPES[types["input_ids"]]
        self.mask_type = NUMPY_TYPES[types["attention_mask"]]
        # KV bytes one row holds per token of capacity, in the graph's own KV type
        self.row_bytes_per_token = kv_bytes_per_token(decoder, np.dtype(self.kv_type).itemsize)
        self.rows = 0
        self.max_capacity = max(1, max_capacity)
        self.capacity = 0
        self.buffers: list[np.ndarray] = []
        self._bindings: dict[tuple[int, int], Any] = {}  # (first row, rows) -> an IO binding with the KV bound
        self.reshape(rows, self.capacity_for(min(capacity, self.max_capacity)), {})

    @property
    def nbytes(self) -> int:
        return sum(buffer.nbytes for buffer in self.buffers)

    def capacity_for(self, needed: int) -> int:
        """The capacity the buffers take to hold `needed` tokens per row: a multiple of GROWTH_STEP, at least
        double the current one when growing, at most max_capacity."""
        if needed > self.max_capacity:
            raise ValueError(f"{needed} tokens exceed the KV capacity of {self.max_capacity}")
        steps = -(-needed // GROWTH_STEP) * GROWTH_STEP
        grown = max(steps, 2 * self.capacity) if needed > self.capacity else steps
        return min(self.max_capacity, grown)

    def reshape(self, rows: int, capacity: int, used: dict[int, int]) -> None:
        """New buffers of `rows` rows holding `capacity` tokens each; `used` (row -> tokens it holds) is copied
        over, and only that: a fresh buffer's untouched pages cost nothing until a row writes there."""
        shape = self.shape
        buffers = []
        olds: list[np.ndarray | None] = list(self.buffers) or [None] * len(shape.past)
        for old in olds:
            buffer = np.zeros((rows, shape.kv_heads, capacity, shape.head_size), dtype=self.kv_type)
            if old is not None:
                for row, length in used.items():
                    if row < rows and length:
                        buffer[row, :, : min(length, capacity)] = old[row, :, : min(length, capacity)]
            buffers.append(buffer)
        self.buffers, self.rows, self.capacity = buffers, rows, capacity
        self._bindings.clear()

    def swap(self, a: int, b: int, length: int) -> None:
        """Exchange rows a and b's first `length` positions (every layer's keys and values)."""
        if a == b or length <= 0:
            return
        for buffer in self.buffers:
            held = buffer[a, :, :length].copy()
            buffer[a, :, :length] = buffer[b, :, :length]
            buffer[b, :, :length] = held

    def run(self, first: int, ids: np.ndarray, lengths: list[int]) -> np.ndarray:
        """Append `ids` ([rows, new]) to rows first.. (each holding `lengths[i]` tokens); the logits of each row's
        last new position, float32 [rows, vocab_size]. The caller has grown the buffers to fit."""
        n, new = ids.shape
        width = max(lengths) + new
        mask = np.zeros((n, width), dtype=self.mask_type)
        for i, length in enumerate(lengths):
            mask[i, : length + new] = 1
        binding = self._binding(first, n)
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=self.ids_type))
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_output(self.shape.logits, "cpu")
        self.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[-1].numpy()
        return logits[:, -1, : self.shape.vocab_size].astype(np.float32, copy=False)

    def _binding(self, first: int, n: int) -> Any:
        """An IO binding of rows first..first+n's KV (past and present are the same memory), made once per span."""
        binding = self._bindings.get((first, n))
        if binding is not None:
            return binding
        binding = self.session.io_binding()
        shape, capacity = self.shape, self.capacity
        dims = [n, shape.kv_heads, capacity, shape.head_size]
        for past, present, buffer in zip(shape.past, shape.present, self.buffers, strict=True):
            address = buffer[first : first + n].ctypes.data
            binding.bind_input(past, "cpu", 0, self.kv_type, dims, address)
            binding.bind_output(present, "cpu", 0, self.kv_type, dims, address)
        self._bindings[(first, n)] = binding
        return binding
