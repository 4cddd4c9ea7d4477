"""ortserve: a local OpenAI-compatible model server on ONNX Runtime."""

__version__ = "0.1.0"
