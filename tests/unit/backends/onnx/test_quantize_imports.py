"""Importing ORT's quantization tools must not change sys.path: `onnxruntime.transformers` appends
a folder holding an `optimizer.py`, which shadowed this package in spawned search workers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import multiprocessing, sys
from optimizer.backends.onnx.quantize import sys_path_kept

def child_imports_the_package() -> str:
    import optimizer.config
    return optimizer.config.__name__

if __name__ == "__main__":
    before = list(sys.path)
    import onnxruntime.transformers  # noqa: F401  (unguarded: does ORT still grow sys.path?)
    grown = len(sys.path) > len(before)
    assert grown, "onnxruntime.transformers no longer touches sys.path: the guard may go"
    sys.path[:] = before
    with sys_path_kept():
        import onnxruntime.quantization  # noqa: F401
    assert sys.path == before, sys.path
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        print(pool.apply(child_imports_the_package))
"""


def test_ort_quantization_import_leaves_sys_path_and_spawned_children_alone(tmp_path: Path) -> None:
    assert _last_line_printed_by(PROBE, tmp_path) == "optimizer.config"


def _last_line_printed_by(probe: str, tmp_path: Path) -> str:
    """Runs `probe` in a fresh interpreter (ORT's imports change process-wide state)."""
    # find_spec, not importorskip: importing it here would append that folder to *our* sys.path
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("needs onnxruntime (pip install 'wattsmith[ort]')")
    script = tmp_path / "probe.py"
    script.write_text(probe)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


ORDER_PROBE = """
import sys
from optimizer.backends.onnx.quantize import sys_path_kept

before = list(sys.path)
with sys_path_kept():  # an fp16 conversion first imports only this sibling
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: F401
with sys_path_kept():  # then a quantization, whose import needs the folder's other siblings
    from onnxruntime.quantization import quantize_dynamic  # noqa: F401
assert sys.path == before, sys.path
print("imported in both orders")
"""


def test_fp16_then_quantization_imports_in_one_process(tmp_path: Path) -> None:
    """A search that converts to fp16 and then quantizes in one process (found by the suite's
    order: `No module named 'fusion_utils'` when the folder was not put back)."""
    assert _last_line_printed_by(ORDER_PROBE, tmp_path) == "imported in both orders"
