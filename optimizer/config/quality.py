"""Schema of conf/quality/: the quality bound relative to the unoptimized reference."""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.config.checks import require


@dataclass
class QualityConfig:
    """Quality bound relative to the fp32 eager reference on held-out text.

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

    def __post_init__(self) -> None:
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
