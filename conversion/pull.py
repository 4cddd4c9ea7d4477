"""`ortserve pull REPO[:VARIANT]`: a model that is already ONNX, from the Hugging Face hub, into the store. No torch.

The repository's file listing says what it holds (`pull_variants`): onnxruntime-genai builds (one folder
each) or a sentence-transformers repository's `onnx/model*.onnx`. One variant is picked for the device
(or named), only its files are downloaded, into the Hugging Face cache (huggingface_hub's progress bars
with size, speed and time left; an interrupted download resumes where it stopped on the next pull), then
staged in the store, loaded once with a smoke generation or embedding, and registered. The manifest
records the repository, the commit it came from, the variant and `validated: false`. A failure or Ctrl-C
at any point leaves nothing in the store (its staging rules); the download stays in the cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ortserve.conversion.common import ConversionError, Progress
from ortserve.conversion.pull_variants import GENAI, Variant, find_variants, pick, split_reference
from ortserve.core.devices import BUILD_DEVICES
from ortserve.core.model_config import ModelConfig
from ortserve.core.sizes import human_size
from ortserve.core.store import ModelStore, check_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="REPO[:VARIANT]", help="a hub id (owner/name), with a variant to pick one")
    parser.add_argument("--name", help="name in the store (default: the repository's name, lower-case)")
    parser.add_argument(
        "--device", choices=BUILD_DEVICES, help="pick the build for this device (default: what auto picks here)"
    )
    parser.add_argument("--revision", help="hub revision (branch, tag or commit; default main)")
    parser.add_argument("--list", action="store_true", help="list the repository's variants with their sizes")
    parser.add_argument("--force", action="store_true", help="replace a model of the same name")
    parser.add_argument("--quiet", action="store_true", help="print only errors and the result")


def run(args: argparse.Namespace, store: ModelStore) -> int:
    progress = Progress(quiet=args.quiet)
    if args.list:
        print(list_variants(args.model, device=args.device, revision=args.revision))
        return 0
    pull(
        args.model,
        store,
        name=args.name,
        device=args.device,
        revision=args.revision,
        force=args.force,
        progress=progress,
    )
    return 0


def default_name(repo: str) -> str:
    name = repo.rsplit("/", 1)[-1].lower()
    return name.removesuffix("-onnx") or name


def _auto_device() -> str:
    from ortserve.core.devices import resolve_device

    return resolve_device("auto", "generation")


def _hub_error(repo: str, exc: Exception) -> ConversionError | None:
    """A one-line message for what huggingface_hub raised while listing or downloading; None: not a hub problem."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    if isinstance(exc, OfflineModeIsEnabled) or (isinstance(exc, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE):
        return ConversionError(f"{repo}: HF_HUB_OFFLINE is set, so the hub cannot be asked (unset it to pull)")
    if isinstance(exc, GatedRepoError):
        return ConversionError(f"{repo}: a gated model; accept its terms on the hub and run `hf auth login`")
    if isinstance(exc, RepositoryNotFoundError):
        return ConversionError(f"{repo}: no such model on the hub at {endpoint} (or it is private: `hf auth login`)")
    if isinstance(exc, RevisionNotFoundError):
        return ConversionError(f"{repo}: no such revision on the hub")
    if isinstance(exc, HfHubHTTPError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ConversionError(f"{repo}: the hub answered with an error: {first}")
    # httpx's connection and timeout errors (a full disk, an OSError, is not the hub's: main() says it)
    transport = any(c.__name__ in ("TransportError", "RequestError") for c in type(exc).__mro__)
    if transport or isinstance(exc, LocalEntryNotFoundError):
        cause = exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ else exc
        why = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        return ConversionError(
            f"{repo}: cannot reach the Hugging Face hub at {endpoint} ({why}); check the connection "
            "(or HF_ENDPOINT, HTTPS_PROXY) and run the same command again: a download resumes where it stopped"
        )
    return None


def _listing(repo: str, revision: str | None) -> tuple[str, dict[str, int]]:
    """The commit `revision` names, and the repository's files at it with their sizes."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:  # huggingface_hub's errors and httpx's, each said in one line
        error = _hub_error(repo, exc)
        if error is None:
            raise
        raise error from None
    sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    return str(info.sha), sizes


def _variants(repo: str, revision: str | None) -> tuple[str, list[Variant]]:
    sha, sizes = _listing(repo, revision)
    variants = find_variants(sizes)
    if not variants:
        raise ConversionError(
            f"{repo}: nothing ortserve can serve as it is (no genai_config.json folder with ONNX files, no "
            f"onnx/model*.onnx beside a sentence-transformers config); convert it instead: ortserve convert {repo}"
        )
    return sha, variants


def list_variants(reference: str, *, device: str | None = None, revision: str | None = None) -> str:
    """The table `pull --list` prints: every variant, its device, precision and size; `*` marks the pick."""
    repo, wanted = split_reference(reference)
    sha, variants = _variants(repo, revision)
    target = device or _auto_device()
    chosen, why = pick(variants, target, wanted, repo)
    rows = [("VARIANT", "DEVICE", "PRECISION", "SIZE", "")]
    rows += [(v.name or ".", v.device, v.precision, human_size(v.size), "*" if v == chosen else "") for v in variants]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{repo} at {sha[:12]}: {variants[0].kind}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"* what `ortserve pull {repo}` takes here: {why}")
    return "\n".join(lines)


def _download(repo: str, sha: str, variant: Variant, progress: Progress) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    if progress.quiet:
        disable_progress_bars()
    with progress.step(f"download {repo} {variant.name or '.'} ({len(variant.files)} files)"):
        try:
            return Path(
                _interruptible(lambda: snapshot_download(repo, revision=sha, allow_patterns=list(variant.files)))
            )
        except Exception as exc:
            error = _hub_error(repo, exc)
            if error is None:
                raise
            raise error from None


def _interruptible(work: Callable[[], Any]) -> Any:
    """`work()` on a thread of its own, so that Ctrl-C stops the process at once. huggingface_hub downloads on a
    thread pool that waits for every file in flight before an exception can leave it (minutes for a big one),
    and its threads cannot be interrupted. Nothing is in the store yet; the partial files stay in the cache,
    unlocked once the process is gone, and the next pull resumes them."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the caller's thread as it is
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="ortserve-download", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        print("\ninterrupted (the next pull resumes the download)", file=sys.stderr, flush=True)
        os._exit(130)  # not sys.exit: that would wait for the download threads
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def pull(
    reference: str,
    store: ModelStore,
    *,
    name: str | None = None,
    device: str | None = None,
    revision: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Download REPO[:VARIANT]'s build for `device` and register it under NAME; returns the manifest."""
    progress = progress or Progress()
    repo, wanted = split_reference(reference)
    name = check_name(name or default_name(repo))
    if store.exists(name) and not force:
        raise ConversionError(f"model '{name}' already exists; use --force to replace it or --name to pick another")
    store.check_not_an_alias(name)
    sha, variants = _variants(repo, revision)
    target = device or _auto_device()
    variant, why = pick(variants, target, wanted, repo)
    progress.info(f"pulling {repo}:{variant.name or '.'} at {sha[:12]} -> '{name}' ({why}, {human_size(variant.size)})")
    folder = _download(repo, sha, variant, progress)
    pulled: dict[str, Any] = {"source": repo, "revision": sha, "variant": variant.name or ".", "validated": False}
    with store.staging(name, force=force) as out:
        if variant.kind == GENAI:
            from ortserve.conversion.vision_ready import register_genai_folder

            src = folder / variant.name if variant.name else folder
            label = f"{repo}:{variant.name or '.'}"
            manifest = register_genai_folder(src, out, progress=progress, link=True, label=label)
        else:
            from ortserve.conversion.embedding_ready import register_onnx_embedding

            manifest = register_onnx_embedding(
                folder, variant.files[0], out, precision=variant.precision, progress=progress
            )
        manifest = {**manifest, **pulled}
        built_for = manifest["device"]
        store.add(name, out, manifest, ModelConfig(device=built_for if built_for != "cpu" else "auto"))
    progress.info(f"'{name}' is ready in {store.models_dir / name} (not validated: pulled as published)")
    return manifest
