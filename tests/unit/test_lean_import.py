"""`import optimizer` stays light: no torch, transformers, hydra or NVML until they are needed."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "torch",
    "transformers",
    "hydra",
    "pynvml",
    "omegaconf",
    "matplotlib",
    "torchao",
    "onnxruntime",
    "onnxruntime_genai",
    "onnx",
    "onnxscript",
    "tensorrt",
    "sqlalchemy",
    "optuna",
    "ray",
    "submitit",
)


def _loaded_after(code: str) -> list[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_optimizer_is_light() -> None:
    loaded = _loaded_after("import optimizer")
    assert "optimizer" in loaded
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert heavy == []


def test_public_api_is_lazy() -> None:
    loaded = _loaded_after(
        "import optimizer\nassert sorted(optimizer.__all__) == ['Engine', 'load_recipe', 'optimize']"
    )
    assert not any(m.split(".")[0] in ("torch", "transformers") for m in loaded)
    # naming the API resolves it without error
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import optimizer; print(optimizer.optimize.__name__, optimizer.load_recipe.__name__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.split() == ["optimize", "load_recipe"]


def test_config_and_cli_modules_do_not_import_torch() -> None:
    loaded = _loaded_after("import optimizer.config, optimizer.cli, optimizer.errors")
    assert not any(m.split(".")[0] in ("torch", "transformers", "pynvml") for m in loaded)


def test_space_and_backend_registry_import_no_runtime() -> None:
    loaded = _loaded_after("import optimizer.space, optimizer.backends.base, optimizer.backends.registry")
    assert not any(m.split(".")[0] in HEAVY for m in loaded)
