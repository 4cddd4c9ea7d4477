"""What an embedding checkpoint is, read without torch: its encoder family (a registry of the exportable
`model_type`s, optimum-style), its pooling and normalization (modules.json, 1_Pooling/config.json, a
Normalize module; plain Hugging Face folders get mean pooling + L2), its `max_seq_length`, prompts and
dimensions. The export (embedding.py) and the validation (validate_embedding.py) both start from here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortserve.conversion.common import ConversionError
from ortserve.core.encoder import POOLING_MODES


# ---- registry of exportable encoders -----------------------------------------------------
class EncoderOnnxConfig:
    """How one family of encoders is exported: its ONNX inputs and its usable positions."""

    model_types: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    position_offset = 0  # position ids that padding_idx makes unusable (RoBERTa-like: 2)

    def max_positions(self, config: dict) -> int:
        return int(config.get("max_position_embeddings", 512)) - self.position_offset


_ENCODERS: dict[str, EncoderOnnxConfig] = {}


def register_encoder(*model_types: str):
    """Class decorator: `@register_encoder("bert", ...)` makes those config `model_type`s exportable."""

    def deco(cls: type[EncoderOnnxConfig]) -> type[EncoderOnnxConfig]:
        for model_type in model_types:
            if model_type in _ENCODERS:
                raise ValueError(f"model_type {model_type!r} is already registered")
            _ENCODERS[model_type] = cls()
        cls.model_types = model_types
        return cls

    return deco


@register_encoder("bert", "electra")
class BertOnnxConfig(EncoderOnnxConfig):
    inputs = ("input_ids", "attention_mask", "token_type_ids")


@register_encoder("distilbert")
class DistilBertOnnxConfig(EncoderOnnxConfig):
    pass


@register_encoder("roberta", "xlm-roberta", "camembert")
class RobertaOnnxConfig(EncoderOnnxConfig):
    position_offset = 2


@register_encoder("mpnet")
class MPNetOnnxConfig(EncoderOnnxConfig):
    position_offset = 2


@register_encoder("modernbert")
class ModernBertOnnxConfig(EncoderOnnxConfig):
    pass


def supported_model_types() -> list[str]:
    return sorted(_ENCODERS)


def encoder_config(model_type: str) -> EncoderOnnxConfig:
    try:
        return _ENCODERS[model_type]
    except KeyError:
        raise ConversionError(
            f"unsupported embedding model_type {model_type!r}; supported: {', '.join(supported_model_types())}"
        ) from None


# Encoder-only families we recognise as embedding checkpoints even when we cannot export them yet,
# so that task detection routes them here and the user gets the "unsupported model_type" message.
_OTHER_ENCODER_TYPES = {"albert", "deberta", "deberta-v2", "nomic_bert", "new", "xlm", "funnel", "layoutlm"}


def read_json(path: Path, kind: type = dict) -> Any:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"cannot read {path.name} in {path.parent}: {e}") from None
    if not isinstance(data, kind):
        raise ConversionError(f"{path} does not hold a JSON {kind.__name__}")
    return data


def is_embedding_checkpoint(src: Path) -> bool:
    """True for sentence-transformers folders (modules.json) and encoder-only model configs."""
    src = Path(src)
    if (src / "modules.json").is_file():
        return True
    try:
        model_type = json.loads((src / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return False
    return model_type in _ENCODERS or model_type in _OTHER_ENCODER_TYPES


# ---- reading the source --------------------------------------------------------------------
@dataclass
class EmbeddingSource:
    root: Path  # what sentence-transformers loads
    model_dir: Path  # the Hugging Face model (the Transformer module's folder)
    config: dict
    encoder: EncoderOnnxConfig
    pooling: str = "mean"
    normalize: bool = True
    max_seq_length: int = 512
    dimensions: int = 0
    lowercase: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None


def _pooling_mode(cfg: dict) -> str:
    mode = cfg.get("pooling_mode")
    if mode is None:  # the sentence-transformers < 5 layout: one boolean per mode
        legacy = {
            "cls_token": "cls",
            "mean_tokens": "mean",
            "max_tokens": "max",
            "mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
            "weightedmean_tokens": "weightedmean",
            "lasttoken": "lasttoken",
        }
        mode = [m for key, m in legacy.items() if cfg.get(f"pooling_mode_{key}")] or ["mean"]
    modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ConversionError(f"unsupported pooling {'+'.join(map(str, modes))}; supported: {', '.join(POOLING_MODES)}")
    return modes[0]


def read_source(src: Path, *, exportable: bool = True) -> EmbeddingSource:
    """Everything the export needs to know about `src`, or a one-line ConversionError. `exportable=False` (a graph
    that is already ONNX) accepts any encoder `model_type`: its inputs then come from the graph."""
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"{src} is not a folder")
    model_dir, pooling, normalize, pool_dim = src, "mean", True, None
    if (src / "modules.json").is_file():
        modules = read_json(src / "modules.json", list)
        kinds = [(str(m.get("type", "")).rsplit(".", 1)[-1], m.get("path", "")) for m in modules if isinstance(m, dict)]
        unsupported = [k for k, _ in kinds if k not in ("Transformer", "Pooling", "Normalize")]
        if unsupported or not kinds or kinds[0][0] != "Transformer":
            raise ConversionError(
                f"unsupported sentence-transformers modules {[k for k, _ in kinds]}; "
                "supported: Transformer, then Pooling, then optional Normalize"
            )
        model_dir = src / kinds[0][1]
        normalize = any(k == "Normalize" for k, _ in kinds)
        pooling_dirs = [p for k, p in kinds if k == "Pooling"]
        if not pooling_dirs:
            raise ConversionError("the sentence-transformers modules have no Pooling module")
        pool_cfg = read_json(src / pooling_dirs[0] / "config.json")
        pooling = _pooling_mode(pool_cfg)
        pool_dim = pool_cfg.get("embedding_dimension", pool_cfg.get("word_embedding_dimension"))
    if not (model_dir / "config.json").is_file():
        raise ConversionError(f"no config.json in {model_dir}: not a Hugging Face model folder")
    config = read_json(model_dir / "config.json")
    model_type = str(config.get("model_type"))
    encoder = encoder_config(model_type) if exportable or model_type in _ENCODERS else EncoderOnnxConfig()

    st_cfg = {}
    for folder in (model_dir, src):
        if (folder / "sentence_bert_config.json").is_file():
            st_cfg = read_json(folder / "sentence_bert_config.json")
            break
    max_len = st_cfg.get("max_seq_length")
    if not max_len:
        max_len = encoder.max_positions(config)
        tok_cfg = model_dir / "tokenizer_config.json"
        model_max = read_json(tok_cfg).get("model_max_length") if tok_cfg.is_file() else None
        if isinstance(model_max, int) and 0 < model_max < max_len:
            max_len = model_max
    meta_path = src / "config_sentence_transformers.json"
    st_meta = read_json(meta_path) if meta_path.is_file() else {}
    hidden = int(config.get("hidden_size") or config.get("dim") or 0)
    return EmbeddingSource(
        root=src,
        model_dir=model_dir,
        config=config,
        encoder=encoder,
        pooling=pooling,
        normalize=normalize,
        max_seq_length=int(max_len),
        dimensions=int(pool_dim or hidden),
        lowercase=bool(st_cfg.get("do_lower_case")),
        prompts=dict(st_meta.get("prompts") or {}),
        default_prompt_name=st_meta.get("default_prompt_name") or None,
    )


# ---- inputs for checking an export -----------------------------------------------------------
def dummy_inputs(names: Sequence[str], vocab_size: int, batch: int, seq: int, seed: int = 0) -> dict:
    """Random int64 torch inputs; the last row of a batch is half padding, so the mask is exercised."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, max(4, vocab_size), (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    if batch > 1:
        mask[-1, max(1, seq // 2) :] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {n: feeds[n] for n in names}
