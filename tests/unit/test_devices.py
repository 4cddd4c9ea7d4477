"""Choosing execution providers, from made-up machines (no GPU is needed to test the choice).

`ortserve.core.devices` decides from an `Environment` (platform, packages, a visible GPU, what the
runtimes report); these tests hand it the environments of machines this one is not.
"""

from __future__ import annotations

import argparse
import logging
import sys

import pytest

from ortserve.core import cuda, devices
from ortserve.core.devices import DeviceUnavailableError
from ortserve.server import doctor
from ortserve.server.engine import devices as engine_devices
from ortserve.server.engine import engine_turn, ort_embedder, sampling
from ortserve.server.engine.generation import Guidance, Prompt, SamplingParams
from ortserve.server.errors import NotSupportedError

CPU_ONLY = {"onnxruntime-genai": "0.18.0", "onnxruntime": "1.32.0"}
CUDA = {"onnxruntime-genai-cuda": "0.18.0", "onnxruntime-gpu": "1.31.1"}


def env(platform="linux", machine="x86_64", packages=CPU_ONLY, gpu=False, ort=None, genai=None):
    return devices.Environment(platform, machine, packages, gpu, ort, None if genai is None else frozenset(genai))


# ---- auto ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("machine", "runtime", "expected"),
    [
        (env(packages=CUDA, gpu=True), "generation", "cuda"),
        (env(packages=CUDA, gpu=True), "embeddings", "cuda"),
        (env(platform="win32", packages=CUDA, gpu=True), "generation", "cuda"),  # CUDA before DirectML
        (env(packages=CUDA, gpu=False), "generation", "cpu"),  # the packages, but no GPU
        (env(packages=CPU_ONLY, gpu=True), "generation", "cpu"),  # a GPU, but the CPU builds
        (env(platform="win32", packages={**CPU_ONLY, "onnxruntime-directml": "1.24.4"}), "embeddings", "dml"),
        (env(platform="win32", packages={**CPU_ONLY, "onnxruntime-genai-winml": "0.18.0"}), "generation", "dml"),
        (
            env(platform="win32", packages={"onnxruntime-genai-winml": "0.18.0", "onnxruntime-windowsml": "1.30.0"}),
            "embeddings",
            "dml",
        ),  # the Windows ML route: both runtimes with DirectML
        (env(platform="win32"), "generation", "cpu"),  # the stock Windows wheels have no DirectML
        (env(platform="darwin", machine="arm64"), "embeddings", "coreml"),  # the stock macOS onnxruntime has it
        (env(platform="darwin", machine="arm64"), "generation", "cpu"),  # genai models do not run on CoreML
        (env(platform="darwin", machine="x86_64"), "embeddings", "cpu"),  # CoreML only on Apple silicon
    ],
)
def test_auto_picks_the_first_provider_that_can_run(machine, runtime, expected):
    assert devices.choose("auto", machine, runtime).device == expected


def test_what_the_runtimes_report_beats_the_package_metadata():
    # onnxruntime-gpu installed, but its CUDA provider is missing (the CPU wheel's files won): embeddings on the CPU
    broken = env(packages={**CPU_ONLY, **CUDA}, gpu=True, ort=("CPUExecutionProvider",), genai={"cpu", "cuda"})
    assert devices.choose("auto", broken, "embeddings").device == "cpu"
    assert devices.choose("auto", broken, "generation").device == "cuda"
    assert devices.choose("auto", env(gpu=True, genai={"cpu", "cuda"}), "generation").device == "cuda"


def test_auto_on_the_cpu_warns_only_when_an_accelerator_was_half_there(caplog):
    with caplog.at_level(logging.WARNING, logger="ortserve.core.devices"):
        assert devices.resolve_device("auto", "generation", env(packages=CUDA, gpu=False)) == "cpu"
        assert devices.resolve_device("auto", "generation", env(packages=CPU_ONLY, gpu=True)) == "cpu"
        assert devices.resolve_device("auto", "generation", env()) == "cpu"
        assert devices.resolve_device("auto", "generation", env(platform="darwin", machine="arm64")) == "cpu"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "no NVIDIA GPU is visible" in warnings[0]
    assert "onnxruntime-genai-cuda" in warnings[1]


