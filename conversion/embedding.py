"""Embedding models: export a Hugging Face / sentence-transformers encoder to ONNX.

The output folder is self-contained, served with onnxruntime + `tokenizers` only:
    model.onnx [+ model.onnx.data]  in: int64 [batch, sequence] input_ids, attention_mask (+ token_type_ids
                                    for BERT-like types; the manifest's `inputs`)
                                    out: float32 [batch, sequence, dimensions] last_hidden_state
    tokenizer.json                  with truncation to max_seq_length and batch-longest right padding set
    tokenizer_config.json, special_tokens_map.json   copied when the source has them

Pooling is *not* in the graph (`pooled_in_graph: False`): the server pools in numpy with
`ortserve.core.encoder` (`pool`, `embed_texts`, re-exported here), the code the conversion validates.
One graph serves every pooling mode, and pooling costs microseconds next to the encoder.

Pooling and normalization come from modules.json, 1_Pooling/config.json and a Normalize module. A plain
Hugging Face folder gets mean pooling + L2 normalization (mean is sentence-transformers' own default
for such folders; OpenAI-style clients expect unit vectors). `max_seq_length` comes from
sentence_bert_config.json, else max_position_embeddings (minus 2 for RoBERTa-like position ids),
capped by the tokenizer's model_max_length.

Export: `torch.onnx.export(dynamo=True)` with dynamic batch and sequence axes (the legacy tracer is off
by 0.05-0.12 on sequence lengths other than the traced one); then each BERT-style attention block becomes
one com.microsoft.Attention node (encoder_fusion.py: onnxruntime's own fusions miss the dynamo pattern),
and ONNX Runtime is checked against PyTorch on several shapes. torch/transformers are imported only inside
functions; the serving pieces live in the server (which never imports this package).
Quantized precisions (quantize.py) are made from the fp32 export; "int8" is calibrated on the converted
tokenizer's batches of `quantize_calibrated.CALIBRATION_TEXTS` (`calibration_feeds`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ortserve.conversion.common import ConversionError, Progress, quiet_exporter
from ortserve.conversion.embedding_source import (  # noqa: F401  (is_embedding_checkpoint, read_source: re-exported)
    EmbeddingSource,
    dummy_inputs,
    is_embedding_checkpoint,
    read_json,
    read_source,
)
from ortserve.core.encoder import (  # noqa: F401  (embed_texts, load_tokenizer, pool: re-exported)
    ONNX_OUTPUT,
    embed_texts,
    load_tokenizer,
    pool,
)

SUPPORTED_PRECISIONS = ("fp32", "fp16", "int8")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# ---- export --------------------------------------------------------------------------------
def export_onnx(source: EmbeddingSource, onnx_path: Path):
    """Export the encoder's last_hidden_state to `onnx_path`; return the exported torch module (for checks)."""
    import torch
    import transformers

    try:
        model = transformers.AutoModel.from_pretrained(
            source.model_dir, dtype=torch.float32, attn_implementation="eager"
        ).eval()
    except Exception as e:  # missing/corrupt weights, bad config
        raise ConversionError(f"cannot load the model in {source.model_dir}: {_first_line(e)}") from e

    names = source.encoder.inputs

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state

    wrapper = LastHiddenState(model).eval()
    vocab = int(source.config.get("vocab_size", 1000))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    try:
        with quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                (),
                kwargs=dummy_inputs(names, vocab, 2, 16),
                dynamo=True,
                verbose=False,
                dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                output_names=[ONNX_OUTPUT],
                optimize=True,
            )
            program.save(str(onnx_path))
    except Exception as e:
        raise ConversionError(f"ONNX export of {source.config.get('model_type')} failed: {_first_line(e)}") from e
    fuse_exported_attention(source, onnx_path)
    return wrapper


def fuse_exported_attention(source: EmbeddingSource, onnx_path: Path) -> int:
    """Attention blocks -> com.microsoft.Attention (encoder_fusion.py), kept only when onnxruntime gives the
    unfused graph's outputs on padded batches of several shapes; return how many blocks were fused."""
    from ortserve.conversion.encoder_fusion import fuse_attention_checked

    vocab = int(source.config.get("vocab_size", 1000))
    shapes = ((1, 7), (3, 29), (4, min(source.max_seq_length, 128)))
    feeds = [
        {k: v.numpy() for k, v in dummy_inputs(source.encoder.inputs, vocab, batch, seq, seed).items()}
        for seed, (batch, seq) in enumerate(shapes, start=11)
    ]
    return fuse_attention_checked(onnx_path, feeds)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def write_tokenizer(source: EmbeddingSource, out: Path) -> list[str]:
    """Copy the tokenizer files, with truncation to max_seq_length and batch-longest padding set in tokenizer.json."""
    from tokenizers import Tokenizer

    tok_path = source.model_dir / "tokenizer.json"
    if not tok_path.is_file():
        tok_path = source.root / "tokenizer.json"
    if tok_path.is_file():
        tok = Tokenizer.from_file(str(tok_path))
    else:  # build one from the slow tokenizer files
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(source.model_dir).backend_tokenizer
        except Exception as e:
            why = _first_line(e)
            raise ConversionError(f"no tokenizer.json in {source.model_dir} and none could be built: {why}") from e
    pad_token, pad_id = _pad_token(source, tok)
    tok.enable_truncation(source.max_seq_length)
    tok.enable_padding(direction="right", pad_id=pad_id, pad_type_id=0, pad_token=pad_token)
    tok.save(str(out / "tokenizer.json"))
    files = ["tokenizer.json"]
    for name in TOKENIZER_FILES[1:]:
        for folder in (source.model_dir, source.root):
            if (folder / name).is_file():
                shutil.copyfile(folder / name, out / name)
                files.append(name)
                break
    return files


