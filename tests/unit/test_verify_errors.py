"""verify where the recipe cannot be checked as it is: another device or energy source (NOT
VERIFIED, not a run-config error), what it stops on before preparing anything, the recorded input
files found from anywhere, and misspelt keys of the recipe's blocks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import optimizer.target
from optimizer import cli, verify
from optimizer.config import QualityConfig, TargetConfig, WorkloadConfig
from optimizer.errors import UserError
from optimizer.measure.energy import RaplMeter, make_meter
from optimizer.recipe import read_recipe, write_recipe
from optimizer.target import GIB, GpuInfo, TargetSpec, detect_target
from unit.factories import recipe_data, target_spec

REPO = Path(__file__).resolve().parents[2]


class _Stop(Exception):
    pass


@pytest.fixture
def prepared(monkeypatch: pytest.MonkeyPatch) -> list[tuple[TargetConfig, WorkloadConfig, QualityConfig]]:
    """prepare_measurement faked: it detects the target and makes the meter as the real one does
    (whose errors are what verify must turn into checks), records its configs, then stops."""
    calls: list[tuple[TargetConfig, WorkloadConfig, QualityConfig]] = []

    def prepare(model_cfg: Any, target_cfg: TargetConfig, workload: Any, quality: Any, *args: Any) -> None:
        make_meter(detect_target(target_cfg))
        calls.append((target_cfg, workload, quality))
        raise _Stop

    monkeypatch.setattr(verify, "prepare_measurement", prepare)

    def here(cfg: TargetConfig) -> TargetSpec:
        """This host's detection (and its errors) as the recipe's CPU: the device compared before
        preparing passes, and what a test checks is what comes after it."""
        return replace(detect_target(cfg), cpu_model="Test CPU", cores=2)

    monkeypatch.setattr(verify, "detect_target", here)
    return calls


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_recipe(path, data)


def _gpu_recipe(tmp_path: Path) -> Path:
    data = recipe_data()
    data["target"] = {"kind": "cuda", "name": "h100", "cpu_model": "Test CPU", "cores": 16}
    data["target"]["gpu"] = {"name": "NVIDIA H100 80GB HBM3"}
    data["evidence"]["energy"]["source"] = "nvml"
    return _write(tmp_path / "recipe.yaml", data)


def test_a_gpu_recipe_on_a_host_without_a_gpu_is_not_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared: list[Any]
) -> None:
    """The recipe's device is not here: a FAIL line and NOT VERIFIED (exit 2), not the run
    config's error, whose fix (`target=cpu`) verify cannot take; nothing is prepared."""
    monkeypatch.setattr(optimizer.target, "_detect_gpu", lambda index: None)
    path = _gpu_recipe(tmp_path)
    report = verify.verify_recipe(path)
    checks = {c.name: c for c in report.checks}
    assert not report.measured and not report.passed and prepared == []
    device = checks["device"]
    assert not device.passed and device.recorded == "NVIDIA H100 80GB HBM3"
    assert "CUDA GPU" in device.measured
    assert "energy source" not in checks  # no device to meter: not a second, derived FAIL
    assert report.render().splitlines()[-1].startswith("NOT VERIFIED")
    assert cli.main(["verify", str(path)]) == 2


