"""Quantization of an exported fp32 ONNX model: named presets, one entry point.

    quantize_model(src, dst, "int8", calibration=feeds)   # or "fp16", "int8-blockwise", "int8-dynamic"

Presets (all-MiniLM-L6-v2, attention fused; min cosine vs sentence-transformers over the validator's 20
sentences + the tests' 50; speed vs fp32 in-process, batch 32, 2 threads):

  fp16            float initializers and activations to float16, graph inputs/outputs kept
                  (`keep_io_types`), via onnxruntime.transformers.float16. Meant for GPUs; on CPU it runs
                  at about fp32 speed. Min cosine 0.999999. 46 MB.
  int8            (what `convert --precision int8` uses for encoders) calibrated dynamic int8:
                  quantize_calibrated.py's exact fp32 rewrites (FFN outlier channels kept in fp32,
                  SmoothQuant scales, padding rows zeroed), then per-channel dynamic int8 (MatMulInteger,
                  QAttention) + int8 embedding tables. Needs `calibration` (encoder feeds). Min cosine 0.993,
                  mean 0.998; 1.9x fp32 on short texts, 1.6x on long (bench_embeddings.py); 23 MB.
  int8-blockwise  8-bit block-wise weights for every MatMul with a constant weight (com.microsoft
                  MatMulNBits, bits=8, block 32, symmetric, accuracy_level 4 = int8 compute with per-block
                  activation scales on CPU) + int8 embedding tables. The most accurate int8 (min cosine
                  0.998 / 0.996), 24 MB, but no faster than fp32 (the int8 preset before the calibrated one).
  int8-dynamic    plain per-channel dynamic quantization (MatMulInteger, QInt8 weights, one uint8 scale per
                  activation tensor) + int8 embedding tables: as fast as `int8`, but the [CLS] and padding
                  outliers set those scales: min cosine 0.959 (mean 0.989), under the 0.99 bar.

Large models (> ~1.8 GB of weights) are written with external data (`<dst>.data`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ortserve.conversion.common import ConversionError
from ortserve.conversion.onnx_graph import EXTERNAL_DATA_BYTES, save_model, weights_bytes


@dataclass(frozen=True)
class QuantizationConfig:
    name: str
    method: Literal["fp16", "int8-blockwise", "int8-dynamic", "int8-calibrated"]
    block_size: int = 32  # int8-blockwise: weights per scale
    accuracy_level: int = 4  # int8-blockwise: MatMulNBits compute type (4 = int8 on CPU)
    per_channel: bool = True  # int8-dynamic
    quantize_embeddings: bool = True  # int8-*: Gather tables to int8
    fp16_op_block_list: tuple[str, ...] = ()  # fp16: op types kept in fp32 (beyond float16.py's defaults)
    smooth_alpha: float = 0.6  # int8-calibrated: SmoothQuant's migration strength
    outlier_channels: int = 4  # int8-calibrated: FFN channels per layer kept in fp32


PRESETS: dict[str, QuantizationConfig] = {
    "fp16": QuantizationConfig("fp16", "fp16"),
    "int8": QuantizationConfig("int8", "int8-calibrated"),
    "int8-blockwise": QuantizationConfig("int8-blockwise", "int8-blockwise"),
    "int8-dynamic": QuantizationConfig("int8-dynamic", "int8-dynamic"),
}


def get_preset(name: str) -> QuantizationConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConversionError(f"unknown quantization preset {name!r}; presets: {', '.join(PRESETS)}") from None


def quantize_model(
    src: Path, dst: Path, config: QuantizationConfig | str, *, calibration: Sequence[dict] | None = None
) -> list[Path]:
    """Write a quantized copy of the fp32 model `src` to `dst`; return the files written.

    `calibration`: the model's input feeds (numpy) for the presets that measure activations ("int8")."""
    config = get_preset(config) if isinstance(config, str) else config
    src, dst = Path(src), Path(dst)
    large = weights_bytes(src) > EXTERNAL_DATA_BYTES
    if config.method == "int8-calibrated" and not calibration:
        raise ConversionError(f"the {config.name} preset needs calibration inputs")
    try:
        with _quiet_quantizers():
            if config.method == "fp16":
                _to_fp16(src, dst, config, large)
            elif config.method == "int8-blockwise":
                _to_int8(src, dst, config, large, blockwise=True)
            elif config.method == "int8-dynamic":
                _to_int8(src, dst, config, large, blockwise=False)
            elif config.method == "int8-calibrated":
                from ortserve.conversion.quantize_calibrated import quantize_calibrated

                quantize_calibrated(
                    src,
                    dst,
                    calibration or (),
                    alpha=config.smooth_alpha,
                    outlier_channels=config.outlier_channels,
                    embeddings=config.quantize_embeddings,
                    large=large,
                )
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


def _to_fp16(src: Path, dst: Path, config: QuantizationConfig, large: bool) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    block = list(DEFAULT_OP_BLOCK_LIST) + list(config.fp16_op_block_list)
    # float16.py runs onnx shape inference first, which cannot take a > 2 GB proto
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=block, disable_shape_infer=large)
    save_model(model, dst, large)


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
    save_model(quantizer.model.model, dst, large)


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
