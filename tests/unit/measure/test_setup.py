"""Measurement setup: the libraries' import-time noise stays out of the progress output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch


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


def _setup(overrides: list[str], cache: Path, convert_gguf: bool) -> Any:
    from optimizer.config import compose_run_config
    from optimizer.measure.setup import prepare_measurement

    cfg = compose_run_config(overrides)
    return prepare_measurement(cfg.model, cfg.target, cfg.workload, cfg.quality, cache, 4, convert_gguf)


def test_a_gguf_left_as_it_is_is_measured_with_the_tokens_its_conversion_gives(tmp_path: Path) -> None:
    """llama.cpp against the GGUF as shipped: the tokenizer and the context come from the file's
    own metadata, and the prompts, quality windows and request stream are the converted model's."""
    overrides = ["model=smollm2", "workload=chat", "quality.num_sequences=3", "quality.seq_tokens=32"]
    shipped = _setup([*overrides, "quality.reference=gguf"], tmp_path / "a", convert_gguf=False)
    assert shipped.model.path.suffix == ".gguf" and not (tmp_path / "a" / "models").exists()
    converted = _setup(overrides, tmp_path / "b", convert_gguf=True)
    assert converted.model.path.is_dir()
    assert torch.equal(shipped.quality_tokens, converted.quality_tokens)
    assert torch.equal(shipped.workload.prompts, converted.workload.prompts)
    assert shipped.stream is not None and converted.stream is not None
    assert shipped.stream.sha256 == converted.stream.sha256
    # the context a conversion's config.json states (8192), read from the GGUF
    from optimizer.errors import UserError

    with pytest.raises(UserError) as info:
        too_long = ["workload.prompt_tokens=8000", "workload.max_new_tokens=200"]
        _setup(["model=smollm2", "workload=batch", *too_long], tmp_path / "a", convert_gguf=False)
    assert info.value.field == "workload.prompt_tokens" and "8192" in info.value.problem


def test_a_gguf_reference_needs_a_gguf_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    from optimizer.errors import UserError

    with pytest.raises(UserError) as info:
        _setup([f"model={tiny_model_dir}", "workload=quick", "quality.reference=gguf"], tmp_path, False)
    assert info.value.field == "quality.reference" and "hf-dir" in info.value.problem
