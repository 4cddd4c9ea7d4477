"""The Modelfile parser (server/modelfile.py) and Ollama's durations (core/durations.py): pure functions; and
`ortserve create` FROM a stored model, on a store of manifests only (nothing here loads a model)."""

from __future__ import annotations

import json
import math

import pytest

from ortserve.core.durations import format_duration, parse_duration
from ortserve.core.model_config import ModelConfig, SamplingDefaults
from ortserve.core.store import MANIFEST, ModelStore
from ortserve.server.modelfile import ModelfileError, parse_modelfile
from tests.conftest import run_cli


def test_every_supported_instruction_and_parameter():
    text = """# a comment
FROM acc-model
PARAMETER num_ctx 8192
PARAMETER temperature 0.3
PARAMETER top_p 0.8
PARAMETER top_k 20
PARAMETER seed 42
PARAMETER num_predict 64
PARAMETER repeat_penalty 1.1
PARAMETER stop "<|im_end|>"
PARAMETER stop User:
SYSTEM You are Mario from Super Mario Bros.
"""
    m = parse_modelfile(text)
    assert (m.source, m.source_line, m.num_ctx) == ("acc-model", 2, 8192)
    assert m.system == "You are Mario from Super Mario Bros."
    assert m.defaults == {
        "temperature": 0.3,
        "top_p": 0.8,
        "top_k": 20,
        "seed": 42,
        "max_tokens": 64,
        "repetition_penalty": 1.1,
        "stop": ["<|im_end|>", "User:"],
    }
    assert m.warnings == []


def test_instructions_are_case_insensitive_and_the_last_system_wins():
    m = parse_modelfile('from base\nParameter Temperature 0\nsystem "first"\nSYSTEM second one\n')
    assert (m.source, m.defaults, m.system) == ("base", {"temperature": 0.0}, "second one")


def test_triple_quoted_system_spans_lines():
    text = 'FROM base\nSYSTEM """\nYou are terse.\n  Keep "quotes" and # hashes.\n"""\nPARAMETER seed 1\n'
    m = parse_modelfile(text)
    assert m.system == 'You are terse.\n  Keep "quotes" and # hashes.'
    assert m.defaults == {"seed": 1}
    assert parse_modelfile('FROM b\nSYSTEM """one line"""').system == "one line"
    assert parse_modelfile('FROM b\r\nSYSTEM """a\r\nb"""\r\n').system == "a\nb"


def test_quotes_as_ollama_reads_them():
    # "..." may span lines too: it closes on the first line that ends with a quote
    m = parse_modelfile('FROM b\nSYSTEM "You are Mario.\nSystem prompts are "fun""\nPARAMETER stop "<|im_end|>"\n')
    assert m.system == 'You are Mario.\nSystem prompts are "fun"' and m.defaults == {"stop": ["<|im_end|>"]}
    # a quote only opens a value at its start; PARAMETER's value starts after its name
    assert parse_modelfile('FROM b\nSYSTEM Say """hi""" twice\n').system == 'Say """hi""" twice'
    assert parse_modelfile('FROM b\nPARAMETER stop """\n###\n"""\n').defaults == {"stop": ["###"]}
    assert parse_modelfile('FROM b\nPARAMETER stop " User:"\n').defaults == {"stop": [" User:"]}
    with pytest.raises(ModelfileError, match='line 2: the " opened here is never closed'):
        parse_modelfile('FROM b\nSYSTEM "never\nclosed\n')


def test_a_byte_order_mark_is_not_an_instruction():  # Windows editors write one
    assert parse_modelfile("\ufeffFROM base\r\nPARAMETER seed 1\r\n").source == "base"


def test_unclosed_triple_quote_names_its_line():
    with pytest.raises(ModelfileError, match='line 2: the """ opened here is never closed'):
        parse_modelfile('FROM b\nSYSTEM """never\nclosed\n')