# ---- a device asked by name ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("device", "machine", "runtime", "words"),
    [
        ("cuda", env(), "generation", ["onnxruntime-genai-cuda", "ortserve[cuda]"]),
        ("cuda", env(), "embeddings", ["onnxruntime-gpu"]),
        ("cuda", env(packages=CUDA), "generation", ["no NVIDIA GPU is visible"]),
        ("cuda", env(platform="darwin", machine="arm64", packages=CUDA), "generation", ["Linux or Windows", "macOS"]),
        ("dml", env(), "generation", ["Windows only", "Linux"]),
        ("dml", env(platform="win32"), "generation", ["DirectML", "onnxruntime-genai-winml", "untested"]),
        ("dml", env(platform="win32"), "embeddings", ["onnxruntime-directml"]),
        ("coreml", env(platform="darwin", machine="arm64"), "generation", ["do not run on CoreML", "--device cpu"]),
        ("coreml", env(platform="darwin", machine="x86_64"), "embeddings", ["arm64"]),
        ("tpu", env(), "generation", ["unknown device 'tpu'", "cpu"]),
    ],
)
def test_an_unavailable_device_is_a_501_that_says_what_is_missing(device, machine, runtime, words):
    with pytest.raises(DeviceUnavailableError) as info:
        devices.choose(device, machine, runtime)
    for word in words:
        assert word in str(info.value)
    with pytest.raises(NotSupportedError) as served:  # where the engine asks: the server's 501, the same words
        engine_devices.resolve_device(device, runtime, machine)
    assert served.value.status == 501 and served.value.message == str(info.value)


def test_an_available_device_is_kept():
    assert devices.choose("cuda", env(packages=CUDA, gpu=True), "generation").device == "cuda"
    assert devices.choose("cpu", env(packages=CUDA, gpu=True), "generation").device == "cpu"


def test_the_registry_order_is_autos_preference():
    assert list(devices.PROVIDERS) == ["cuda", "dml", "coreml", "cpu"]
    assert set(devices.PROVIDERS) | {"auto"} == set(devices.DEVICES)


