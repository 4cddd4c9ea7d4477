"""Shared pieces of the conversion pipeline: errors and step progress."""
from __future__ import annotations

import logging
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Iterator, TextIO


class ConversionError(Exception):
    """A conversion that cannot go on; the message is one line meant for the user."""


class ValidationFailedError(ConversionError):
    """The converted model does not match the PyTorch original closely enough."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


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
