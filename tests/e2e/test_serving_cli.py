"""`optimize` on request streams, on the real packaged SmolLM2: a chat stream with a load curve,
then an agent stream with prefix sharing on and off side by side."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cli_support import optimize

pytestmark = pytest.mark.slow

# Short streams of short requests under a loose SLO: these tests check the mechanics, not this
# machine's speed (under the chat preset's 250 ms TPOT, a busy 2-core host held only 1 req/s).
SHORT = [
    "workload.requests=12",
    "workload.repeats=1",
    "workload.warmup_requests=2",
    "workload.drain_requests=2",
    "workload.idle_seconds=0.5",
    "workload.prompt_lengths.mean=48",
    "workload.prompt_lengths.max=96",
    "workload.output_lengths.mean=12",
    "workload.output_lengths.min=4",
    "workload.output_lengths.max=24",
    "workload.slo.ttft_ms=10000",
    "workload.slo.tpot_ms=1000",
    "quality.num_sequences=2",
    "space.batch_sizes=[4]",
]


SLOTS = "backend:torch,batch_size:4,precision:bf16,kv_cache:static,loop:slots"


def test_chat_stream_writes_a_serving_recipe_and_a_load_curve(tmp_path: Path, cache_dir: Path) -> None:
    run = tmp_path / "chat"
    args = [*SHORT, "workload=chat", "workload.rate=2", "workload.rates=[1,2]", "space.extra=[]"]
    proc = optimize(*args, f"output_dir={run}", f"store_path={tmp_path / 'trials.db'}", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["settings"]["backend"] == "torch-cb"
    serving = recipe["evidence"]["serving"]
    assert serving["rate"] == 2.0 and len(serving["stream_sha256"]) == 64
    assert [p["rate"] for p in serving["load_curve"]] == [1.0, 2.0]
    assert recipe["measurement"]["workload"]["kind"] == "serving"
    report = (run / "report.md").read_text()
    assert "## Serving the stream" in report and "![Load curves](load.png)" in report
    lead = report.split("## Serving the stream", 1)[1].strip().splitlines()[0]
    # estimated joules (no energy counter here) are labelled where they are shown
    assert lead.startswith("**ESTIMATE**") == ("energy source: **ESTIMATE**" in report)
    assert (run / "load.png").stat().st_size > 10_000

    verify = optimize("verify", str(run / "recipe.yaml"), "--tolerance", "0.9", cache=cache_dir)
    assert "request stream sha256" in verify.stdout, verify.stdout + verify.stderr[-2000:]
    stream_line = next(line for line in verify.stdout.splitlines() if "request stream sha256" in line)
    assert "FAIL" not in stream_line  # the same seeded stream is replayed


def test_agent_stream_measures_prefix_reuse_side_by_side(tmp_path: Path, cache_dir: Path) -> None:
    run = tmp_path / "agent"
    args = [
        *SHORT,
        "workload=agent",
        "workload.turns=3",
        "workload.turn_gap_seconds=2",
        "workload.shared_prefix_tokens=128",
        "workload.rate=1.5",
        "space.torch_cb.prefix_sharing=[true,false]",
        "space.torch_cb.page_sizes=[16]",
        # and the slot loop's prefix store, on and off
        "space.extra=[" + ",".join(f"{{{SLOTS},prefix_sharing:{on}}}" for on in ("true", "false")) + "]",
    ]
    proc = optimize(*args, f"output_dir={run}", f"store_path={tmp_path / 'trials.db'}", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (run / "report.md").read_text()
    assert "### Prefix KV reuse" in report
    reuse_table = report.split("### Prefix KV reuse", 1)[1]  # other tables also list the candidate
    for engine in ("| torch-cb", "| torch bf16 kv=static loop=slots prefix"):
        row = next(line for line in reuse_table.splitlines() if line.startswith(engine))
        cells = [c.strip() for c in row.strip("|").split("|")]
        hits, lookups = (float(x) for x in cells[7].split("/"))
        assert hits > 0 and lookups >= hits, row
        assert cells[6] != "0%", row  # prompt tokens reused
