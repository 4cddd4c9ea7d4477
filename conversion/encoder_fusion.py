"""Fused self-attention for an exported encoder: each BERT-style attention block becomes one
`com.microsoft.Attention` node, which onnxruntime's CPU kernel runs with one packed QKV GEMM and a fused
softmax, and which `quantize_dynamic` turns into `QAttention` for int8.

onnxruntime's own BERT fusion (`onnxruntime.transformers.optimizer`, and the session's level-2 fusions)
does not recognise the attention of a `torch.onnx.export(dynamo=True)` graph, so the pattern is matched
here:

    X -> MatMul(Wq) -> Add(bq) -> Reshape [B,S,H,d] -> Transpose(0,2,1,3) ----\
    X -> MatMul(Wk) -> Add(bk) -> Reshape -> Transpose(0,2,3,1) -> MatMul -> Mul(scale) -> Add(mask) -> Softmax
    X -> MatMul(Wv) -> Add(bv) -> Reshape -> Transpose(0,2,1,3) ------------------------------------> MatMul
         -> Transpose(0,2,1,3) -> Reshape [B,S,D]

The mask becomes `attention_mask` itself (int32, 1 = attend), the Attention op's raw key-padding mask.
Blocks that do not match exactly (rotary or relative positions, a causal mask) are left alone, and
`fuse_attention_checked` keeps the fused graph only when onnxruntime gives the same outputs as before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ortserve.conversion.onnx_graph import (
    EXTERNAL_DATA_BYTES,
    GraphIndex,
    add_initializer,
    attribute,
    replace_nodes,
    save_model,
    use_domain,
    weights_bytes,
)

MASK_INPUT = "attention_mask"
MASK_INT32 = "attention_mask_int32"
FUSED_MAX_ABS_DIFF = 1e-4  # fused vs unfused last_hidden_state, fp32


def _projection(index: GraphIndex, name: str, perm: list[int]):
    """(input, weight [D, D], bias [D], nodes, reshape) for Transpose(perm) <- Reshape <- Add(bias) <- MatMul."""
    transpose = index.produced_by(name, "Transpose")
    if transpose is None or list(attribute(transpose, "perm", [])) != perm:
        return None
    reshape = index.produced_by(transpose.input[0], "Reshape")
    add = reshape and index.produced_by(reshape.input[0], "Add")
    if add is None:
        return None
    for mm_at, bias_at in ((0, 1), (1, 0)):
        matmul, bias = index.produced_by(add.input[mm_at], "MatMul"), index.constant(add.input[bias_at])
        weight = index.constant(matmul.input[1]) if matmul is not None else None
        if weight is not None and bias is not None and weight.ndim == 2 and bias.shape == (weight.shape[1],):
            return matmul.input[0], weight, bias, [transpose, reshape, add, matmul], reshape
    return None


def _num_heads(index: GraphIndex, reshape, hidden: int) -> int | None:
    """Heads from the [B, S, heads, head_size] target shape of the Q reshape (a constant or a Concat)."""
    shape = index.constant(reshape.input[1])
    if shape is None:
        concat = index.produced_by(reshape.input[1], "Concat")
        if concat is None or len(concat.input) != 4:
            return None
        parts = [index.constant(i) for i in concat.input[2:]]
        sizes = [p for p in parts if p is not None and p.size == 1]
        if len(sizes) != len(parts):
            return None
        shape = np.array([0, 0, *(int(p.reshape(-1)[0]) for p in sizes)])
    if shape.size != 4:
        return None
    heads, size = int(shape[2]), int(shape[3])
    if heads <= 0 and size > 0 and hidden % size == 0:
        heads = hidden // size
    return heads if heads > 0 and hidden % heads == 0 else None


def fuse_attention(model) -> int:
    """Rewrite the matching attention blocks of `model` (an onnx ModelProto, in place); return how many."""
    from onnx import TensorProto, helper

    graph = model.graph
    if MASK_INPUT not in {i.name for i in graph.input}:
        return 0
    index = GraphIndex(graph)
    replaced: dict[int, object] = {}  # id(node) -> its replacement, or None to drop it
    mask_source = None
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        add = index.produced_by(softmax.input[0], "Add")
        if add is None or attribute(softmax, "axis", -1) not in (-1, 3):
            continue
        mul, mask = index.produced_by(add.input[0], "Mul"), add.input[1]
        if mul is None:
            mul, mask = index.produced_by(add.input[1], "Mul"), add.input[0]
        scores = mul and index.produced_by(mul.input[0], "MatMul")
        scale = index.constant(mul.input[1]) if mul is not None else None
        if scores is None or scale is None or scale.size != 1 or mask_source not in (None, mask):
            continue
        q = _projection(index, scores.input[0], [0, 2, 1, 3])
        k = _projection(index, scores.input[1], [0, 2, 3, 1])
        context = index.only_consumer(softmax.output[0], "MatMul")
        v = context and _projection(index, context.input[1], [0, 2, 1, 3])
        if q is None or k is None or v is None or not q[0] == k[0] == v[0]:
            continue
        back = index.only_consumer(context.output[0], "Transpose")
        out = back and index.only_consumer(back.output[0], "Reshape")
        hidden = q[1].shape[1]
        heads = _num_heads(index, q[4], hidden)
        if out is None or list(attribute(back, "perm", [])) != [0, 2, 1, 3] or heads is None:
            continue
        if not (q[1].shape == k[1].shape == v[1].shape == (q[1].shape[0], hidden)):
            continue
        mask_source = mask
        i = len([r for r in replaced.values() if r is not None])
        weight = add_initializer(graph, f"attention_{i}.qkv_weight", np.concatenate([q[1], k[1], v[1]], axis=1))
        bias = add_initializer(graph, f"attention_{i}.qkv_bias", np.concatenate([q[2], k[2], v[2]]))
        fused = helper.make_node(
            "Attention",
            [q[0], weight, bias, MASK_INT32],
            [out.output[0]],
            name=f"Attention_{i}",
            domain="com.microsoft",
            num_heads=heads,
            scale=float(scale.reshape(-1)[0]),
        )
        for node in q[3] + k[3] + v[3] + [scores, mul, add, softmax, context, back]:
            replaced[id(node)] = None
        replaced[id(out)] = fused
    count = sum(r is not None for r in replaced.values())
    if count:
        cast = helper.make_node("Cast", [MASK_INPUT], [MASK_INT32], name="mask_to_int32", to=TensorProto.INT32)
        kept = [replaced.get(id(n), n) for n in graph.node]
        replace_nodes(graph, [cast] + [n for n in kept if n is not None])
        use_domain(model)
    return count


def fuse_attention_checked(onnx_path: Path, feeds: list[dict[str, np.ndarray]]) -> int:
    """Fuse the attention of the model saved at `onnx_path`, in place, when onnxruntime's outputs on `feeds`
    stay within FUSED_MAX_ABS_DIFF of the unfused graph's; return the blocks fused (0: the file is unchanged)."""
    import onnx
    import onnxruntime as ort

    onnx_path = Path(onnx_path)
    large = weights_bytes(onnx_path) > EXTERNAL_DATA_BYTES
    model = onnx.load(str(onnx_path))
    original = onnx.ModelProto()
    original.CopyFrom(model)
    count = fuse_attention(model)
    if not count:
        return 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    wanted = [session.run(None, feed)[0] for feed in feeds]
    save_model(model, onnx_path, large)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for feed, want in zip(feeds, wanted, strict=True):
        if not np.abs(session.run(None, feed)[0] - want).max() <= FUSED_MAX_ABS_DIFF:
            del session
            save_model(original, onnx_path, large)
            return 0
    return count
