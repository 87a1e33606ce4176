"""What the llama.cpp backend raises: llama.cpp's own reason, as it gave it."""

from __future__ import annotations


class LlamaCppBuildError(RuntimeError):
    """A llama.cpp candidate could not be built (its GGUF, its quantization, its context)."""


class LlamaCppError(RuntimeError):
    """llama.cpp failed while running (a decode)."""
