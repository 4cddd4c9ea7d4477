"""`ortserve convert` on the tiny chat fixtures: validation figures, parity, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import CHAT_MODELS, run_cli


@pytest.mark.parametrize("name", sorted(CHAT_MODELS))
def test_validation_figures_recorded(chat_store, name):
    entry = chat_store.get(name)
    arch, precision = CHAT_MODELS[name]
    figures = entry.manifest["validation"]
    assert entry.task == "chat" and entry.manifest["precision"] == precision
    assert figures["tokenizer_match"] is True and figures["template_match"] is True
    if precision == "fp32":
        assert figures["greedy_match"] == "3/3"
        assert figures["logits_cosine_min"] > 0.99999
    else:
        assert 0.99 <= figures["logits_cosine_min"] < 0.99999  # quantized: close, but really quantized
        assert entry.manifest["builder_options"] == {"block_size": 32, "accuracy_level": 4}
    config = json.loads((entry.folder / "genai_config.json").read_text())
    assert config["model"]["type"] == {"llama": "llama", "qwen2": "qwen2"}[arch]


@pytest.mark.parametrize("name,arch", [("tiny-llama", "llama"), ("tiny-qwen", "qwen2")])
def test_fp32_greedy_matches_transformers(chat_store, checkpoints, name, arch):
    """Independent of the converter's own check: chat-templated prompt, 24 greedy tokens."""
    import onnxruntime_genai as og
    import torch
    import transformers

    src = checkpoints[arch]
    tok = transformers.AutoTokenizer.from_pretrained(src)
    ref = transformers.AutoModelForCausalLM.from_pretrained(src)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about Paris 🙂"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    expected = ref.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids) :].tolist()

    model = og.Model(str(chat_store.get(name).folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 24, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array(ids, dtype=np.int32))
    got = []
    while not gen.is_done():
        gen.generate_next_token()
        got.append(int(gen.get_next_tokens()[0]))
    assert got[: len(expected)] == expected


def _one_line_error(err: str) -> str:
    """The failure is reported as a single `error: ...` line (progress lines may precede it), no traceback."""
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _store_is_empty(home) -> bool:
    models = home / "models"
    return not models.exists() or not any(models.iterdir())


def test_missing_source_is_one_line_error(tmp_path, capsys):
    assert run_cli(tmp_path, "convert", str(tmp_path / "nope")) == 1
    assert "no such folder" in _one_line_error(capsys.readouterr().err)
    assert _store_is_empty(tmp_path)


@pytest.mark.parametrize(
    "config,expected",
    [
        ("{not json", "not valid JSON"),
        ('{"hello": 1}', "has no model_type"),
        (
            '{"model_type": "mamba", "architectures": ["MambaForCausalLM"]}',
            "unsupported chat architecture 'MambaForCausalLM'",
        ),
    ],
)
def test_corrupt_or_unsupported_source(tmp_path, capsys, config, expected):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(config)
    (src / "tokenizer.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"\0" * 16)
    home = tmp_path / "home"
    assert run_cli(home, "convert", str(src), "--task", "chat", "--precision", "fp32") == 1
    assert expected in _one_line_error(capsys.readouterr().err)
    assert _store_is_empty(home)


def test_corrupt_weights_fail_in_builder_and_leave_nothing(tmp_path, checkpoints, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(checkpoints["llama"], src)
    (src / "model.safetensors").write_bytes(b"this is not a safetensors file")
    home = tmp_path / "home"
    assert run_cli(home, "convert", str(src), "--precision", "fp32", "--quiet") == 1
    assert "builder failed" in _one_line_error(capsys.readouterr().err)
    assert _store_is_empty(home)


def test_precision_device_pairs_checked_up_front(tmp_path, checkpoints, capsys):
    home = tmp_path / "home"
    assert (
        run_cli(home, "convert", str(checkpoints["llama"]), "--task", "chat", "--device", "cuda", "--precision", "fp32")
        == 1
    )
    assert "use fp16 (the default)" in capsys.readouterr().err
    for precision in ("int4", "int8"):  # paged attention is built for fp16/bf16 only: refused with what to do
        args = ("--task", "chat", "--device", "cuda", "--precision", precision)
        assert run_cli(home, "convert", str(checkpoints["llama"]), *args) == 1
        err = capsys.readouterr().err
        assert "paged attention" in err and "--precision fp16" in err and f"ready {precision} CUDA build" in err
    assert run_cli(home, "convert", str(checkpoints["llama"]), "--task", "chat", "--device", "coreml") == 1
    assert "CoreML" in capsys.readouterr().err
    assert _store_is_empty(home)


def test_failed_validation_registers_nothing(tmp_path, capsys):
    """Large random weights quantize badly to int4: validation must refuse the model and show the figures."""
    from ortserve.conversion.demo import build_tiny_chat_checkpoint

    src = build_tiny_chat_checkpoint(tmp_path / "wild", "llama", initializer_range=0.3, seed=3)
    home = tmp_path / "home"
    assert run_cli(home, "convert", str(src), "--name", "wild", "--precision", "int4", "--quiet") == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "validation failed" in line and "logits_cosine_min" in line
    assert _store_is_empty(home)
    # --no-validate registers it anyway, marked as unvalidated
    assert run_cli(home, "convert", str(src), "--name", "wild", "--precision", "int4", "--quiet", "--no-validate") == 0
    manifest = json.loads((home / "models" / "wild" / "manifest.json").read_text())
    assert manifest["validated"] is False and "validation" not in manifest


def test_interrupt_leaves_no_half_written_model(tmp_path, checkpoints, monkeypatch):
    """Ctrl-C during the build (after files were written) removes the staging folder."""
    import ortserve.conversion.chat as chat

    real = chat.run_builder

    def build_then_interrupt(src, out, precision, device, progress):
        real(src, out, precision, device, progress)
        assert (out / "model.onnx").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(chat, "run_builder", build_then_interrupt)
    home = tmp_path / "home"
    assert run_cli(home, "convert", str(checkpoints["llama"]), "--precision", "fp32", "--quiet") == 130
    assert list((home / "models").iterdir()) == []  # no folder, no settings file
