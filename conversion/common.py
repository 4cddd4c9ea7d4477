"""Shared pieces of the conversion pipeline: errors and step progress."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class ConversionError(Exception):
    """A conversion that cannot go on; the message is one line meant for the user."""


class ValidationFailedError(ConversionError):
    """The converted model does not match the PyTorch original closely enough."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


def decoder_problem(
    figures: dict, precision: str, greedy_match: int, prompts: int, min_cosine: float, position: str
) -> str | None:
    """A chat decoder's bar: an fp32 build reproduces transformers' greedy tokens on every prompt (recorded in
    `figures`), a quantized one keeps its `position` logits within `min_cosine` of PyTorch's; the problem, if any."""
    if precision == "fp32":
        figures["greedy_match"] = f"{greedy_match}/{prompts}"
        if greedy_match == prompts:
            return None
        return f"greedy tokens match transformers on {greedy_match}/{prompts} prompts"
    if figures["logits_cosine_min"] < min_cosine:
        return f"{position} logits cosine {figures['logits_cosine_min']} < {min_cosine}"
    return None


def conclude(problems: list[str | None], figures: dict, progress: Progress) -> dict:
    """Refuse the model if any check found a problem; else report its figures."""
    found = [p for p in problems if p]
    if found:
        raise ValidationFailedError(f"validation failed: {'; '.join(found)} (figures: {figures})", figures)
    progress.info(f"    validation: {figures}")
    return figures


def link_or_copy(src: str, dst: str) -> str:
    """A hard link to a downloaded file (no second copy on disk), else a copy; for `shutil.copytree`."""
    real = os.path.realpath(src)  # the Hugging Face cache's snapshot files are links to its blobs
    try:
        os.link(real, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(real, dst)
    return dst


class Progress:
    """Prints one line per long step (download, export, quantize, validate) with its duration."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.info(f"==> {name} ...")
        start = time.perf_counter()
        yield
        self.info(f"    {name}: done in {time.perf_counter() - start:.1f}s")


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the dynamo exporter's known noise (axis-name notes, torch's own pytree deprecation)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)
