"""Quantization of an exported fp32 ONNX model: named presets, one entry point.

    quantize_model(src, dst, "int8")     # or "fp16", "int8-dynamic", or a QuantizationConfig

Presets (all-MiniLM-L6-v2; min cosine vs sentence-transformers over the validator's 20 sentences /
the tests' 50; sentences/s on one CPU thread, batch 32, fp32 = 73):

  fp16          float initializers and activations to float16, graph inputs/outputs kept
                (`keep_io_types`), via onnxruntime.transformers.float16. Meant for GPUs; on CPU it runs
                at about fp32 speed (64/s). Min cosine 0.999999. 46 MB.
  int8          8-bit *block-wise* weights for every MatMul with a constant weight (com.microsoft
                MatMulNBits, bits=8, block 32, symmetric, accuracy_level 4 = int8 compute with per-block
                activation scales on CPU) + int8 embedding tables (Gather -> DequantizeLinear).
                Min cosine 0.998 / 0.996, 24 MB (fp32: 91 MB), about fp32 speed (65/s).
  int8-dynamic  classic per-channel dynamic quantization (MatMulInteger, QInt8 weights, one uint8 scale
                per activation tensor) + int8 embedding tables. 2x faster (148/s), 23 MB, but the
                per-tensor activation scales hurt short texts: min cosine 0.982 / 0.959 (mean 0.992),
                below the 0.99 bar, so `--precision int8` does not use it.

Large models (> ~1.8 GB of weights) are written with external data (`<dst>.data`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ortserve.conversion.common import ConversionError

_EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass(frozen=True)
class QuantizationConfig:
    name: str
    method: Literal["fp16", "int8-blockwise", "int8-dynamic"]
    block_size: int = 32  # int8-blockwise: weights per scale
    accuracy_level: int = 4  # int8-blockwise: MatMulNBits compute type (4 = int8 on CPU)
    per_channel: bool = True  # int8-dynamic
    quantize_embeddings: bool = True  # int8-*: Gather tables to int8
    fp16_op_block_list: tuple[str, ...] = ()  # fp16: op types kept in fp32 (beyond float16.py's defaults)


PRESETS: dict[str, QuantizationConfig] = {
    "fp16": QuantizationConfig("fp16", "fp16"),
    "int8": QuantizationConfig("int8", "int8-blockwise"),
    "int8-dynamic": QuantizationConfig("int8-dynamic", "int8-dynamic"),
}


def get_preset(name: str) -> QuantizationConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConversionError(f"unknown quantization preset {name!r}; presets: {', '.join(PRESETS)}") from None


def quantize_model(src: Path, dst: Path, config: QuantizationConfig | str) -> list[Path]:
    """Write a quantized copy of the fp32 model `src` to `dst`; return the files written."""
    config = get_preset(config) if isinstance(config, str) else config
    src, dst = Path(src), Path(dst)
    large = _weights_bytes(src) > _EXTERNAL_DATA_BYTES
    try:
        with _quiet_quantizers():
            if config.method == "fp16":
                _to_fp16(src, dst, config, large)
            elif config.method == "int8-blockwise":
                _to_int8(src, dst, config, large, blockwise=True)
            elif config.method == "int8-dynamic":
                _to_int8(src, dst, config, large, blockwise=False)
            else:
                raise ConversionError(f"unknown quantization method {config.method!r}")
    except ConversionError:
        raise
    except Exception as e:
        lines = str(e).strip().splitlines()
        raise ConversionError(
            f"{config.name} quantization failed: {type(e).__name__}: {lines[0] if lines else ''}"[:300]
        ) from e
    return [p for p in (dst, dst.with_name(dst.name + ".data")) if p.exists()]


def _weights_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _save(model, dst: Path, large: bool) -> None:
    import onnx

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


def _to_fp16(src: Path, dst: Path, config: QuantizationConfig, large: bool) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    block = list(DEFAULT_OP_BLOCK_LIST) + list(config.fp16_op_block_list)
    # float16.py runs onnx shape inference first, which cannot take a > 2 GB proto
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=block, disable_shape_infer=large)
    _save(model, dst, large)


def _to_int8(src: Path, dst: Path, config: QuantizationConfig, large: bool, *, blockwise: bool) -> None:
    if not blockwise:
        _dynamic(src, dst, ["MatMul", "Gather"] if config.quantize_embeddings else ["MatMul"], config, large)
        return
    stage = src
    try:
        if config.quantize_embeddings:
            stage = dst.with_name(dst.stem + ".stage.onnx")
            _dynamic(src, stage, ["Gather"], config, large)
        _blockwise(stage, dst, config, large)
    finally:
        if stage != src:
            for p in (stage, stage.with_name(stage.name + ".data")):
                p.unlink(missing_ok=True)


def _dynamic(src: Path, dst: Path, ops: list[str], config: QuantizationConfig, large: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=ops,
        per_channel=config.per_channel,
        weight_type=QuantType.QInt8,
        use_external_data_format=large,
    )


def _blockwise(src: Path, dst: Path, config: QuantizationConfig, large: bool) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src)),
        bits=8,
        block_size=config.block_size,
        is_symmetric=True,
        accuracy_level=config.accuracy_level,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    _save(quantizer.model.model, dst, large)


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing before quantization")


@contextmanager
def _quiet_quantizers() -> Iterator[None]:
    """Keep onnxruntime's quantizers from touching the process's logging: matmul_nbits_quantizer calls
    `logging.basicConfig(level=INFO)` when imported, quantize_dynamic a root-level `logging.warning`
    (which installs a root handler) with a 'run pre-processing' hint that is about static calibration
    (and symbolic shape inference cannot even complete on dynamo-exported graphs)."""
    root, hint = logging.getLogger(), _DropPreprocessHint()
    handlers, level = list(root.handlers), root.level
    nbits = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    nbits_level = nbits.level
    nbits.setLevel(logging.WARNING)  # one INFO line per quantized node
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        nbits.setLevel(nbits_level)
