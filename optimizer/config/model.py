"""Schema of conf/model/: which model to optimize."""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.config.checks import require


@dataclass
class ModelConfig:
    """Which model to optimize.

    `source` is the packaged alias `smollm2`, a local Hugging Face directory, a `.gguf` file, or
    a hub id (used only when the hub is reachable or the id is in the local HF cache).
    """

    source: str = "smollm2"
    revision: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        require(bool(self.source.strip()), "model.source", "is empty", "pass model=<dir|file.gguf|smollm2>")
