"""evals/gpu_check.py's 8B plan after a row compiled by layer fails (compile_layers has never run
on a GPU): the device minutes left go to the same rows compiled whole, not to a second failure."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from optimizer.space import TorchSettings

GPU_CHECK = Path(__file__).resolve().parents[2] / "evals" / "gpu_check.py"


def load_gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loop(quantization: str = "none", compile_layers: bool = False) -> TorchSettings:
    return TorchSettings(
        precision="bf16",
        quantization=quantization,
        kv_cache="static",
        compile=True,
        attention="sdpa_gqa",
        loop="graph",
        compile_layers=compile_layers,
    )


def test_a_failed_by_layer_row_runs_again_compiled_whole_and_so_do_the_rest() -> None:
    gpu_check = load_gpu_check()
    failed = ("captured loop by layer, sdpa_gqa, fp8-static", loop("fp8-static", True), 512)
    rest = [
        ("captured loop by layer, sdpa_gqa", loop(compile_layers=True), 512),
        ("captured loop + compiled step, sdpa_gqa", loop(), 512),  # the by-layer row's twin
        ("captured loop + compiled step, sdpa_gqa", loop(), 1024),
    ]
    plan = gpu_check.compiled_whole_instead(failed, rest)
    assert [(settings, batch) for _, settings, batch in plan] == [
        (loop("fp8-static"), 512),
        (loop(), 512),
        (loop(), 1024),
    ]
    assert [name for name, _, _ in plan] == [
        "captured loop compiled whole, sdpa_gqa, fp8-static (by layer failed)",
        "captured loop compiled whole, sdpa_gqa (by layer failed)",
        "captured loop + compiled step, sdpa_gqa",
    ]
    # nothing compiled by layer behind a failure: the rest as they were
    assert gpu_check.compiled_whole_instead(rest[1], rest[2:]) == rest[1:]
