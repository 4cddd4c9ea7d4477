"""Register an embedding graph that is already ONNX (a sentence-transformers repository's `onnx/model*.onnx`).

No export and no validation against PyTorch: the graph is copied in as `model.onnx` (with its external data
file, under the name the graph refers to), beside the repository's tokenizer set up as `convert` sets it
(truncation at max_seq_length, batch-longest padding). Pooling, normalization, max_seq_length, prompts and
dimensions come from the repository's sentence-transformers config (`read_source`, as for a conversion).
The graph must give token embeddings named `last_hidden_state`, as optimum's and sentence-transformers'
exports do; pooling stays out of the graph. It is then loaded once with onnxruntime and embeds a smoke
sentence through the serving code (`core.encoder`), so a graph that cannot serve is refused.
"""

from __future__ import annotations

from pathlib import Path

from ortserve.conversion.common import ConversionError, Progress, link_or_copy
from ortserve.conversion.embedding import write_tokenizer
from ortserve.conversion.embedding_source import read_source
from ortserve.core.encoder import ONNX_OUTPUT, embed_texts, load_tokenizer

_SKIPPED = "an ONNX graph published as it is: there is no conversion to validate (smoke-tested only)"
SMOKE_TEXT = "ortserve checks that this model embeds a sentence."


def register_onnx_embedding(src: Path, onnx_file: str, out: Path, *, precision: str, progress: Progress) -> dict:
    """Fill the staging folder `out` from the downloaded repository `src` and its graph `onnx_file` (a path in
    `src`); returns the manifest."""
    source = read_source(src, exportable=False)
    graph = src / onnx_file
    with progress.step(f"copy {onnx_file} and the tokenizer"):
        link_or_copy(str(graph), str(out / "model.onnx"))
        for data in graph.parent.glob(f"{graph.stem}.onnx[_.]data"):  # referenced by this name inside the graph
            link_or_copy(str(data), str(out / data.name))
        tokenizer_files = write_tokenizer(source, out)
    with progress.step("load it once with onnxruntime and embed a sentence"):
        inputs = _smoke(out, source.pooling, source.normalize, source.dimensions)
    progress.info(f"    not validated: {_SKIPPED}")
    return {
        "task": "embedding",
        "architecture": (source.config.get("architectures") or [source.config.get("model_type")])[0],
        "model_type": source.config.get("model_type"),
        "precision": precision,
        "device": "cpu",
        "pooling": source.pooling,
        "normalize": source.normalize,
        "pooled_in_graph": False,
        "max_seq_length": source.max_seq_length,
        "dimensions": source.dimensions,
        "inputs": inputs,
        "output": ONNX_OUTPUT,
        "lowercase": source.lowercase,
        "prompts": source.prompts,
        "default_prompt_name": source.default_prompt_name,
        "files": sorted(p.name for p in out.iterdir() if p.name.startswith("model.onnx")) + tokenizer_files,
        "validation": {"skipped": _SKIPPED},
    }


def _smoke(folder: Path, pooling: str, normalize: bool, dimensions: int) -> list[str]:
    """Load the graph, check its inputs and output, embed one sentence; returns the graph's input names."""
    import numpy as np
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types with the reason
        raise ConversionError(f"onnxruntime cannot load the graph: {str(exc).splitlines()[0][:300]}") from None
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    unknown = [n for n in inputs if n not in ("input_ids", "attention_mask", "token_type_ids")]
    if unknown or "input_ids" not in inputs or "attention_mask" not in inputs:
        raise ConversionError(f"the graph takes {inputs}; ortserve feeds input_ids, attention_mask, token_type_ids")
    if ONNX_OUTPUT not in outputs:
        raise ConversionError(f"the graph gives {outputs}, not the token embeddings ({ONNX_OUTPUT}) ortserve pools")
    vectors = embed_texts(session, load_tokenizer(folder), [SMOKE_TEXT], pooling=pooling, normalize=normalize)
    if vectors.shape != (1, dimensions) or not np.isfinite(vectors).all():
        raise ConversionError(f"the smoke sentence gave vectors of shape {vectors.shape}, not (1, {dimensions})")
    return inputs