def test_a_rapl_recipe_where_rapl_is_unreadable_is_not_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(RaplMeter, "package_domains", staticmethod(lambda: []))
    data = recipe_data()
    data["evidence"]["energy"] |= {"source": "rapl", "is_estimate": False}
    path = _write(tmp_path / "recipe.yaml", data)
    report = verify.verify_recipe(path)
    source = {c.name: c for c in report.checks}["energy source"]
    assert not report.measured and prepared == []
    assert not source.passed and source.recorded == "rapl" and "RAPL is not readable" in source.measured
    capsys.readouterr()
    assert cli.main(["verify", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "NOT VERIFIED" in out and "energy_source=estimate" not in out + err


def test_another_protocol_stops_verify_before_anything_is_prepared(
    tmp_path: Path, prepared: list[Any]
) -> None:
    """Preparing can de-quantize a GGUF (tens of GB) and tokenize everything: a recipe that the
    protocol alone rules out is NOT VERIFIED first."""
    data = recipe_data()
    data["measurement"]["protocol_version"] = 1
    report = verify.verify_recipe(_write(tmp_path / "recipe.yaml", data))
    protocol = {c.name: c for c in report.checks}["measurement protocol"]
    assert not protocol.passed and protocol.recorded == "1"
    assert not report.measured and prepared == []


def _prepare_must_not_run(*args: Any) -> None:
    raise AssertionError("prepare_measurement ran: a GGUF would be de-quantized for nothing")


@pytest.mark.parametrize(
    ("here", "measured"),
    [
        (target_spec(cores=8), "Test CPU, 8 cores"),
        (target_spec(cpu_model="Other CPU", cores=2), "Other CPU, 2 cores"),
    ],
)
def test_another_cpu_stops_verify_before_anything_is_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, here: Any, measured: str
) -> None:
    """Another CPU model or core count is another energy figure: FAIL device and NOT VERIFIED
    before preparing (a GGUF on a GPU de-quantizes tens of GiB first), one device line as ever."""
    monkeypatch.setattr(verify, "detect_target", lambda cfg: here)
    monkeypatch.setattr(verify, "prepare_measurement", _prepare_must_not_run)
    report = verify.verify_recipe(_write(tmp_path / "recipe.yaml", recipe_data()))
    devices = [c for c in report.checks if c.name == "device"]
    assert len(devices) == 1 and not devices[0].passed
    assert (devices[0].recorded, devices[0].measured) == ("Test CPU, 2 cores", measured)
    assert not report.measured and report.render().splitlines()[-1].startswith("NOT VERIFIED")
    assert any(line.startswith("  FAIL device ") for line in report.render().splitlines())


def test_another_gpu_stops_verify_before_anything_is_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a100 = GpuInfo("NVIDIA A100-SXM4-80GB", 0, 80 * GIB, "550.54", (8, 0), 400.0)
    monkeypatch.setattr(verify, "detect_target", lambda cfg: target_spec(kind="cuda", gpu=a100, cores=16))
    monkeypatch.setattr(verify, "make_meter", lambda target: SimpleNamespace(source="nvml"))
    monkeypatch.setattr(verify, "prepare_measurement", _prepare_must_not_run)
    report = verify.verify_recipe(_gpu_recipe(tmp_path))
    checks = {c.name: c for c in report.checks}
    assert [c.name for c in report.checks].count("device") == 1
    assert not checks["device"].passed and checks["device"].recorded == "NVIDIA H100 80GB HBM3"
    assert checks["device"].measured == "NVIDIA A100-SXM4-80GB"
    assert checks["energy source"].passed and not report.measured


def test_a_gguf_is_hashed_before_it_is_de_quantized(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared: list[Any]
) -> None:
    resolved: list[bool] = []

    def resolve(cfg: Any, cache: Path, convert_gguf: bool = True) -> Any:
        resolved.append(convert_gguf)
        return SimpleNamespace(weight_sha256="00" * 32)

    monkeypatch.setattr(verify, "resolve_model", resolve, raising=False)
    data = recipe_data()
    data["model"] |= {"format": "gguf", "source": "/models/tiny.gguf"}
    with pytest.raises(UserError) as info:
        verify.verify_recipe(_write(tmp_path / "recipe.yaml", data))
    assert info.value.field == "model.weight_sha256"
    assert resolved == [False] and prepared == []  # hashed as it is; nothing de-quantized


def _serving_recipe(folder: Path, trace: str, text: str = "wiki") -> Path:
    data = recipe_data()
    data["measurement"]["workload"] |= {"kind": "serving", "requests": 32, "trace": trace}
    data["measurement"]["quality"]["text"] = text
    return _write(folder / "recipe.yaml", data)


def test_a_relative_trace_and_text_are_found_next_to_the_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared: list[Any]
) -> None:
    """A recipe checked into a model repository with its trace and text beside it verifies from
    any directory (their hashes are compared as ever)."""
    repo = tmp_path / "repo"
    (repo / "traces").mkdir(parents=True)
    (repo / "traces" / "t.jsonl").write_text("{}\n")
    (repo / "text.txt").write_text("words\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(_Stop):
        verify.verify_recipe(_serving_recipe(repo, "traces/t.jsonl", "text.txt"))
    (_target, workload, quality) = prepared[0]
    assert workload.trace == str(repo / "traces" / "t.jsonl")
    assert quality.text == str(repo / "text.txt")


def test_a_relative_trace_falls_back_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared: list[Any]
) -> None:
    """Right after optimize: the recipe in outputs/<run>/, the trace where optimize ran."""
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "t.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(_Stop):
        verify.verify_recipe(_serving_recipe(tmp_path / "outputs" / "run", "traces/t.jsonl"))
    assert prepared[0][1].trace == str(tmp_path / "traces" / "t.jsonl")
    assert prepared[0][2].text == "wiki"  # the packaged text is no path


@pytest.mark.parametrize(
    ("trace", "text", "field"),
    [
        ("traces/t.jsonl", "wiki", "recipe.measurement.workload.trace"),
        ("/nowhere/t.jsonl", "wiki", "recipe.measurement.workload.trace"),
        (None, "texts/q.txt", "recipe.measurement.quality.text"),
    ],
)
def test_a_missing_input_file_names_the_recipes_field_and_a_fix_verify_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared: list[Any], trace: Any, text: str, field: str
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _serving_recipe(tmp_path / "repo", trace, text)
    with pytest.raises(UserError) as info:
        verify.verify_recipe(path)
    assert info.value.field == field and prepared == []
    assert "give the path" not in info.value.fix  # the run config's fix: verify takes no such path
    assert "recipe" in info.value.fix


@pytest.mark.parametrize(
    ("block", "key"),
    [
        ("measurement", "energy_estimat"),
        ("measurement", "protocol_versoin"),
        ("target", "cpu_modle"),
        ("evidence", "energie"),
    ],
)
def test_a_misspelt_key_of_a_recipe_block_is_refused_naming_it(tmp_path: Path, block: str, key: str) -> None:
    """A misspelt energy_estimate re-estimated with the default coefficients, against a figure
    measured with others; now it fails, naming the key."""
    data = recipe_data()
    data[block][key] = {"cpu_active_watts_per_core": 9.0, "cpu_idle_watts_per_core": 0.25}
    with pytest.raises(UserError) as info:
        read_recipe(_write(tmp_path / "recipe.yaml", data))
    assert info.value.field == f"recipe.{block}.{key}"


def test_the_recipes_in_the_repository_have_only_known_keys() -> None:
    for path in sorted(REPO.glob("recipes/*/recipe.yaml")):
        read_recipe(path)
