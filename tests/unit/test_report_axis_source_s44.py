"""The Pareto plot's axis names the energy source its points were measured by: results reused from a
run whose NVML counter fell back to polled power read `nvml-power-poll` in the report's energy
note, and the axis said `nvml`, this run's meter."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from matplotlib.figure import Figure

from optimizer.config import RunConfig
from optimizer.report.markdown import write_report
from optimizer.search.runner import SearchOutcome

from .factories import candidate_result, performance_result, quality_result, target_spec, torch_candidate


def _report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sources: list[str]) -> tuple[str, str]:
    """report.md and the Pareto plot's y label of a run whose meter reads `nvml`, its results'
    windows measured by `sources`."""
    saved: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: saved.append(self))
    model = SimpleNamespace(
        name="tiny",
        source="/m/tiny",
        format="hf-dir",
        weight_sha256="ab" * 32,
        shape=SimpleNamespace(num_parameters=3_000_000),
    )
    setup = SimpleNamespace(
        model=model, target=target_spec(kind="cuda"), meter=SimpleNamespace(source="nvml"), stream=None
    )
    results = [
        candidate_result(
            torch_candidate(batch_size=2**i),
            role="baseline" if i == 0 else "candidate",
            quality=quality_result(),
            performance=performance_result(1.0 + i, source=source),
        )
        for i, source in enumerate(sources)
    ]
    outcome = SearchOutcome(
        baseline=results[0], baseline_in_space=True, results=results, not_reached=[], measuring_seconds=1.0
    )
    text = write_report(tmp_path, RunConfig(), setup, outcome, [], results[-1], 1.0, None).read_text()
    return text, saved[0].axes[0].get_ylabel()


def test_windows_of_one_other_source_are_labelled_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, axis = _report(tmp_path, monkeypatch, ["nvml-power-poll", "nvml-power-poll"])
    assert "(`nvml-power-poll`: this GPU has no total-energy counter" in text
    assert axis == "goodput tokens/J (nvml-power-poll)"


def test_the_axis_of_mixed_sources_names_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, axis = _report(tmp_path, monkeypatch, ["nvml", "nvml-power-poll"])
    assert axis == "goodput tokens/J (nvml+nvml-power-poll)"


def test_the_meters_own_source_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, axis = _report(tmp_path, monkeypatch, ["nvml", "nvml"])
    assert axis == "goodput tokens/J (nvml)"
    assert "device kWh are the GPU boards' (NVML) energy only" in text
