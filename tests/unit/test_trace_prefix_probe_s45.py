"""Whether a trace shares prefixes is read from its text while the config is composed: as the run
reads the trace (a BOM dropped, lines split at line ends only), not by str.splitlines, which split
a prompt holding U+2028 and missed a BOM-prefixed first line."""

from __future__ import annotations

import json
from pathlib import Path

from optimizer.target_defaults import trace_shares_prefixes


def _trace(path: Path, bom: str) -> Path:
    lines = [
        {"arrival": 0.0, "prompt": "system\u2028rules", "output_tokens": 4, "conversation": "c"},
        {"arrival": 1.0, "prompt": "system\u2028rules and more", "output_tokens": 4, "conversation": "c"},
    ]
    path.write_text(bom + "\n".join(json.dumps(item, ensure_ascii=False) for item in lines), encoding="utf-8")
    return path


def test_a_conversation_with_a_line_separator_in_its_prompt_shares_its_prefix(tmp_path: Path) -> None:
    assert trace_shares_prefixes(_trace(tmp_path / "t.jsonl", ""))


def test_a_bom_before_the_first_line_is_read_as_the_run_reads_it(tmp_path: Path) -> None:
    assert trace_shares_prefixes(_trace(tmp_path / "t.jsonl", "\ufeff"))
