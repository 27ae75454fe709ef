"""The ONNX export's support code: the builder's architectures, streaming int4 quantization, memory checks."""
