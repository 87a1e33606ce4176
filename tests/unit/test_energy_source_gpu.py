"""A CPU-only energy source (RAPL, the CPU-time estimate) never stands for a GPU target's energy,
and the report says why the estimate was used: asked for, or no counter readable."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from optimizer.config import TargetConfig
from optimizer.errors import UserError
from optimizer.measure import energy
from optimizer.measure.energy import EstimateMeter, make_meter
from optimizer.report.markdown import energy_source_note


@pytest.fixture
def rapl_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    domain = tmp_path / "powercap" / "intel-rapl:0"
    domain.mkdir(parents=True)
    (domain / "energy_uj").write_text("1\n")
    (domain / "max_energy_range_uj").write_text("1000000000\n")
    (domain / "name").write_text("package-0\n")
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "powercap")


@pytest.mark.parametrize("source", ["rapl", "estimate"])
def test_a_cpu_only_source_is_refused_on_a_gpu_target(source: str, rapl_readable: None, make_target) -> None:
    """The GPU's joules were not counted at all, and the report called the figures measured (RAPL)
    or meaningful between candidates (the estimate)."""
    with pytest.raises(UserError) as info:
        make_meter(make_target(kind="cuda", energy_source=source))
    assert info.value.field == "target.energy_source"
    assert "GPU" in info.value.problem and source in info.value.problem
    assert "nvml" in info.value.fix and "target=cpu" in info.value.fix


@pytest.mark.parametrize("source", ["rapl", "estimate"])
def test_a_cuda_target_config_refuses_a_cpu_only_source(source: str) -> None:
    with pytest.raises(UserError) as info:
        TargetConfig(kind="cuda", energy_source=source)
    assert info.value.field == "target.energy_source"
    TargetConfig(kind="auto", energy_source=source)  # resolved (and checked) by make_meter
    TargetConfig(kind="cpu", energy_source=source)


def test_an_asked_for_estimate_is_not_explained_as_no_counter(rapl_readable: None, make_target) -> None:
    """target.energy_source=estimate on a host with RAPL: the note said "no NVML GPU, no RAPL"."""
    target = make_target(energy_source="estimate")
    meter = make_meter(target)
    assert isinstance(meter, EstimateMeter)
    note = energy_source_note(meter.source, SimpleNamespace(target=target))
    assert "ESTIMATE" in note and "target.energy_source=estimate" in note
    assert "no RAPL" not in note and "no energy counter" not in note


def test_a_fallen_back_estimate_says_no_counter_is_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_target
) -> None:
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "missing")
    target = make_target(energy_source="auto")
    meter = make_meter(target)
    assert meter.source == "estimate"
    note = energy_source_note(meter.source, SimpleNamespace(target=target))
    assert "no energy counter is readable" in note and "RAPL" in note
