"""A CLI run validates its config once: the target's presets are chosen from the settings as
composed, so a config warning is said once, and never about a preset the run does not take."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from optimizer import cli
from optimizer import target as target_module
from optimizer.config import RunConfig, compose_run_config
from optimizer.config import workload as workload_module
from optimizer.target_defaults import compose_for_target
from unit.test_target import fake_pynvml

TURN_GAP = "workload.turn_gap_seconds="


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)


@pytest.fixture
def said(monkeypatch: pytest.MonkeyPatch) -> Iterator[Records]:
    """What optimizer's loggers say, each warning as often as it is raised: the turn-gap warning
    without its once-per-value cache, which would hide a second validation."""
    warn = workload_module.warn_unused_turn_gap
    monkeypatch.setattr(workload_module, "warn_unused_turn_gap", getattr(warn, "__wrapped__", warn))
    monkeypatch.setattr(cli, "_setup_logging", lambda: None)  # it would replace the handler
    records = Records()
    ours = logging.getLogger("optimizer")
    level = ours.level
    ours.addHandler(records)
    ours.setLevel(logging.INFO)
    yield records
    ours.removeHandler(records)
    ours.setLevel(level)


@pytest.fixture
def h100(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML sees an H100 and torch can use CUDA."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    monkeypatch.setattr(target_module, "_torch_cuda_usable", lambda: True)
    monkeypatch.setattr(target_module, "_gpu_count", lambda: 1)


def without_time(cfg: RunConfig) -> RunConfig:
    """output_dir holds the composition's second: two compositions may straddle one."""
    return dataclasses.replace(cfg, output_dir="outputs")


@pytest.mark.parametrize("target", ["target=cpu", "target=h200"])
def test_a_cli_run_says_a_config_warning_once(
    target: str, said: Records, capsys: pytest.CaptureFixture[str]
) -> None:
    # a CPU takes cpu-agent for the agent's shared prefixes, a GPU gpu-default: both composed again
    assert cli.main(["--show-config", target, "workload=agent", "workload.turns=1"]) == 0
    assert "turns: 1" in capsys.readouterr().out
    assert said.count(TURN_GAP) == 1, said.lines
    assert said.count("space=cpu-agent" if target == "target=cpu" else "space=gpu-default") == 1


@pytest.mark.usefixtures("h100")
def test_no_warning_about_a_preset_the_run_does_not_take(tmp_path: Path, said: Records) -> None:
    """The user's chat preset (the CPU default) sets a gap its single turns ignore; on a GPU the
    run takes gpu-chat, and the user's h100 preset is read for its figures alone."""
    (tmp_path / "workload").mkdir()
    (tmp_path / "workload" / "chat.yaml").write_text("kind: serving\nturns: 1\nturn_gap_seconds: 3\n")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "h100.yaml").write_text(
        "kind: cuda\nname: h100\nmemory_bandwidth_gb_per_s: 2000\n"
    )
    cfg = compose_for_target(["target=auto"], config_dir=tmp_path)
    assert cfg.workload == compose_run_config(["workload=gpu-chat"], tmp_path).workload
    # the FLOP/s the user's preset leaves out are detection's, from the packaged preset
    assert (cfg.target.memory_bandwidth_gb_per_s, cfg.target.peak_bf16_tflops) == (2000, None)
    assert said.count(TURN_GAP) == 0, said.lines
    # taken on a CPU, the same preset is warned about, once
    cpu = compose_for_target(["target=cpu"], config_dir=tmp_path)
    assert cpu.workload.turn_gap_seconds == 3 and said.count(TURN_GAP) == 1


@pytest.mark.parametrize(
    ("overrides", "presets"),
    [
        (["target=cpu"], []),
        (["target=cpu", "workload=agent", "workload.turns=1"], ["space=cpu-agent"]),
        (["target=cpu", "workload=agent", "space=cpu-default"], []),
        (
            ["target=h200", "space.batch_sizes=[4]", "workload.rate=5"],
            ["space=gpu-default", "workload=gpu-chat"],
        ),
        (["target=h200", "workload=agent"], ["space=gpu-default"]),
    ],
)
def test_the_composed_config_is_the_presets_then_the_overrides(
    overrides: list[str], presets: list[str]
) -> None:
    cfg = compose_for_target(overrides)
    assert without_time(cfg) == without_time(compose_run_config([*presets, *overrides]))
    assert cfg.composed_output_dir == cfg.output_dir


@pytest.mark.usefixtures("h100")
def test_target_auto_on_a_gpu_takes_the_gpu_presets_and_overrides_still_win() -> None:
    cfg = compose_for_target(["target=auto", "workload.rate=7", "target.peak_bf16_tflops=500"])
    expected = compose_run_config(["space=gpu-default", "workload=gpu-chat", "workload.rate=7"])
    assert (cfg.space, cfg.workload) == (expected.space, expected.workload)
    assert cfg.workload.rate == 7 and cfg.target.peak_bf16_tflops == 500
    assert cfg.target.memory_bandwidth_gb_per_s is None  # detection fills the packaged preset's


def test_an_invalid_target_is_named_by_the_validation(tmp_path: Path) -> None:
    from optimizer.errors import UserError

    with pytest.raises(UserError, match="target.memory_bandwidth_gb_per_s"):
        compose_for_target(["target=auto", "target.memory_bandwidth_gb_per_s=-1"], config_dir=tmp_path)
