"""`ortserve convert`: SOURCE -> models/NAME/ (ONNX + manifest) + models/NAME.toml (its settings).

torch and transformers are imported only inside `run()`'s steps, so the rest of
the CLI starts fast and the server never loads them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ortserve.conversion.common import ConversionError, Progress
from ortserve.conversion.registry import PRECISIONS, check_precision
from ortserve.core.devices import BUILD_DEVICES
from ortserve.core.model_config import ModelConfig
from ortserve.core.store import ModelStore, check_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="a local Hugging Face model folder, a hub id (owner/name), or a local "
        "onnxruntime-genai folder (genai_config.json + ONNX), registered as it is",
    )
    parser.add_argument("--name", help="name in the store (default: the source's last path part, lower-case)")
    parser.add_argument("--task", choices=("chat", "embedding"), help="default: detected from the checkpoint")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: int4 for chat, fp32 for embeddings (cpu)")
    parser.add_argument("--device", choices=BUILD_DEVICES, default="cpu", help="the device the model is built for")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--force", action="store_true", help="replace a model of the same name")
    parser.add_argument("--no-validate", action="store_true", help="register even without checking against PyTorch")
    parser.add_argument("--quiet", action="store_true", help="print only errors and the result")


def convert(
    source: str,
    store: ModelStore,
    *,
    name: str | None = None,
    task: str | None = None,
    precision: str | None = None,
    device: str = "cpu",
    revision: str | None = None,
    force: bool = False,
    validate: bool = True,
    progress: Progress | None = None,
    config: ModelConfig | None = None,
    source_label: str | None = None,
) -> dict:
    """Convert SOURCE into the store under NAME; returns the manifest. Nothing is left behind on failure.
    `source_label`: what the manifest records as the source instead of SOURCE (a folder that will not last)."""
    from ortserve.conversion.source import default_name, detect_task, is_genai_folder, resolve_source

    progress = progress or Progress()
    name = check_name(name or default_name(source))
    if store.exists(name) and not force:
        raise ConversionError(f"model '{name}' already exists; use --force to replace it or --name to pick another")
    store.check_not_an_alias(name)
    if task is not None:
        precision = check_precision(task, device, precision)
    shared = [e.name for e in store.entries() if e.config.weights == name]  # `cp NAME X`: X serves NAME's weights
    src = resolve_source(source, progress, revision)
    if is_genai_folder(src):
        manifest = _register_ready(source, src, store, name, task, force, progress, config)
        _note_shared(shared, progress)
        return manifest
    task = task or detect_task(src)
    precision = check_precision(task, device, precision)
    progress.info(f"converting {source} -> '{name}' ({task}, {precision}, {device})")
    with store.staging(name, force=force) as out:
        if task == "chat" and _is_vision(src):
            from ortserve.conversion.vision import convert_vision

            manifest = convert_vision(
                src, out, precision=precision, device=device, progress=progress, validate=validate
            )
        elif task == "chat":
            from ortserve.conversion.chat import convert_chat

            manifest = convert_chat(src, out, precision=precision, device=device, progress=progress, validate=validate)
        else:
            from ortserve.conversion.embedding import convert_embedding

            manifest = convert_embedding(
                src, out, precision=precision, device=device, progress=progress, validate=validate
            )
        manifest = {**manifest, "source": source_label or source, "validated": validate}
        store.add(name, out, manifest, config or ModelConfig(device=device if device != "cpu" else "auto"))
    progress.info(f"'{name}' is ready in {store.models_dir / name}")
    _note_shared(shared, progress)
    return manifest


def _note_shared(shared: list[str], progress: Progress) -> None:
    """Said even with --quiet: other names now serve the weights just replaced."""
    if shared:
        verb = "shares" if len(shared) == 1 else "share"
        print(
            f"note: {', '.join(shared)} {verb} these weights and now serve the new ones",
            file=progress.stream,
            flush=True,
        )


def _is_vision(src: Path) -> bool:
    from ortserve.conversion.registry import VISION_ARCHITECTURES
    from ortserve.conversion.source import read_config

    return any(a in VISION_ARCHITECTURES for a in read_config(src).get("architectures") or [])


def _register_ready(
    source: str,
    src: Path,
    store: ModelStore,
    name: str,
    task: str | None,
    force: bool,
    progress: Progress,
    config: ModelConfig | None,
) -> dict:
    """An onnxruntime-genai folder (genai_config.json + ONNX files) is added as it is, unvalidated."""
    from ortserve.conversion.vision_ready import register_genai_folder

    if task not in (None, "chat"):
        raise ConversionError(f"{source}: an onnxruntime-genai folder is a chat model, not {task}")
    progress.info(f"registering the onnxruntime-genai folder {source} -> '{name}' (no conversion)")
    with store.staging(name, force=force) as out:
        manifest = register_genai_folder(src, out, progress=progress)
        manifest = {**manifest, "source": source, "validated": False}
        device = manifest["device"]
        store.add(name, out, manifest, config or ModelConfig(device=device if device != "cpu" else "auto"))
    progress.info(f"'{name}' is ready in {store.models_dir / name} (not validated: already converted)")
    return manifest


def run(args: argparse.Namespace, store: ModelStore) -> int:
    convert(
        args.source,
        store,
        name=args.name,
        task=args.task,
        precision=args.precision,
        device=args.device,
        revision=args.revision,
        force=args.force,
        validate=not args.no_validate,
        progress=Progress(quiet=args.quiet),
    )
    return 0
