"""onnxruntime-genai backend: the genai model builder's ONNX model, run by onnxruntime-genai."""
