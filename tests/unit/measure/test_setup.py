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
