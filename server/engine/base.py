"""The old name of `generation.py`, kept only for the two importers outside the engine that still use it
(server/registry.py: TextGenerator; server/protocol/common.py: SamplingParams). Delete this file once they
import from `ortserve.server.engine.generation`."""
from ortserve.server.engine.generation import SamplingParams, TextGenerator

__all__ = ["SamplingParams", "TextGenerator"]
