"""Chat-specific logic between the protocol and the engine: chat templates, tool-call formats and
their parsers, and the grammars that force JSON and tool calls. Pure Python: no Quart, no ONNX Runtime."""
