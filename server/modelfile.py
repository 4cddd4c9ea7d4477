"""Ollama's Modelfile, as model management reads it (durations: `ortserve.core.durations`).

Pure functions, no I/O: `parse_modelfile(text)` returns a `Modelfile`, or raises
`ModelfileError` listing every bad line by its number.

What a Modelfile can say here (instructions and parameter names are
case-insensitive, as in Ollama):

  FROM <model in the store | local folder | hub id>      exactly once
  PARAMETER <name> <value>                               see PARAMETERS; `stop` may repeat
  SYSTEM <text> | SYSTEM "<text>" | SYSTEM \"\"\"<text>\"\"\"  the last one wins; a quoted value may span lines
  # a comment

Errors (nothing is created): a missing or repeated FROM, an unknown instruction
or parameter, a bad value, and what would change what the model reads or how it
samples without us being able to do it: TEMPLATE (we always use the model's own
chat template), ADAPTER, MESSAGE, and the sampling parameters we do not
implement (mirostat*, tfs_z, typical_p, min_p, repeat_last_n, penalize_newline).
Warnings (the line is ignored): LICENSE and REQUIRES, which are metadata, and
Ollama's hardware/runtime tuning parameters (num_gpu, num_thread, num_batch, ...),
which have no meaning for ONNX Runtime and never change the output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ortserve.core.model_config import IGNORED_PARAMETERS, UNSUPPORTED_PARAMETERS, ModelConfig, SamplingDefaults


class ModelfileError(ValueError):
    """A Modelfile that cannot be used; the message names every bad line."""


def _number(kind: type) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None

    return convert


def _num_predict(value: str) -> int | None:
    """Ollama's num_predict: a token count; -1 (no limit) and -2 (fill the context) both mean None here,
    since a request without max_tokens generates up to the end of the served context."""
    count = _number(int)(value)
    return None if count in (-1, -2) else count


# Ollama's name -> (our name: num_ctx or a SamplingDefaults field, how to read the value)
PARAMETERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "num_ctx": ("num_ctx", _number(int)),
    "temperature": ("temperature", _number(float)),
    "top_p": ("top_p", _number(float)),
    "top_k": ("top_k", _number(int)),
    "seed": ("seed", _number(int)),
    "num_predict": ("max_tokens", _num_predict),
    "repeat_penalty": ("repetition_penalty", _number(float)),
    "presence_penalty": ("presence_penalty", _number(float)),
    "frequency_penalty": ("frequency_penalty", _number(float)),
    "stop": ("stop", str),
}
UNSUPPORTED_INSTRUCTIONS = {
    "TEMPLATE": "ortserve always renders prompts with the model's own chat template",
    "ADAPTER": "LoRA adapters cannot be applied to converted ONNX models yet",
    "MESSAGE": "a conversation that precedes every request is not supported",
}
IGNORED_INSTRUCTIONS = {"LICENSE", "REQUIRES"}
INSTRUCTIONS = {"FROM", "PARAMETER", "SYSTEM", *UNSUPPORTED_INSTRUCTIONS, *IGNORED_INSTRUCTIONS}


@dataclass
class Modelfile:
    source: str  # FROM: a stored model, a local folder or a hub id
    source_line: int = 1
    num_ctx: int | None = None
    system: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)  # SamplingDefaults fields
    warnings: list[str] = field(default_factory=list)

    def to_config(self, base: ModelConfig, weights: str | None) -> ModelConfig:
        """The new name's settings: the base's, overridden by what this Modelfile sets; no aliases (they stay
        the base's). `weights`: the folder it serves (None: its own, for a model converted under the name)."""
        defaults = SamplingDefaults(**{**base.defaults.model_dump(exclude_none=True), **self.defaults})
        update: dict[str, Any] = {"weights": weights, "aliases": [], "defaults": defaults.model_dump()}
        if self.num_ctx is not None:
            update["num_ctx"] = self.num_ctx
        if self.system is not None:
            update["system"] = self.system
        return ModelConfig(**{**base.model_dump(), **update})


def _quoted(lines: list[str], i: int, number: int, value: str) -> tuple[str, int]:
    """A value that opens a quote, read on (from `lines[i]`) until it closes, as Ollama reads it: \"\"\"...\"\"\"
    (stripped) or "..." (as is; it closes on the first line that ends with a quote); the value and the next i."""
    if value.startswith('"""'):
        body = [value[3:]]
        while '"""' not in body[-1]:
            if i >= len(lines):
                raise ModelfileError(f'line {number}: the """ opened here is never closed')
            body.append(lines[i])
            i += 1
        closed, _, after = body[-1].partition('"""')
        if after.strip():
            raise ModelfileError(f'line {number}: unexpected text after the closing """: {after.strip()!r}')
        body[-1] = closed
        return "\n".join(body).strip(), i
    body = [value]
    while len("\n".join(body).strip()) < 2 or not body[-1].rstrip().endswith('"'):
        if i >= len(lines):
            raise ModelfileError(f'line {number}: the " opened here is never closed')
        body.append(lines[i])
        i += 1
    return "\n".join(body).strip()[1:-1], i


def _logical_lines(text: str) -> list[tuple[int, str, str, str]]:
    """(line number, INSTRUCTION, parameter name or "", value unquoted) per instruction; a quoted value (the
    argument, or PARAMETER's after its name) may span lines."""
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")  # a BOM: Notepad
    out: list[tuple[int, str, str, str]] = []
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        instruction, *rest = line.split(maxsplit=1)  # the first word, and the rest from its first non-space
        value = rest[0] if rest else ""
        name = ""
        if instruction.upper() == "PARAMETER":
            name, value = (value.split(None, 1) + ["", ""])[:2]
        if value.startswith('"'):
            value, i = _quoted(lines, i, number, value)
        out.append((number, instruction.upper(), name.lower(), value))
    return out


def parse_modelfile(text: str) -> Modelfile:
    """Read a Modelfile; raise ModelfileError naming every line that cannot be used."""
    errors: list[str] = []
    warnings: list[str] = []
    sources: list[tuple[int, str]] = []
    values: dict[str, Any] = {}
    stops: list[str] = []
    system: str | None = None
    for number, instruction, name, argument in _logical_lines(text):
        where = f"line {number}"
        if instruction not in INSTRUCTIONS:
            errors.append(f"{where}: unknown instruction {instruction!r}")
        elif instruction in UNSUPPORTED_INSTRUCTIONS:
            errors.append(f"{where}: {instruction} is not supported ({UNSUPPORTED_INSTRUCTIONS[instruction]})")
        elif instruction in IGNORED_INSTRUCTIONS:
            warnings.append(f"{where}: {instruction} is ignored")
        elif instruction == "FROM":
            if not argument:
                errors.append(f"{where}: FROM needs a model name, a folder or a hub id")
            sources.append((number, argument))
        elif instruction == "SYSTEM":
            system = argument
        else:  # PARAMETER
            raw = argument
            if not name or not raw:
                errors.append(f"{where}: PARAMETER needs a name and a value")
            elif name in UNSUPPORTED_PARAMETERS:
                errors.append(f"{where}: PARAMETER {name} is not supported by ortserve's sampler")
            elif name in IGNORED_PARAMETERS:
                warnings.append(f"{where}: PARAMETER {name} is ignored (llama.cpp tuning, no meaning here)")
            elif name not in PARAMETERS:
                errors.append(f"{where}: unknown parameter {name!r}")
            else:
                ours, read = PARAMETERS[name]
                try:
                    value = read(raw)
                    if ours == "num_ctx":
                        ModelConfig(num_ctx=value)
                    elif ours != "stop":
                        SamplingDefaults(**{ours: value})
                except ValueError as exc:  # pydantic's ValidationError is a ValueError
                    reason = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
                    errors.append(f"{where}: PARAMETER {name}: {reason}")
                    continue
                if ours == "stop":
                    stops.append(value)
                else:
                    values[ours] = value
    if not sources and not errors:
        errors.append("the Modelfile has no FROM line")
    for number, _ in sources[1:]:
        errors.append(f"line {number}: only one FROM is allowed")
    if errors:
        raise ModelfileError("\n".join(errors))
    num_ctx = values.pop("num_ctx", None)
    if stops:
        values["stop"] = stops
    return Modelfile(
        source=sources[0][1],
        source_line=sources[0][0],
        num_ctx=num_ctx,
        system=system,
        defaults=values,
        warnings=warnings,
    )
