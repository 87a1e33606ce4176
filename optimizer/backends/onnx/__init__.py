"""What the ONNX Runtime and TensorRT backends share: the decoder's ONNX export, its ONNX Runtime
quantization, the step loop over a flat KV cache and TensorRT's optimization profile."""
