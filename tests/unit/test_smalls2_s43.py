"""Small defects: suffixes in any case (MODEL.GGUF, OLD.JSONL); the workload prompts' error counts
the workload split and names the settings that fix it; capacity req/s without e-notation; a rank
that raised leaves no torch error file behind."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from optimizer.backends.base import Generation
from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch_parallel import engine as engine_module
from optimizer.backends.torch_parallel.engine import ParallelEngine
from optimizer.backends.torch_parallel.layout import RankFailed
from optimizer.backends.torch_parallel.ranks import GroupPlan
from optimizer.config import ModelConfig
from optimizer.errors import UserError
from optimizer.measure.text import load_text, workload_windows
from optimizer.measure.workload import ServingSummary
from optimizer.model import resolve_model
from optimizer.report.serving import serving_section
from optimizer.search.plan import MIN_PROMPTS
from optimizer.store.tables import store_url
from unit.factories import candidate_result, performance_result


@pytest.mark.parametrize("name", ["MODEL.GGUF", "m.Gguf"])
def test_an_upper_case_gguf_suffix_is_read_as_a_gguf(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"")  # empty: the GGUF check, not the 'neither' error, answers
    with pytest.raises(UserError) as info:
        resolve_model(ModelConfig(source=str(tmp_path / name)), tmp_path / "cache")
    assert info.value.field == "model.source"
    assert info.value.problem == f"{tmp_path / name} is empty"


@pytest.mark.parametrize("name", ["OLD.JSONL", "t.JsonL"])
def test_an_upper_case_jsonl_store_is_the_old_store(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError) as info:
        store_url(tmp_path / name)
    assert info.value.field == "store_path" and "JSONL store" in info.value.problem
    assert not (tmp_path / name).exists()


class CharTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_too_short_prompt_text_counts_the_workload_split_and_names_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\n\n".join(f"p{i}" for i in range(10)))  # 40 tokens; the workload split's 32
    with pytest.raises(UserError) as info:
        workload_windows(CharTokenizer(), load_text(str(path)), prompt_tokens=8, pool=16)
    error = info.value
    assert error.field == "workload.prompt_tokens"
    assert error.problem.startswith(f"the workload split of {path} (")
    assert "4 of every 5" in error.problem and "yields 32 tokens, 128 are needed" in error.problem
    assert "quality.text" in error.fix and "workload.prompt_tokens (8)" in error.fix
    assert "space.batch_sizes" in error.fix and "16 prompts" in error.fix
    assert f"at least {MIN_PROMPTS}" in error.fix  # the pool's floor, as the search sets it


def test_prepare_measurement_says_the_workload_split_was_short(tiny_model_dir: Path, tmp_path: Path) -> None:
    from optimizer.config import compose_run_config
    from optimizer.measure.setup import prepare_measurement

    path = tmp_path / "t.txt"
    path.write_text("\n\n".join(f"p{i}" for i in range(10)))
    cfg = compose_run_config([f"model={tiny_model_dir}", "workload=quick", f"quality.text={path}"])
    with pytest.raises(UserError) as info:
        prepare_measurement(cfg.model, cfg.target, cfg.workload, cfg.quality, tmp_path, 16)
    assert info.value.field == "workload.prompt_tokens"
    assert f"the workload split of {path}" in info.value.problem
    assert "16 prompts" in info.value.fix and "quality.text" in info.value.fix


def test_prompts_come_from_the_workload_split(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\n\n".join(f"p{i}" for i in range(10)))
    windows = workload_windows(CharTokenizer(), load_text(str(path)), prompt_tokens=3, pool=2, start=(1,))
    assert windows == [[1, ord("p"), ord("1")], [1, ord("\n"), ord("\n")]]


def _capacity_cell(capacity: float | None) -> str:
    serving = ServingSummary(
        stream="chat",
        stream_sha256="ab" * 32,
        rate=1.0,
        offered_rate=1.0,
        requests=10,
        window_requests=10,
        met_slo_fraction=1.0,
        joules_per_request=6.0,
        idle_fraction=0.0,
        mean_in_flight=1.0,
        growing_windows=0,
        ttft_p90_ms=100.0,
        e2e_p90_ms=100.0,
        max_lateness_ms=0.0,
        capacity_rate=capacity,
    )
    result = candidate_result(performance=replace(performance_result(), serving=serving))
    row = next(line for line in serving_section([result], Path("/nonexistent")) if line.startswith("| torch"))
    return row.split(" | ")[9]


@pytest.mark.parametrize(
    ("capacity", "shown"),
    [
        (1280.0, "1280"),
        (999.6, "1000"),
        (12000.0, "12000"),
        (12.5, "12.5"),
        (6.0, "6"),
        (0.25, "0.25"),
        (None, "-"),
    ],
)
def test_capacity_prints_without_e_notation(capacity: float | None, shown: str) -> None:
    assert _capacity_cell(capacity) == shown


class _FailingEngine:
    """Stands for a rank's TorchEngine whose generate raises."""

    device = torch.device("cpu")

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        raise RuntimeError("boom in generate")


def _rank_failing_generate(local_rank: int, plan: GroupPlan, commands: list[Any], results: Any) -> None:
    """The real rank entry point, in the spawned rank, with an engine whose generate raises."""
    from optimizer.backends.torch_parallel import ranks

    ranks.start_rank = lambda rank, group: _FailingEngine()
    ranks.rank_main(local_rank, plan, commands, results)


def _rank_failing_start(local_rank: int, plan: GroupPlan, commands: list[Any], results: Any) -> None:
    from optimizer.backends.torch_parallel import ranks

    def fail(rank: int, group: GroupPlan) -> Any:
        raise RuntimeError("boom at start")

    ranks.start_rank = fail
    ranks.rank_main(local_rank, plan, commands, results)


@pytest.mark.parametrize("fails", ["generate", "start"])
def test_a_failed_rank_leaves_no_torch_error_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fails: str
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where torch puts a rank's error file
    foreign = tmp_path / "pytorch-errorfile-another.pickle"  # another process's: not ours to remove
    foreign.write_bytes(b"")
    plans = [GroupPlan(r, 1, 0, 0, (), (), None, TorchSettings(), 60.0) for r in range(2)]  # type: ignore[arg-type]
    if fails == "generate":
        monkeypatch.setattr(engine_module, "rank_main", _rank_failing_generate)
        engine = ParallelEngine(plans)
        with pytest.raises(RankFailed, match="boom in generate"):
            engine.generate(torch.tensor([[7, 1], [8, 1]]), 3)
        engine.close()
    else:
        monkeypatch.setattr(engine_module, "rank_main", _rank_failing_start)
        with pytest.raises(RankFailed, match="boom at start"):
            ParallelEngine(plans)
    assert sorted(p.name for p in tmp_path.glob("pytorch-errorfile-*")) == [foreign.name]