def _pad_token(source: EmbeddingSource, tok) -> tuple[str, int]:
    """The pad token: special_tokens_map / tokenizer_config, else tokenizer.json's, else config.pad_token_id."""
    files = [source.model_dir / n for n in ("special_tokens_map.json", "tokenizer_config.json")]
    values = [read_json(p).get("pad_token") for p in files if p.is_file()] + [(tok.padding or {}).get("pad_token")]
    for token in (v.get("content") if isinstance(v, dict) else v for v in values):
        if isinstance(token, str) and tok.token_to_id(token) is not None:
            return token, tok.token_to_id(token)
    pad_id = source.config.get("pad_token_id")
    pad_id = pad_id if isinstance(pad_id, int) else 0
    return tok.id_to_token(pad_id) or "[PAD]", pad_id


def calibration_feeds(source: EmbeddingSource, out: Path, batch: int = 16) -> list[dict]:
    """The calibration texts (quantize_calibrated.CALIBRATION_TEXTS) as the model's padded input batches,
    tokenized as the server does (the converted tokenizer, the default prompt, lowercasing)."""
    from ortserve.conversion.quantize_calibrated import CALIBRATION_TEXTS
    from ortserve.core.encoder import EncoderTokenizer, length_batches, make_feeds

    prompt = (source.prompts or {}).get(source.default_prompt_name or "")
    encoder = EncoderTokenizer.create(load_tokenizer(out), prompt=prompt, lowercase=source.lowercase)
    sequences = encoder.encode_texts(CALIBRATION_TEXTS, truncate=True)
    batches = length_batches([len(s) for s in sequences], batch, batch * encoder.max_length)
    names = list(source.encoder.inputs)
    return [make_feeds([sequences[i] for i in rows], names, encoder.pad_id) for rows in batches]


def convert_embedding(
    src: Path, out: Path, *, precision: str, device: str, progress: Progress, validate: bool = True
) -> dict:
    """Export the HF/sentence-transformers checkpoint in `src` into the (existing, empty) folder `out`.

    Returns the manifest fields to record. Raises ConversionError (one-line message) for unsupported
    or corrupt sources, ValidationFailedError when the figures miss the bar (only if `validate`).
    """
    if precision not in SUPPORTED_PRECISIONS:
        raise ConversionError(f"unsupported precision {precision!r}; supported: {', '.join(SUPPORTED_PRECISIONS)}")
    source = read_source(Path(src))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".export"
    work.mkdir(exist_ok=True)
    figures: dict[str, Any] = {}
    try:
        fp32_path = (out if precision == "fp32" else work) / "model.onnx"
        with progress.step(f"export {source.config.get('model_type')} to ONNX"):
            module = export_onnx(source, fp32_path)
            if validate:  # several batch sizes and sequence lengths: the axes really are dynamic
                from ortserve.conversion.validate_embedding import check_export

                figures.update(check_export(module, fp32_path, source, progress=progress))
            del module
        tokenizer_files = write_tokenizer(source, out)
        if precision != "fp32":
            from ortserve.conversion.quantize import quantize_model

            with progress.step(f"quantize to {precision}"):
                calibration = calibration_feeds(source, out)
                quantize_model(fp32_path, out / "model.onnx", precision, calibration=calibration)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result: dict[str, Any] = {
        "task": "embedding",
        "architecture": (source.config.get("architectures") or [source.config.get("model_type")])[0],
        "model_type": source.config.get("model_type"),
        "precision": precision,
        "device": device,
        "pooling": source.pooling,
        "normalize": source.normalize,
        "pooled_in_graph": False,
        "max_seq_length": source.max_seq_length,
        "dimensions": source.dimensions,
        "inputs": list(source.encoder.inputs),
        "output": ONNX_OUTPUT,
        "lowercase": source.lowercase,
        "prompts": source.prompts,
        "default_prompt_name": source.default_prompt_name,
        "files": sorted(p.name for p in out.iterdir() if p.name.startswith("model.onnx")) + tokenizer_files,
        "validation": figures,
    }
    if validate:
        from ortserve.conversion.validate_embedding import validate_embedding

        with progress.step("validate against sentence-transformers"):
            figures.update(validate_embedding(source, out, result, progress=progress))
    return result
