"""Runtime availability is read from module specs and metadata, without importing anything."""

from __future__ import annotations

import subprocess
import sys

from optimizer.backends import installed


def test_present_and_absent_modules_and_distributions() -> None:
    assert installed.has_module("json")
    assert not installed.has_module("no_such_module_wattsmith")
    assert not installed.has_module("no_such_package.sub")
    assert installed.has_distribution("pytest")
    assert not installed.has_distribution("no-such-distribution-wattsmith")


def test_probing_imports_no_runtime() -> None:
    code = (
        "import sys\n"
        "from optimizer.backends import installed\n"
        "print(installed.missing_genai('cuda'), installed.missing_onnx_runtime('tensorrt'), installed.missing_tensorrt())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'onnxruntime_genai', 'onnx', 'tensorrt', 'torch')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
