"""Register a folder onnxruntime-genai already runs (as published for Phi-3.5-vision, Qwen2.5-VL, ...).

No conversion and no validation is possible (there is no PyTorch original), so the
manifest says so. The folder is copied as it is; its model type, context length,
modalities (a `vision` section means images) and device come from its genai_config.json.
On cpu the copy is loaded once with onnxruntime-genai and a text model generates two tokens (the manifest's
`smoke`), so a broken folder is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ortserve.conversion.common import ConversionError, Progress, link_or_copy

# genai model types we serve as chat (text, or text + image with a vision section)
_FAMILIES = {
    "phi3": "phi",
    "phi3v": "phi",
    "phi4mm": "phi",
    "qwen2": "hermes",
    "qwen3": "hermes",
    "qwen2_5_vl": "hermes",
    "qwen3_vl": "hermes",
    "fara": "hermes",
    "llama": "llama3",
    "mistral": "llama3",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3_text": "gemma",
}
_NOT_CHAT = ("whisper", "nemotron_speech", "parakeet", "marian-ssru")
_SKIPPED = "an already-converted onnxruntime-genai folder: there is no PyTorch original to validate against"


def _device(decoder: dict) -> str:
    options = (decoder.get("session_options") or {}).get("provider_options") or []
    names = {name.lower() for option in options if isinstance(option, dict) for name in option}
    for device in ("cuda", "dml"):
        if device in names:
            return device
    return "cpu"


def _smoke_generate(og, loaded, tokens: int = 2) -> int:
    """A few greedy tokens after a short prompt: the decoder runs, not only loads. Returns how many came."""
    prompt = og.Tokenizer(loaded).encode("Hello")
    params = og.GeneratorParams(loaded)
    params.set_search_options(max_length=len(prompt) + tokens, do_sample=False)
    generator = og.Generator(loaded, params)
    generator.append_tokens(prompt)
    made = 0
    while made < tokens and not generator.is_done():
        generator.generate_next_token()
        made += 1
    return made


def register_genai_folder(
    src: Path, out: Path, *, progress: Progress, check_load: bool = True, link: bool = False, label: str = ""
) -> dict:
    """Copy `src` into the staging folder `out` (`link`: hard links where the file system allows, for files
    downloaded into the Hugging Face cache); returns the manifest. `label` names the source in errors."""
    where = label or str(src)
    try:
        genai = json.loads((src / "genai_config.json").read_text(encoding="utf-8"))
        model = genai["model"]
        model_type = str(model["type"])
        context_length = int(model["context_length"])
        decoder = model["decoder"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConversionError(f"{src / 'genai_config.json'}: not an onnxruntime-genai config ({exc})") from None
    if model_type in _NOT_CHAT:
        raise ConversionError(f"{where}: onnxruntime-genai model type '{model_type}' is not a chat model")
    vision = model.get("vision")
    if vision:
        processor = vision.get("config_filename", "processor_config.json")
        if not (src / processor).is_file():
            raise ConversionError(f"{where}: has a vision model but no {processor}")
    missing = [
        f
        for f in (
            decoder.get("filename"),
            (vision or {}).get("filename"),
            (model.get("embedding") or {}).get("filename"),
        )
        if f and not (src / f).is_file()
    ]
    if missing:
        raise ConversionError(f"{where}: genai_config.json names files that are not there: {', '.join(missing)}")
    device = _device(decoder)
    smoke: dict = {}
    with progress.step(f"copy the onnxruntime-genai folder ({model_type})"):
        shutil.copytree(
            src,
            out,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("manifest.json", ".cache"),
            copy_function=link_or_copy if link else shutil.copy2,
        )
    if check_load and device == "cpu":
        import onnxruntime_genai as og

        with progress.step("load it once with onnxruntime-genai" + ("" if vision else " and generate")):
            try:
                loaded = og.Model(str(out))
                if vision:
                    loaded.create_multimodal_processor()
                else:
                    smoke = {"generated_tokens": _smoke_generate(og, loaded)}
            except Exception as exc:  # og raises RuntimeError with the reason
                reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                raise ConversionError(f"{where}: onnxruntime-genai cannot load it: {reason}") from None
            del loaded
    progress.info(f"    not validated: {_SKIPPED}")
    return {
        **({"smoke": smoke} if smoke else {}),
        "task": "chat",
        "modalities": ["text", "image"] if vision else ["text"],
        "architecture": None,
        "family": _FAMILIES.get(model_type, "generic"),
        "model_type": model_type,
        "precision": "prebuilt",
        "device": device,
        "context_length": context_length,
        "prebuilt": True,
        "validation": {"skipped": _SKIPPED},
    }