def test_errors_name_every_bad_line():
    text = """FROM base
TEMPLATE {{ .Prompt }}
ADAPTER ./lora.safetensors
MESSAGE user hi
PARAMETER mirostat 1
PARAMETER temperature hot
PARAMETER temperature 5
PARAMETER bogus 1
PARAMETER num_ctx
FLY away
"""
    with pytest.raises(ModelfileError) as caught:
        parse_modelfile(text)
    lines = str(caught.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [f"line {n}" for n in range(2, 11)]
    assert "TEMPLATE is not supported" in lines[0] and "chat template" in lines[0]
    assert "ADAPTER is not supported" in lines[1]
    assert "MESSAGE is not supported" in lines[2]
    assert "mirostat is not supported" in lines[3]
    assert "expected a number, got 'hot'" in lines[4]
    assert "less than or equal to 2" in lines[5]
    assert "unknown parameter 'bogus'" in lines[6]
    assert "needs a name and a value" in lines[7]
    assert "unknown instruction 'FLY'" in lines[8]


def test_from_is_required_once():
    with pytest.raises(ModelfileError, match="no FROM line"):
        parse_modelfile("# nothing\nSYSTEM hi\n")
    with pytest.raises(ModelfileError, match="line 3: only one FROM"):
        parse_modelfile("FROM a\n\nFROM b\n")
    with pytest.raises(ModelfileError, match="line 1: FROM needs"):
        parse_modelfile("FROM\n")


def test_metadata_and_hardware_tuning_are_warnings():
    m = parse_modelfile('FROM b\nLICENSE """MIT\nlicense text"""\nPARAMETER num_thread 8\nPARAMETER num_gpu 99\n')
    assert m.warnings == [
        "line 2: LICENSE is ignored",
        "line 4: PARAMETER num_thread is ignored (llama.cpp tuning, no meaning here)",
        "line 5: PARAMETER num_gpu is ignored (llama.cpp tuning, no meaning here)",
    ]


def test_to_config_overrides_the_base_and_drops_its_aliases():
    base = ModelConfig(
        aliases=["gpt-4o"],
        num_ctx=2048,
        owned_by="me",
        system="base system",
        defaults=SamplingDefaults(temperature=0.9, top_k=5),
        keep_alive="1h",
    )
    config = parse_modelfile("FROM b\nPARAMETER temperature 0.1\nPARAMETER num_ctx 8192\n").to_config(base, "b")
    assert config.weights == "b" and config.aliases == [] and config.owned_by == "me"
    assert (config.num_ctx, config.system, config.keep_alive) == (8192, "base system", "1h")
    assert config.defaults == SamplingDefaults(temperature=0.1, top_k=5)
    assert parse_modelfile("FROM b\nSYSTEM new\n").to_config(base, None).system == "new"


@pytest.mark.parametrize("value", ["-1", "-2"])
def test_num_predict_without_a_limit_clears_the_bases(value):
    base = ModelConfig(defaults=SamplingDefaults(max_tokens=64))
    config = parse_modelfile(f"FROM b\nPARAMETER num_predict {value}\n").to_config(base, "b")
    assert config.defaults.max_tokens is None  # as Ollama: until the end of the context
    assert parse_modelfile("FROM b\nPARAMETER num_predict 8\n").to_config(base, "b").defaults.max_tokens == 8
    with pytest.raises(ModelfileError, match="line 2"):
        parse_modelfile("FROM b\nPARAMETER num_predict -3\n")


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("5m", 300),
        ("1h30m", 5400),
        ("10s", 10),
        ("1.5h", 5400),
        ("300ms", 0.3),
        ("300", 300),
        ("0", 0),
        (0, 0),
        (30, 30),
        (2.5, 2.5),
        ("2h0m5s", 7205),
        (" 1m ", 60),
    ],
)
def test_durations(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["-1", -1, "-5m", -0.5])
def test_negative_durations_are_forever(value):
    assert parse_duration(value) == math.inf


@pytest.mark.parametrize("value", ["", "soon", "5 m", "5x", "m5", "--1", "1h-5m", "nan", True])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_format_duration():
    assert [format_duration(s) for s in (0, 44.6, 299, 7380, math.inf)] == ["0s", "45s", "4m 59s", "2h 3m", "forever"]


def test_create_over_its_own_name_keeps_its_aliases(tmp_path, capsys):
    home = tmp_path / "home"
    (home / "models" / "qwen").mkdir(parents=True)
    (home / "models" / "qwen" / MANIFEST).write_text(json.dumps({"task": "chat"}), encoding="utf-8")
    store = ModelStore(home / "models")
    store.write_config("qwen", ModelConfig(aliases=["gpt-4o-mini"]))
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM qwen\nPARAMETER temperature 0.2\n", encoding="utf-8")
    assert run_cli(home, "create", "qwen", "-f", str(modelfile)) == 0  # new settings for the same name
    assert store.get("gpt-4o-mini").name == "qwen" and store.get("qwen").config.defaults.temperature == 0.2
    assert run_cli(home, "create", "mini", "-f", str(modelfile)) == 0  # a new name: the aliases stay the base's
    assert store.get("mini").config.aliases == [] and store.get("gpt-4o-mini").name == "qwen"

    modelfile.write_bytes("FROM qwen\nSYSTEM caf\xe9\n".encode("latin-1"))  # not UTF-8: an error, not a traceback
    assert run_cli(home, "create", "latin", "-f", str(modelfile)) == 1
    assert "is not UTF-8 text" in capsys.readouterr().err and not store.exists("latin")
