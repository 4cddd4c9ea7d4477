"""What `ortserve pull` finds in a repository's file listing and which variant it takes (conversion/pull_variants.py),
on listings shaped like the real repositories'."""

from __future__ import annotations

import pytest

from ortserve.conversion.common import ConversionError
from ortserve.conversion.pull_variants import GENAI, ONNX_EMBEDDING, find_variants, pick, split_reference

CPU4 = "cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4"
PHI = {  # as microsoft/Phi-4-mini-instruct-onnx and Phi-3-mini-4k-instruct-onnx lay out their builds
    "README.md": 9,
    "LICENSE": 1,
    f"{CPU4}/genai_config.json": 1,
    f"{CPU4}/model.onnx": 50,
    f"{CPU4}/model.onnx.data": 2_800_000_000,
    f"{CPU4}/tokenizer.json": 4,
    "cpu_and_mobile/cpu-int4-rtn-block-32/genai_config.json": 1,
    "cpu_and_mobile/cpu-int4-rtn-block-32/model.onnx": 2_700_000_000,
    "gpu/gpu-int4-rtn-block-32/genai_config.json": 1,
    "gpu/gpu-int4-rtn-block-32/model.onnx": 2_600_000_000,
    "cuda/cuda-fp16/genai_config.json": 1,
    "cuda/cuda-fp16/model.onnx": 7_000_000_000,
    "directml/directml-int4-awq-block-128/genai_config.json": 1,
    "directml/directml-int4-awq-block-128/model.onnx": 2_500_000_000,
    "webgpu/webgpu-int4/genai_config.json": 1,
    "webgpu/webgpu-int4/model.onnx": 2_400_000_000,
}
MINILM = {  # as sentence-transformers/all-MiniLM-L6-v2
    "config.json": 1,
    "modules.json": 1,
    "sentence_bert_config.json": 1,
    "1_Pooling/config.json": 1,
    "tokenizer.json": 700_000,
    "vocab.txt": 200_000,
    "model.safetensors": 90_000_000,
    "pytorch_model.bin": 90_000_000,
    "onnx/model.onnx": 90_000_000,
    "onnx/model_O4.onnx": 45_000_000,
    "onnx/model_qint8_avx512.onnx": 23_000_000,
    "openvino/openvino_model.xml": 1,
    "openvino/openvino_model.bin": 90_000_000,
}


def test_genai_builds_are_found_with_their_device_precision_and_size():
    variants = {v.name: v for v in find_variants(PHI)}
    assert set(variants) == {
        CPU4,
        "cpu_and_mobile/cpu-int4-rtn-block-32",
        "gpu/gpu-int4-rtn-block-32",
        "cuda/cuda-fp16",
        "directml/directml-int4-awq-block-128",
        "webgpu/webgpu-int4",
    }
    assert {v.kind for v in variants.values()} == {GENAI}
    devices = {name: v.device for name, v in variants.items()}
    assert devices[CPU4] == "cpu" and devices["gpu/gpu-int4-rtn-block-32"] == "cuda"
    assert devices["directml/directml-int4-awq-block-128"] == "dml" and devices["webgpu/webgpu-int4"] == "webgpu"
    assert variants["cuda/cuda-fp16"].precision == "fp16" and variants[CPU4].precision == "int4"
    assert variants[CPU4].files == tuple(sorted(p for p in PHI if p.startswith(CPU4)))  # its own folder only
    assert variants[CPU4].size == 2_800_000_055


def test_a_build_at_the_root_does_not_take_the_other_folders():
    listing = {"genai_config.json": 1, "model.onnx": 10, "tokenizer.json": 2, "cuda/genai_config.json": 1}
    (root,) = find_variants({**listing, "cuda/model.onnx": 5, "cuda/x/model.onnx": 3})[:1]
    assert root.name == "" and root.short == "." and root.files == ("genai_config.json", "model.onnx", "tokenizer.json")


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("cpu", CPU4),  # int4 at accuracy level 4 over the smaller level-0 build
        ("cuda", "gpu/gpu-int4-rtn-block-32"),  # int4 first, then the smallest
        ("dml", "directml/directml-int4-awq-block-128"),
        ("coreml", CPU4),  # no build for it: the CPU's
    ],
)
def test_the_pick_for_each_device(device, expected):
    chosen, why = pick(find_variants(PHI), device, None, "microsoft/Phi")
    assert chosen.name == expected
    assert ("has none for" in why) == (device == "coreml")


def test_a_named_variant_by_folder_or_last_part():
    variants = find_variants(PHI)
    assert pick(variants, "cpu", "cuda-fp16", "r")[0].name == "cuda/cuda-fp16"
    assert pick(variants, "cpu", "cuda/cuda-fp16", "r") == (pick(variants, "cpu", "cuda-fp16", "r")[0], "asked for")
    with pytest.raises(ConversionError, match=r"r has no variant 'cuda-int8' \(variants: .*cuda/cuda-fp16"):
        pick(variants, "cpu", "cuda-int8", "r")


def test_no_build_for_the_device_nor_the_cpu():
    only_webgpu = {p: s for p, s in PHI.items() if p.startswith("webgpu/")}
    with pytest.raises(ConversionError, match="no build for cuda or the CPU"):
        pick(find_variants(only_webgpu), "cuda", None, "r")


def test_sentence_transformers_onnx_graphs():
    variants = {v.name: v for v in find_variants(MINILM)}
    assert set(variants) == {"model", "model_O4", "model_qint8_avx512"}  # not openvino, not the PyTorch weights
    assert {v.kind for v in variants.values()} == {ONNX_EMBEDDING}
    assert [variants[n].precision for n in ("model", "model_O4", "model_qint8_avx512")] == ["fp32", "fp16", "int8"]
    files = variants["model_qint8_avx512"].files
    assert files[0] == "onnx/model_qint8_avx512.onnx" and "1_Pooling/config.json" in files and "vocab.txt" in files
    assert not any(f.endswith((".bin", ".safetensors", ".xml")) or f.startswith("onnx/model.") for f in files)
    assert pick(list(variants.values()), "cuda", None, "r")[0].name == "model"  # full precision by default
    assert pick(list(variants.values()), "cpu", "qint8_avx512", "r")[0].name == "model_qint8_avx512"


def test_external_data_goes_with_its_graph():
    listing = {**MINILM, "onnx/model.onnx_data": 2_000_000_000}
    (plain,) = [v for v in find_variants(listing) if v.name == "model"]
    assert plain.files[:2] == ("onnx/model.onnx", "onnx/model.onnx_data")


def test_nothing_servable():
    assert find_variants({"config.json": 1, "model.safetensors": 10}) == []
    assert find_variants({"genai_config.json": 1, "README.md": 1}) == []  # a config without a graph


@pytest.mark.parametrize("reference", ["phi", "a/b/c", "/abs:x", ""])
def test_references_that_are_not_hub_ids(reference):
    with pytest.raises(ConversionError, match="not a hub id"):
        split_reference(reference)


def test_references():
    assert split_reference("microsoft/Phi-4-mini-instruct-onnx") == ("microsoft/Phi-4-mini-instruct-onnx", None)
    assert split_reference("o/r:cpu-int4") == ("o/r", "cpu-int4")
