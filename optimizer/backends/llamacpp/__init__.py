"""llama.cpp through llama-cpp-python (backend `llamacpp`): the model's GGUF as it is or requantized
by llama.cpp's own quantizer, a quantized KV cache, flash attention, and many sequences decoded at
once through the batch API (one sequence id per request), scheduled here in-process."""
