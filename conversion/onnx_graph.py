"""Small helpers for rewriting ONNX graphs with the `onnx` protobuf API: who produces and who reads each
tensor, constant values, dead-node pruning, topological order, and saving (external data past ~1.8 GB).

Used by the encoder rewrites (`encoder_fusion.py`, `quantize_calibrated.py`) and the quantizer presets.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

EXTERNAL_DATA_BYTES = 1_800_000_000


class GraphIndex:
    """A read-only view of one graph: producers, consumers and constants (initializers or Constant nodes)."""

    def __init__(self, graph):
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def produced_by(self, name: str, op_type: str):
        """The node of type `op_type` that writes `name`, or None."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def only_consumer(self, name: str, op_type: str):
        """The single node reading `name` if it is an `op_type`, else None."""
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def required_constant(self, name: str) -> np.ndarray:
        """`constant(name)`, for an input that a matched pattern guarantees to be one."""
        value = self.constant(name)
        if value is None:
            raise ValueError(f"{name} is not a constant")
        return value

    def constant(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None


def attribute(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def add_initializer(graph, name: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name


def replace_nodes(graph, nodes: Iterable) -> None:
    """Set the graph's nodes to `nodes` in topological order, then drop dead nodes and unused initializers."""
    nodes = list(nodes)
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    ordered, pending = [], nodes
    while pending:
        rest = []
        for node in pending:
            if all(not i or i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"the rewritten graph has a cycle or a missing input at {rest[0].name!r}")
        pending = rest
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(ordered):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(live))
    used = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


def use_domain(model, domain: str = "com.microsoft", version: int = 1) -> None:
    from onnx import helper

    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, version))


def weights_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def save_model(model, dst: Path, large: bool) -> None:
    """Save `model`; a large one with its tensors in `<dst>.data` (protobuf cannot hold more than 2 GB)."""
    import onnx

    dst = Path(dst)
    if large:
        onnx.save_model(
            model,
            str(dst),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=dst.name + ".data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(dst))
