"""Schema of conf/quality/: the quality bound relative to the unoptimized reference."""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.config.checks import require, require_finite, require_subset

# What candidates are compared with, and how reports name it: the model run eagerly by torch in a
# precision (fp32, the default, de-quantizes a GGUF; bf16 and fp16 hold half as much, for a
# checkpoint shipped in that precision whose fp32 copy would not fit), or a GGUF model's file as
# shipped, run by llama.cpp (no de-quantized copy).
QUALITY_REFERENCES = {
    "fp32": "fp32 eager",
    "bf16": "bf16 eager",
    "fp16": "fp16 eager",
    "gguf": "the GGUF as shipped (llama.cpp)",
}
HALF_REFERENCES = ("bf16", "fp16")


@dataclass
class QualityConfig:
    """Quality bound relative to the unoptimized reference on held-out text.

    `reference` is `fp32` (the model in fp32, torch eager: a GGUF is de-quantized into the cache
    first), `bf16` or `fp16` (torch eager in that precision: for a checkpoint shipped in it whose
    fp32 copy would not fit; the baseline then runs in that precision too), or `gguf` (a GGUF
    model's own file as shipped, run by llama.cpp at batch 1: for a GGUF whose fp32 copy would not
    fit; the baseline is then that file at the baseline's batch size).

    `text` is `wiki` (the packaged Wikipedia lead paragraphs) or a path to a `.txt` (paragraphs
    separated by blank lines), `.json` or `.jsonl` file. Workload prompts come from the same text;
    every fifth paragraph is held out for quality.
    """

    text: str = "wiki"
    num_sequences: int = 16
    seq_tokens: int = 128
    max_ppl_increase: float = 0.03
    min_top1_agreement: float = 0.95
    max_kl: float = 0.05
    batch_size: int = 4
    reference: str = "fp32"

    def __post_init__(self) -> None:
        require_finite(self, "quality")
        require_subset([self.reference], list(QUALITY_REFERENCES), "quality.reference")
        require(
            bool(self.text.strip()),
            "quality.text",
            "is empty",
            "quality.text=wiki, or a path to a .txt, .json or .jsonl file",
        )
        require(self.num_sequences >= 1, "quality.num_sequences", "must be >= 1", "e.g. 16")
        require(self.seq_tokens >= 8, "quality.seq_tokens", "must be >= 8", "e.g. 128")
        require(self.batch_size >= 1, "quality.batch_size", "must be >= 1", "e.g. 4")
        require(
            self.max_ppl_increase >= 0,
            "quality.max_ppl_increase",
            f"is {self.max_ppl_increase}: no candidate can beat the reference by construction",
            "use a relative increase >= 0, e.g. 0.03 for 3%",
        )
        require(
            0 <= self.min_top1_agreement <= 1,
            "quality.min_top1_agreement",
            f"is {self.min_top1_agreement}, outside [0, 1]",
            "use a fraction, e.g. 0.95",
        )
        require(
            self.max_kl >= 0, "quality.max_kl", f"is {self.max_kl} < 0", "use a KL in nats >= 0, e.g. 0.05"
        )