def test_one_list_of_devices_for_every_setting_and_flag():
    from ortserve.conversion.cli import add_arguments
    from ortserve.core.model_config import ModelConfig
    from ortserve.server.cli import build_parser
    from ortserve.server.settings import ServerSettings

    assert devices.DEVICES == ("auto", *devices.BUILD_DEVICES) and set(devices.BUILD_DEVICES) == set(devices.PROVIDERS)
    with pytest.raises(ValueError, match="not in BUILD_DEVICES"):  # a provider is named in the one list first
        devices.register(devices.Provider("tpu", "TPU"))
    for name in devices.DEVICES:
        assert ModelConfig(device=name).device == ServerSettings(device=name).device == name
    for model in (ModelConfig, ServerSettings):
        with pytest.raises(ValueError, match="unknown device 'tpu'; devices: auto, cpu, cuda, dml, coreml"):
            model(device="tpu")
    parser = build_parser()
    assert parser.parse_args(["serve", "--device", "auto"]).device == "auto"
    assert parser.parse_args(["create", "x", "--device", "coreml"]).device == "coreml"
    convert = argparse.ArgumentParser()
    add_arguments(convert)
    for argv in (
        ["serve", "--device", "tpu"],
        ["create", "x", "--device", "auto"],
        ["convert", "s", "--device", "auto"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


# ---- onnxruntime-genai: og.Config calls -----------------------------------------------------------
class FakeConfig:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


class FakeOg:
    def __init__(self, cuda=False, dml=False):
        self.is_cuda_available = lambda: cuda
        self.is_dml_available = lambda: dml


def test_configure_appends_the_provider_through_og_config():
    config = FakeConfig()
    devices.configure(config, "cuda", 8, FakeOg(cuda=True))
    assert config.calls[:3] == [
        ("clear_providers",),
        ("append_provider", "cuda"),
        ("set_provider_option", "cuda", "enable_cuda_graph", "0"),
    ]
    assert config.calls[3][0] == "overlay" and '"intra_op_num_threads": 8' in config.calls[3][1]


def test_configure_for_the_cpu_clears_what_the_builder_wrote():
    config = FakeConfig()
    devices.configure(config, "cpu", 2, FakeOg())
    assert [c[0] for c in config.calls] == ["clear_providers", "overlay"]


def test_configure_refuses_a_device_the_og_build_lacks():
    with pytest.raises(NotSupportedError, match="onnxruntime-genai-cuda"):  # the engine's side: a 501
        engine_devices.configure(FakeConfig(), "cuda", 2, FakeOg(cuda=False))
    assert devices.genai_devices(FakeOg(cuda=True, dml=True)) == {"cpu", "cuda", "dml"}


# ---- onnxruntime (embeddings) --------------------------------------------------------------------
def test_onnxruntime_providers_keep_the_cpu_behind_the_accelerator():
    assert devices.ort_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert devices.ort_providers("cpu") == ["CPUExecutionProvider"]
    assert devices.device_of_providers(["DmlExecutionProvider", "CPUExecutionProvider"]) == "dml"
    assert devices.device_of_providers(["CPUExecutionProvider"]) == "cpu"


def test_embedding_providers_follow_what_onnxruntime_offers():
    gpu_box = env(packages=CUDA, gpu=True)
    assert ort_embedder.providers_for("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], gpu_box) == (
        "cuda",
        ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert ort_embedder.providers_for("auto", ["CPUExecutionProvider"], gpu_box) == ("cpu", ["CPUExecutionProvider"])
    with pytest.raises(NotSupportedError, match="CUDAExecutionProvider"):
        ort_embedder.providers_for("cuda", ["CPUExecutionProvider"], gpu_box)
    # onnxruntime-gpu lists CUDA, but the check found no driver: the CPU
    no_driver = devices.Environment("linux", "x86_64", CUDA, cuda=devices.CudaCheck(driver="there is no NVIDIA driver"))
    assert ort_embedder.providers_for("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], no_driver)[0] == "cpu"


def test_a_session_that_fell_back_to_the_cpu(caplog):
    session = ["CPUExecutionProvider"]  # what onnxruntime did when CUDA would not start
    with pytest.raises(NotSupportedError, match="could not start CUDAExecutionProvider"):
        ort_embedder.check_session_device(session, "cuda", asked="cuda")
    with caplog.at_level(logging.WARNING):
        assert ort_embedder.check_session_device(session, "cuda", asked="auto") == "cpu"
    assert "could not start" in caplog.text
    assert (
        ort_embedder.check_session_device(["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda", asked="cuda")
        == "cuda"
    )


# ---- ortserve info ---------------------------------------------------------------------------------
def test_info_warns_about_runtime_packages_that_overwrite_each_other():
    warnings = doctor.conflicts({**CPU_ONLY, **CUDA})
    assert len(warnings) == 2
    assert "pip uninstall -y onnxruntime-genai " in warnings[0] and "--no-deps onnxruntime-genai-cuda" in warnings[0]
    assert "pip uninstall -y onnxruntime " in warnings[1] and "--no-deps onnxruntime-gpu" in warnings[1]
    assert doctor.conflicts(CPU_ONLY) == []


def test_info_report_on_this_machine_renders():
    report = doctor.collect(url=None)
    assert report["auto"]["chat built for cpu"]["device"] == "cpu"
    assert report["auto"]["embeddings"]["device"] in devices.PROVIDERS
    assert report["devices"]["cpu"] == {"generation": None, "embeddings": None}
    text = doctor.render(report)
    assert "--device auto" in text and "onnxruntime-genai (generation)" in text


# ---- the Engine path's request mapping (server/engine/sampling.py, engine_turn.py) ----------------------------
def test_turn_settings_map_sampling_to_og_turn_options():
    params = SamplingParams(
        max_tokens=9,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        seed=2**40 + 5,
        repetition_penalty=1.1,
        min_tokens=20,
        guidance=Guidance("regex", "a+", param="p"),
    )
    calls = dict(sampling.turn_settings(params, budget=9))
    assert calls["set_max_generated_tokens"] == (9,) and calls["set_do_sample"] == (True,)
    assert calls["set_temperature"] == (0.7,) and calls["set_top_p"] == (0.9,) and calls["set_top_k"] == (40,)
    assert calls["set_seed"] == ((2**40 + 5) % (2**31 - 1),)
    assert calls["set_repetition_penalty"] == (1.1,) and calls["set_min_generated_tokens"] == (9,)
    assert calls["set_guidance"] == ("regex", "a+")
    greedy = dict(sampling.turn_settings(SamplingParams(temperature=0, seed=3), budget=4))
    assert greedy == {"set_max_generated_tokens": (4,), "set_do_sample": (False,)}


def test_engine_refuses_what_it_cannot_do_naming_the_field():
    plain = Prompt(text="hi")
    assert engine_turn.unsupported(SamplingParams(), plain, dynamic=False) is None
    assert engine_turn.unsupported(SamplingParams(logprobs=0), plain, dynamic=True)[0] == "logprobs"
    assert engine_turn.unsupported(SamplingParams(prompt_logprobs=1), plain, dynamic=True)[0] == "logprobs"
    assert engine_turn.unsupported(SamplingParams(frequency_penalty=1.0), plain, dynamic=True)[0] == "frequency_penalty"
    assert (
        engine_turn.unsupported(SamplingParams(), Prompt(messages=[], images=(b"png",)), dynamic=True)[0] == "messages"
    )
    seeded = SamplingParams(seed=1, temperature=0.8)
    assert engine_turn.unsupported(seeded, plain, dynamic=False)[0] == "seed"
    assert engine_turn.unsupported(seeded, plain, dynamic=True) is None
    assert engine_turn.unsupported(SamplingParams(seed=1, temperature=0), plain, dynamic=False) is None  # greedy


# ---- auto for a chat model: where it was built to run ----------------------------------------------
def test_auto_runs_a_chat_model_where_it_was_built_for():
    gpu_box = env(packages=CUDA, gpu=True)
    assert devices.choose("auto", gpu_box, "generation", built_for="cuda").device == "cuda"
    # a CPU build keeps fp32 activations: it stays on the CPU even beside a GPU
    assert devices.choose("auto", gpu_box, "generation", built_for="cpu").device == "cpu"
    assert devices.choose("auto", gpu_box, "embeddings", built_for="cpu").device == "cuda"  # embeddings: no such rule
    assert devices.choose("auto", env(), "generation", built_for="dml").device == "cpu"  # falls back
    assert devices.choose("auto", env(), "generation", built_for=None).device == "cpu"


def test_a_model_that_runs_on_the_cpu_is_resolved_without_probing_the_machine(monkeypatch):
    """resolve_device runs on the event loop when a chat model loads; detect() may start nvidia-smi (Windows, WSL).
    A CPU build under auto, or --device cpu, runs on the CPU whatever the machine: nothing to probe, as before."""

    def probe(**_):
        raise AssertionError("detect() ran")

    monkeypatch.setattr(devices, "detect", probe)
    assert devices.resolve_device("cpu") == "cpu"
    assert devices.resolve_device("auto", built_for="cpu") == "cpu"
    assert devices.resolve_device("cpu", "embeddings") == "cpu"
    with pytest.raises(AssertionError):  # anything else still looks at the machine
        devices.resolve_device("auto", built_for="cuda")


def test_nvidia_smi_off_the_path_is_found(monkeypatch):
    """WSL2 has no /proc/driver/nvidia and keeps nvidia-smi in /usr/lib/wsl/lib, often not on PATH; older Windows
    drivers keep it in Program Files\\NVIDIA Corporation\\NVSMI. Either way the GPU is there."""
    import subprocess

    ran = []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(cuda.shutil, "which", lambda name: None)
    monkeypatch.setattr(cuda.Path, "is_dir", lambda self: False)  # no /proc/driver/nvidia/gpus
    monkeypatch.setattr(cuda.os.path, "isfile", lambda path: path == "/usr/lib/wsl/lib/nvidia-smi")
    monkeypatch.setattr(
        cuda.subprocess,
        "run",
        lambda cmd, **_: (
            ran.append(cmd) or subprocess.CompletedProcess(cmd, 0, "GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-1)\n", "")
        ),
    )
    assert cuda.nvidia_gpu_visible.__wrapped__() is True
    assert ran == [["/usr/lib/wsl/lib/nvidia-smi", "-L"]]


def test_a_cuda_build_has_no_cpu_fallback():
    with pytest.raises(DeviceUnavailableError) as info:
        devices.choose("auto", env(packages=CUDA), "generation", built_for="cuda")
    assert "built for cuda" in str(info.value) and "no NVIDIA GPU is visible" in str(info.value)


def test_auto_warns_when_a_model_cannot_run_where_it_was_built_for(caplog):
    with caplog.at_level(logging.WARNING, logger="ortserve.core.devices"):
        assert devices.resolve_device("auto", env=env(), built_for="dml") == "cpu"
        assert devices.resolve_device("auto", env=env(gpu=True), built_for="cpu") == "cpu"  # no warning: built so
    assert [r.getMessage() for r in caplog.records] == [
        "device auto: running generation on the CPU (the model was built for dml, which is not available here: "
        "DirectML runs on Windows only (this is Linux))"
    ]


# ---- serve --device ---------------------------------------------------------------------------------
@pytest.mark.skipif(sys.platform != "linux" or devices.detect().cuda is not None, reason="Linux with the CPU wheels")
@pytest.mark.parametrize(
    ("device", "code", "words"),
    [
        ("cuda", 2, "install onnxruntime-genai-cuda"),  # runs nothing here: refused before serving
        ("coreml", 2, "macOS only"),
    ],
)
def test_serve_refuses_a_device_that_runs_nothing_here(tmp_path, capsys, device, code, words):
    """This machine as it is (tests/cuda_extra: the same with the CUDA wheels and no driver)."""
    from tests.conftest import run_cli

    assert run_cli(tmp_path, "serve", "--device", device, "--no-bootstrap", "--port", "0") == code
    assert words in capsys.readouterr().err
    assert not (tmp_path / "models").exists()  # it stopped before touching the store


def test_serve_warns_when_a_device_runs_only_embeddings(capsys):
    from ortserve.server.cli_serve import device_usable

    assert device_usable("coreml", env(platform="darwin", machine="arm64"))
    err = capsys.readouterr().err
    assert "cannot run generation" in err and "cannot run embeddings" not in err


# ---- convert --device cuda: validating a paged build -----------------------------------------------
def test_a_paged_build_is_not_validated_where_cuda_cannot_run(tmp_path):
    """Validation asks what really loads (`validate_chat.cannot_run`: the machine check), not og.is_cuda_available(),
    which says how the wheel was built: here (the CPU wheels) the cuda build is not run, nothing is built again
    for it, and the reason is said (tests/cuda_extra checks the CUDA wheels without a driver)."""
    import io

    from ortserve.conversion import chat
    from ortserve.conversion.common import Progress

    out = io.StringIO()
    figures = chat._validate_paged(tmp_path, tmp_path, {}, precision="int4", device="cuda", progress=Progress(out))
    assert "onnxruntime-genai-cuda" in figures["skipped"] and "was not run" in out.getvalue()
    assert list(tmp_path.iterdir()) == []  # no unpaged twin was built


# ---- the Engine's error codes ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("CAPACITY_DEFERRED", 503),
        ("EXECUTION_CAPACITY_EXCEEDED", 503),
        ("RETRYABLE_EXECUTION", 503),
        ("REQUEST_UNSERVICEABLE", 400),
        ("ENGINE_EXECUTION_FAILURE", 500),
        ("ENGINE_CONTRACT_FAILURE", 500),
    ],
)
def test_engine_failures_map_to_what_the_client_can_do(code, status):
    error = engine_turn.engine_failure(code).to_exception()
    assert error.status == status and code in error.message


def test_an_empty_driver_folder_still_asks_nvidia_smi(tmp_path):
    empty = tmp_path / "gpus"
    empty.mkdir()
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-1)'\n")
    smi.chmod(0o755)
    assert cuda.gpu_listed(empty, str(smi))  # was False without asking
    assert not cuda.gpu_listed(empty, None)
    (empty / "0000:01:00.0").mkdir()
    assert cuda.gpu_listed(empty, None)
    silent = tmp_path / "nvidia-smi-none"
    silent.write_text("#!/bin/sh\nexit 9\n")
    silent.chmod(0o755)
    assert not cuda.gpu_listed(tmp_path / "absent", str(silent))


# ---- the runtime extras: none, half or two installed (`ortserve info`, `serve`) ----------------------------
def test_missing_runtimes_say_what_to_install():
    from ortserve.server.doctor import missing_runtimes

    def nothing_importable(module: str) -> bool:
        return False

    error, warning = missing_runtimes({}, nothing_importable)
    assert warning is None and "no ONNX Runtime is installed" in error and "pip install 'ortserve[cpu]'" in error
    error, warning = missing_runtimes({"onnxruntime": "1.32.0"}, nothing_importable)
    assert error is None and "chat models cannot run" in warning and "ortserve[cuda]" in warning
    assert missing_runtimes(CPU_ONLY, nothing_importable) == (None, None)
    assert missing_runtimes(CUDA, nothing_importable) == (None, None)
    assert missing_runtimes({}, lambda module: True) == (None, None)  # a frozen bundle: no metadata, modules there
