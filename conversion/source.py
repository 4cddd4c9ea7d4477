"""Resolve SOURCE (a local Hugging Face folder or a hub id) and detect its task."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ortserve.conversion.common import ConversionError, Progress
from ortserve.conversion.registry import VISION_ARCHITECTURES

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a conversion reads: configs, tokenizers, templates, weights. Never optimizer states or other formats.
_ALLOW = [
    "*.json",
    "*.safetensors",
    "*.jinja",
    "*.model",
    "*.txt",
    "*.tiktoken",
    "1_Pooling/*",
    "2_Normalize/*",
    "*.py",
]

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def resolve_source(source: str, progress: Progress, revision: str | None = None) -> Path:
    """A local folder is used as it is; a hub id is downloaded (cached by huggingface_hub)."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConversionError(f"{source}: not a folder (SOURCE is a Hugging Face model folder or a hub id)")
        if revision is not None:  # a folder has one revision: the files in it
            raise ConversionError(f"{source}: --revision is for hub ids only, not local folders")
        return path.resolve()
    if not _HUB_ID.match(source):
        raise ConversionError(f"{source}: no such folder, and not a hub id of the form owner/name")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    with progress.step(f"download {source}"):
        try:
            return Path(snapshot_download(source, revision=revision, allow_patterns=_ALLOW))
        except RepositoryNotFoundError:
            raise ConversionError(f"{source}: no such model on the hub (or it is gated: run `hf auth login`)") from None
        except LocalEntryNotFoundError as exc:  # not in the cache, and the hub did not answer (or may not be asked)
            if constants.HF_HUB_OFFLINE:
                raise ConversionError(
                    f"{source}: no such local folder, and not in the Hugging Face cache while "
                    "HF_HUB_OFFLINE is set (unset it to download)"
                ) from None
            why = f"{type(exc.__cause__).__name__}: {exc.__cause__}" if exc.__cause__ else "no answer"
            raise ConversionError(
                f"{source}: no such local folder, and the Hugging Face hub could not be reached "
                f"({why}); check the connection (or HF_ENDPOINT, HTTPS_PROXY), or convert a "
                "local folder"
            ) from None
        except (HfHubHTTPError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConversionError(f"{source}: download failed: {first}") from None


def read_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise ConversionError(f"{src}: no config.json (not a Hugging Face model folder)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ConversionError(f"{path}: has no model_type (not a transformers config)")
    return config


def detect_task(src: Path) -> str:
    """'embedding' for sentence-transformers folders and encoder-only models, 'chat' for decoders."""
    config = read_config(src)
    if (src / "modules.json").is_file():  # sentence-transformers, decoder-based embedders included
        return "embedding"
    if any(a.endswith(_CAUSAL_SUFFIXES) or a in VISION_ARCHITECTURES for a in config.get("architectures") or []):
        return "chat"
    from ortserve.conversion.embedding_source import is_embedding_checkpoint

    if is_embedding_checkpoint(src):
        return "embedding"
    raise ConversionError(
        f"{src}: cannot tell the task of model_type '{config['model_type']}'; pass --task chat or --task embedding"
    )


def is_genai_folder(src: Path) -> bool:
    """A folder onnxruntime-genai already runs (genai_config.json beside its ONNX files), as published
    for Phi-3.5-vision and others: registered as it is, without conversion."""
    return (src / "genai_config.json").is_file() and any(src.glob("*.onnx"))


def default_name(source: str) -> str:
    path = Path(os.path.abspath(Path(source.rstrip("/\\")).expanduser()))  # `.` and `..`: the folders they are
    return path.name.lower() or "model"
