"""PyTorch backend: HF transformers with torchao quantization, compile and our decode loops."""
