"""ONNX Runtime backend: our ONNX export of the decoder in an ONNX Runtime session (CPU, CUDA or
TensorRT execution provider)."""
