"""Measurement setup: the libraries' import-time noise stays out of the progress output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_importing_torchao_after_setup_prints_nothing_a_user_cannot_act_on(tmp_path: Path) -> None:
    pytest.importorskip("torchao")
    quiet = "from optimizer.measure.setup import _quiet_libraries; _quiet_libraries(Path(sys.argv[1]))\n"
    code = "import sys\nfrom pathlib import Path\n{}import torchao\n"
    noisy = subprocess.run(
        [sys.executable, "-c", code.format(""), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    if "is an Enum subclass" not in noisy.stderr:
        pytest.skip("this torch/torchao pair does not warn about its Enums")
    quieted = subprocess.run(
        [sys.executable, "-c", code.format(quiet), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert quieted.returncode == 0, quieted.stderr[-2000:]
    assert "is an Enum subclass" not in quieted.stderr and "Failed to load" not in quieted.stderr


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (
            ["workload=batch", "workload.prompt_tokens=8000", "workload.max_new_tokens=200"],
            "workload.prompt_tokens",
        ),
        (
            [
                "workload=chat",
                "workload.prompt_lengths.min=9000",
                "workload.prompt_lengths.max=9000",
                "workload.prompt_lengths.mean=9000",
            ],
            "workload.prompt_lengths.max",
        ),
        (["workload=batch", "quality.seq_tokens=9000"], "quality.seq_tokens"),
    ],
)
def test_requests_or_quality_windows_past_the_models_context_are_refused(
    overrides: list[str], field: str
) -> None:
    from optimizer.config import compose_run_config
    from optimizer.errors import UserError
    from optimizer.measure.setup import check_context

    cfg = compose_run_config(overrides)
    with pytest.raises(UserError) as info:
        check_context(cfg.workload, cfg.quality, 8192)
    assert info.value.field == field and "8192" in info.value.problem
    check_context(cfg.workload, cfg.quality, None)  # a model that states no context: nothing to check
    check_context(cfg.workload, cfg.quality, 100_000)
