"""`ortserve convert` on a tiny random Qwen2.5-VL: the ONNX parts and genai_config sections
onnxruntime-genai reads, the figures checked against PyTorch, and ready genai folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def vision_store(vision_store_home):
    from ortserve.core.store import ModelStore

    return ModelStore(vision_store_home / "models")


@pytest.fixture(scope="session")
def tiny_vlm(vision_store):
    return vision_store.get("tiny-vlm")


def test_manifest_records_modalities_and_validation(tiny_vlm):
    manifest = tiny_vlm.manifest
    assert manifest["task"] == "chat" and manifest["modalities"] == ["text", "image"]
    assert manifest["model_type"] == "qwen2_5_vl" and manifest["family"] == "hermes"
    assert manifest["validated"] is True and manifest["builder_options"]["exclude_embeds"] is True
    figures = manifest["validation"]
    assert figures["greedy_match"] == "4/4"  # one image (twice), two images, text only
    assert figures["image_features_cosine_min"] >= 0.9999
    assert figures["image_features_max_abs_diff"] < 1e-4
    assert figures["pixel_values_max_abs_diff"] < 1e-4
    assert figures["grid_match"] and figures["prompt_ids_match"] and figures["template_match"]


def test_genai_config_names_what_the_onnx_files_have(tiny_vlm, vlm_checkpoint):
    import onnx

    folder = tiny_vlm.folder
    model = json.loads((folder / "genai_config.json").read_text())["model"]
    source = json.loads((vlm_checkpoint / "config.json").read_text())
    assert model["type"] == "qwen2_5_vl"
    assert model["image_token_id"] == source["image_token_id"]
    assert model["vision_start_token_id"] == source["vision_start_token_id"]
    assert (folder / model["vision"]["config_filename"]).is_file()

    def io_of(filename):
        graph = onnx.load(str(folder / filename), load_external_data=False).graph
        kinds = {t.name: t.type.tensor_type.elem_type for t in [*graph.input, *graph.output]}
        return {t.name for t in graph.input}, {t.name for t in graph.output}, kinds

    inputs, outputs, kinds = io_of(model["vision"]["filename"])
    assert inputs == set(model["vision"]["inputs"].values()) == {"pixel_values", "image_grid_thw"}
    assert outputs == set(model["vision"]["outputs"].values()) == {"image_features"}
    assert kinds["image_grid_thw"] == onnx.TensorProto.INT64 and kinds["pixel_values"] == onnx.TensorProto.FLOAT
    inputs, outputs, kinds = io_of(model["embedding"]["filename"])
    assert inputs == set(model["embedding"]["inputs"].values()) == {"input_ids", "image_features"}
    assert outputs == set(model["embedding"]["outputs"].values()) == {"inputs_embeds"}
    assert kinds["input_ids"] == onnx.TensorProto.INT64
    inputs, _, _ = io_of(model["decoder"]["filename"])
    assert "inputs_embeds" in inputs and "input_ids" not in inputs  # the builder's exclude_embeds decoder


@pytest.mark.parametrize("grid", [(1, 2, 2), (1, 4, 10), (1, 8, 8), (1, 10, 6)])
def test_vision_onnx_equals_pytorch_on_grids_it_was_not_traced_with(tiny_vlm, vlm_checkpoint, grid):
    """Window attention for any grid (1, 4 or 6 windows, partial windows), not only the traced 4x6."""
    import onnxruntime as ort
    import torch
    import transformers

    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(vlm_checkpoint, dtype=torch.float32)
    session = ort.InferenceSession(str(tiny_vlm.folder / "vision.onnx"), providers=["CPUExecutionProvider"])
    pixels = torch.randn(int(np.prod(grid)), 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(sum(grid)))
    thw = torch.tensor([grid])
    with torch.no_grad():
        expected = model.model.visual(pixels, grid_thw=thw).pooler_output.numpy()
    ours = session.run(None, {"pixel_values": pixels.numpy(), "image_grid_thw": thw.numpy()})[0]
    assert ours.shape == expected.shape == (int(np.prod(grid)) // 4, model.config.text_config.hidden_size)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-4)


def test_int4_decoder_is_validated_by_logits(tmp_path, vlm_checkpoint):
    # no --precision: int4 is the cpu default
    assert run_cli(tmp_path, "convert", str(vlm_checkpoint), "--name", "tiny-vlm-int4", "--quiet") == 0
    manifest = json.loads((tmp_path / "models" / "tiny-vlm-int4" / "manifest.json").read_text())
    assert manifest["precision"] == "int4" and manifest["modalities"] == ["text", "image"]
    assert manifest["validation"]["logits_cosine_min"] >= 0.99
    assert "greedy_match" not in manifest["validation"]


def test_a_wrong_vision_encoder_fails_validation(tmp_path, tiny_vlm, vlm_checkpoint):
    """Validation can fail: the vision encoder of another random checkpoint is caught by its features."""
    import torch
    import transformers

    from ortserve.conversion.common import Progress, ValidationFailedError
    from ortserve.conversion.demo_vlm import build_tiny_vlm_checkpoint
    from ortserve.conversion.vision_export import export_vision
    from ortserve.conversion.vision_validate import validate_vision

    other = build_tiny_vlm_checkpoint(tmp_path / "other", seed=1)
    folder = tmp_path / "built"
    shutil.copytree(tiny_vlm.folder, folder)
    export_vision(transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(other, dtype=torch.float32), folder)
    with pytest.raises(ValidationFailedError) as info:
        validate_vision(vlm_checkpoint, folder, precision="fp32", progress=Progress(quiet=True))
    assert info.value.figures["image_features_cosine_min"] < 0.9999
    assert "image features cosine" in str(info.value)


def test_vision_models_are_cpu_only_for_now_and_nothing_is_left(tmp_path, vlm_checkpoint, capsys):
    assert run_cli(tmp_path, "convert", str(vlm_checkpoint), "--device", "cuda", "--precision", "fp16") != 0
    assert "cpu only" in capsys.readouterr().err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_detect_task_of_a_vlm_checkpoint_is_chat(vlm_checkpoint):
    from ortserve.conversion.source import detect_task, is_genai_folder

    assert detect_task(vlm_checkpoint) == "chat"
    assert not is_genai_folder(vlm_checkpoint)


def test_a_ready_genai_folder_is_registered_without_conversion(tmp_path, tiny_vlm):
    ready = tmp_path / "published"
    shutil.copytree(tiny_vlm.folder, ready, ignore=shutil.ignore_patterns("manifest.json"))
    home = tmp_path / "home"
    assert run_cli(home, "convert", str(ready), "--name", "prebuilt-vlm", "--quiet") == 0
    manifest = json.loads((home / "models" / "prebuilt-vlm" / "manifest.json").read_text())
    assert manifest["validated"] is False and manifest["prebuilt"] is True
    assert "no PyTorch original" in manifest["validation"]["skipped"]
    assert manifest["modalities"] == ["text", "image"] and manifest["model_type"] == "qwen2_5_vl"
    assert manifest["context_length"] == tiny_vlm.manifest["context_length"]
    assert (home / "models" / "prebuilt-vlm" / "vision.onnx").is_file()


def test_a_broken_genai_folder_is_refused_and_nothing_is_left(tmp_path, tiny_vlm, capsys):
    ready = tmp_path / "published"
    shutil.copytree(tiny_vlm.folder, ready, ignore=shutil.ignore_patterns("manifest.json", "processor_config.json"))
    home = tmp_path / "home"
    assert run_cli(home, "convert", str(ready), "--name", "broken", "--quiet") != 0
    assert "processor_config.json" in capsys.readouterr().err
    assert not (home / "models" / "broken").exists()


@pytest.mark.parametrize(
    "preprocessor",
    [
        {"min_pixels": 3136, "max_pixels": 12845056},  # Qwen2.5-VL's own: 65,536 patches an image
        {"size": {"shortest_edge": 3136, "longest_edge": 12845056}},  # the same, as transformers 5 writes it
    ],
)
def test_images_are_sized_so_the_encoders_square_masks_fit_in_memory(preprocessor):
    from ortserve.conversion.vision import MAX_IMAGE_TOKENS, processor_config

    config = processor_config(preprocessor, {"patch_size": 14, "spatial_merge_size": 2})
    (resize,) = [
        t["operation"]["attrs"] for t in config["processor"]["transforms"] if t["operation"]["name"] == "resize"
    ]
    assert resize["max_pixels"] == 28 * 28 * MAX_IMAGE_TOKENS == 1_003_520 and resize["min_pixels"] == 3136
    small = processor_config({"min_pixels": 3136, "max_pixels": 12544}, {})  # a smaller limit is kept
    assert [t for t in small["processor"]["transforms"] if t["operation"]["name"] == "resize"][0]["operation"]["attrs"][
        "max_pixels"
    ] == 12544
