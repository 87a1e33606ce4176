"""Native TensorRT backend: an engine built from our ONNX export of the decoder."""
