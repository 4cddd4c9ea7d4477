"""ortserve conversion: Hugging Face checkpoints to ONNX model folders."""
