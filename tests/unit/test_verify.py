"""verify: the report, each check, and verify_recipe with the measuring faked (re-measuring for real
is covered end to end in e2e)."""

from __future__ import annotations

import fcntl
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from optimizer import verify
from optimizer.config import SloConfig, TargetConfig
from optimizer.errors import UserError
from optimizer.files import tensor_sha256
from optimizer.recipe import read_recipe, write_recipe
from optimizer.search.device_lock import DeviceLock
from optimizer.verify import Check, VerifyReport
from unit.factories import WEIGHT_SHA, recipe_data

PROMPTS = torch.arange(64 * 4).reshape(64, 4)  # the fake setup's tokenized prompt pool


def test_report_passes_only_when_every_check_passes() -> None:
    ok = Check("device", "cpu", "cpu", True)
    bad = Check("goodput tok/J (>= 75% of recorded)", "2.000 (estimate)", "1.000 (estimate, 0.50x)", False)
    assert VerifyReport(Path("r.yaml"), [ok]).passed
    report = VerifyReport(Path("r.yaml"), [ok, bad])
    assert not report.passed
    text = report.render()
    lines = text.splitlines()
    assert lines[0] == "verify r.yaml"
    assert lines[1].strip().startswith("ok")
    assert lines[2].strip().startswith("FAIL")
    assert lines[-1] == "FAILED"
    assert VerifyReport(Path("r.yaml"), [ok]).render().splitlines()[-1] == "PASSED"


def test_goodput_far_above_the_record_fails_too() -> None:
    """2x the recorded figure is a broken meter as likely as a better machine."""
    assert verify.goodput_check(2.0, "estimate", 1.6, "estimate", 0.25).passed
    assert verify.goodput_check(2.0, "estimate", 2.6, "estimate", 0.25).passed  # 1.3x < 1/0.75
    low = verify.goodput_check(2.0, "estimate", 1.4, "estimate", 0.25)
    high = verify.goodput_check(2.0, "estimate", 4.0, "estimate", 0.25)
    assert not low.passed and not high.passed
    assert "2.00x" in high.measured and "meter" in high.measured
    assert high.name == "goodput tok/J (0.75x-1.33x of recorded)"


@pytest.mark.parametrize("recorded", [0.0, -1.0, float("nan")])
def test_a_recipe_recording_no_goodput_fails_the_goodput_check(recorded: float) -> None:
    """Nothing is within a fraction of no figure: whatever is measured fails, saying why."""
    check = verify.goodput_check(recorded, "rapl", 123.0, "rapl", 0.25)
    assert not check.passed
    assert check.measured == "123 (rapl): the recipe records no goodput to compare with"


def test_the_slo_is_labelled_with_its_configured_percentile(make_performance) -> None:
    perf = make_performance()
    recorded = {"ttft_ms": {"p50": 80.0, "p99": 300.0}, "tpot_ms": {"p50": 10.0, "p99": 40.0}}
    check = verify.slo_check(recorded, perf, SloConfig(percentile=99, ttft_ms=500, tpot_ms=50))
    assert check.name == "SLO (TTFT p99 <= 500 ms, TPOT p99 <= 50 ms)"
    assert check.recorded == "TTFT p99 300 ms, TPOT p99 40 ms"
    assert check.measured.startswith(f"TTFT p99 {perf.latency.ttft_ms['p99']:.0f} ms")
    assert "p90" not in check.recorded + check.measured
    assert verify.slo_check(recorded, perf, SloConfig(percentile=95)).recorded == "TTFT p95 n/a, TPOT p95 n/a"


def test_a_machine_slower_or_faster_than_the_recipes_gets_a_note(make_performance) -> None:
    def probed(*speeds: float):  # type: ignore[no-untyped-def]
        perf = make_performance()
        return replace(perf, windows=[replace(perf.windows[0], cpu_probe_mibps=s) for s in speeds])

    slower = verify.speed_note([2000.0, 2100.0, 1900.0], probed(1000.0, 1100.0))
    assert slower is not None
    assert slower.startswith(
        "the CPU probe hashed 1050 MiB per CPU second here before the windows against 2000 recorded (0.53x)"
    )
    assert "cores run slower" in slower
    faster = verify.speed_note([1000.0], probed(2000.0))
    assert faster is not None and "(2.00x)" in faster and "cores run faster" in faster
    assert verify.speed_note([2000.0], probed(1900.0)) is None  # within the probe's noise
    assert verify.speed_note(None, probed(1000.0)) is None  # a recipe from before the probe
    assert verify.speed_note([2000.0], make_performance()) is None  # windows without a probe


class _Stop(Exception):
    pass


def _recipe(tmp_path: Path, artifact: dict[str, Any] | None = None, **measurement: Any) -> Path:
    data = recipe_data()
    data["measurement"] |= measurement
    if artifact is not None:
        data["artifact"] = artifact
    return write_recipe(tmp_path / "recipe.yaml", data)


def test_verify_estimates_with_the_recipes_coefficients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_target
) -> None:
    seen: list[TargetConfig] = []
    monkeypatch.setattr(verify, "detect_target", lambda cfg: make_target(cores=2))  # the recipe's CPU

    def prepare(model_cfg: Any, target_cfg: TargetConfig, *args: Any) -> None:
        seen.append(target_cfg)
        raise _Stop

    monkeypatch.setattr(verify, "prepare_measurement", prepare)
    coefficients = {"cpu_active_watts_per_core": 9.0, "cpu_idle_watts_per_core": 0.25}
    with pytest.raises(_Stop):
        verify.verify_recipe(_recipe(tmp_path, energy_estimate=coefficients))
    assert (seen[0].cpu_active_watts_per_core, seen[0].cpu_idle_watts_per_core) == (9.0, 0.25)


@pytest.fixture
def measured_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_target, make_result, make_quality, make_performance
):
    """verify_recipe with the measuring faked: the setup, idle power and the evaluation. Records
    whether the device lock was held while idle power was measured, and the evaluator's lock."""
    lock_path = tmp_path / "device.lock"
    seen: dict[str, Any] = {}

    def setup(text_sha256: str, cores: int) -> SimpleNamespace:
        model = SimpleNamespace(weight_sha256=WEIGHT_SHA, shape=None, format="hf-dir")
        meter = SimpleNamespace(source="estimate")
        target = make_target(cores=cores)
        workload = SimpleNamespace(prompts=PROMPTS)
        return SimpleNamespace(
            model=model, target=target, meter=meter, text_sha256=text_sha256, stream=None, workload=workload
        )

    def prepare(text_sha256: str, cores: int, *args: Any) -> SimpleNamespace:
        seen["prompt_pool"] = args[5]  # prepare_measurement's pool: what the recipe was measured on
        return setup(text_sha256, cores)

    def idle(meter: Any, seconds: float, disturbed_retries: int = 0) -> float:
        with lock_path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                seen["idle_locked"] = False
            except BlockingIOError:
                seen["idle_locked"] = True
        return 0.0

    class FakeEvaluator:
        @classmethod
        def for_setup(cls, setup: Any, device: DeviceLock | None = None, **kwargs: Any) -> FakeEvaluator:
            seen["device"] = device
            return cls()

        def evaluate(self, candidate: Any, role: str) -> Any:
            seen["evaluated"] = seen.get("evaluated", 0) + 1
            perf = make_performance(goodput_tokens_per_joule=2.0)
            built = seen.get("built")  # the artifact this evaluation built, as a test sets it
            return make_result(candidate=candidate, quality=make_quality(), performance=perf, artifact=built)

    def run(
        text_sha256: str = "cd" * 32,
        cores: int = 2,
        artifact: dict[str, Any] | None = None,
        **measurement: Any,
    ) -> verify.VerifyReport:
        monkeypatch.setattr(verify, "prepare_measurement", lambda *a: prepare(text_sha256, cores, *a))
        # the device verify compares before preparing: the one the fake setup measures on
        monkeypatch.setattr(verify, "detect_target", lambda cfg: make_target(cores=cores))
        return verify.verify_recipe(_recipe(tmp_path, artifact, **measurement))

    monkeypatch.setattr(verify, "measure_idle_watts", idle)
    monkeypatch.setattr(verify, "Evaluator", FakeEvaluator)
    monkeypatch.setattr(DeviceLock, "for_target", classmethod(lambda cls, target: cls(lock_path)))
    return run, seen, lock_path


def test_verify_checks_the_quality_texts_hash(measured_here) -> None:
    run, _seen, _lock = measured_here
    same = {c.name: c for c in run().checks}
    assert same["quality text sha256"].passed
    other = {c.name: c for c in run(text_sha256="ef" * 32).checks}
    assert not other["quality text sha256"].passed
    assert other["quality text sha256"].measured == "ef" * 8


def test_verify_holds_the_device_lock(measured_here) -> None:
    """Idle power under the exclusive lock, the evaluation with it: never beside a running search."""
    run, seen, lock_path = measured_here
    report = run()
    assert report.passed, report.render()
    assert seen["idle_locked"] is True
    assert isinstance(seen["device"], DeviceLock) and seen["device"].path == lock_path


def test_verify_compares_the_cores_and_the_measurement_protocol(measured_here) -> None:
    """The estimate charges idle watts per core and RAPL meters the package: 8 cores of the same
    CPU give other joules than the recipe's 2; another protocol measures something else. Either
    stops verify before it measures: the figures would fail for the machine, not the recipe."""
    run, seen, _lock = measured_here
    report = run(cores=8)
    checks = {c.name: c for c in report.checks}
    assert not checks["device"].passed
    assert (checks["device"].recorded, checks["device"].measured) == (
        "Test CPU, 2 cores",
        "Test CPU, 8 cores",
    )
    assert not report.measured and not report.passed and "evaluated" not in seen
    assert "idle_locked" not in seen  # not even idle power
    assert report.render().splitlines()[-1].startswith("NOT VERIFIED")
    older = {c.name: c for c in run(protocol_version=1).checks}
    assert not older["measurement protocol"].passed and older["measurement protocol"].recorded == "1"
    assert "evaluated" not in seen
    assert run().measured and seen["evaluated"] == 1


def test_verify_stops_before_measuring_when_this_machine_cannot_run_the_recipe(
    measured_here, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, seen, _lock = measured_here
    monkeypatch.setattr(
        verify, "exclusion_reason", lambda *a: "llama-cpp-python is not installed: pip install x"
    )
    with pytest.raises(UserError) as info:
        run()
    assert info.value.field == "recipe.settings" and "not installed" in info.value.problem
    assert "evaluated" not in seen and "idle_locked" not in seen


def test_verify_notes_the_package_versions_that_differ(measured_here, make_target) -> None:
    run, _seen, _lock = measured_here
    here = make_target().fingerprint()["packages"]
    assert run().notes == []  # the factory's recipe records no packages: nothing to compare
    assert verify._package_notes({**here, "torch": "1.0.0", "gone": "1"}, here) == [
        "gone 1 recorded, absent here",
        f"torch 1.0.0 recorded, {here['torch']} here",
    ]
    report = verify.VerifyReport(
        Path("r.yaml"), [Check("device", "cpu", "cpu", True)], ["torch 1 recorded, 2 here"]
    )
    assert report.passed and "  note torch 1 recorded, 2 here" in report.render().splitlines()


def test_verify_notes_an_artifact_built_here_that_differs_from_the_measured_one(measured_here) -> None:
    run, seen, _lock = measured_here
    recorded = {"what": "llama.cpp Q4_K_M weights", "files": {"model.gguf": "ab" * 32}}
    seen["built"] = recorded
    assert run(artifact=recorded).notes == []
    seen["built"] = {"what": "llama.cpp Q4_K_M weights", "files": {"model.gguf": "cd" * 32}}
    report = run(artifact=recorded)
    assert report.passed  # the re-measurement judges the artifact built here; the change is said
    assert report.notes == [
        "the build artifact made here (llama.cpp Q4_K_M weights) is not the one the recipe measured, "
        "model.gguf differing: another version of the package that builds it, or a builder that is "
        "not deterministic"
    ]
    assert run().notes == []  # a recipe that records none (its engine served the model's weights)


def test_verify_tokenizes_the_prompt_pool_the_recipe_was_measured_on(measured_here) -> None:
    """Batches cycle through the pool: the search's (the space's largest batch) is the recipe's, not
    its own batch size; a recipe from before the pool was recorded gets the one verify made then."""
    run, seen, _lock = measured_here
    assert run(prompt_pool=64).passed and seen["prompt_pool"] == 64
    assert run().passed and seen["prompt_pool"] == 16  # max(batch 8, 16), as before


def test_verify_compares_the_offline_prompts_token_ids(measured_here) -> None:
    """Other token ids (another tokenizer, the same text) stop verify before it measures, as another
    quality text does; the same ones pass; a recipe that records none has nothing to compare."""
    run, seen, _lock = measured_here
    same = run(prompt_tokens_sha256=tensor_sha256(PROMPTS))
    assert same.passed and {c.name: c for c in same.checks}["prompt tokens sha256"].passed
    other = run(prompt_tokens_sha256="ef" * 32)
    check = {c.name: c for c in other.checks}["prompt tokens sha256"]
    assert not check.passed and check.recorded == "ef" * 8
    assert check.measured == tensor_sha256(PROMPTS)[:16]
    assert not other.measured and other.render().splitlines()[-1].startswith("NOT VERIFIED")
    assert seen["evaluated"] == 1  # the matching run only
    assert "prompt tokens sha256" not in {c.name for c in run().checks}


def test_a_serving_recipe_is_judged_by_its_stream_not_its_prompts(tmp_path: Path) -> None:
    data = recipe_data()
    data["measurement"]["workload"].update(kind="serving")
    data["measurement"]["prompt_tokens_sha256"] = "ef" * 32
    recipe = read_recipe(write_recipe(tmp_path / "recipe.yaml", data))
    setup: Any = SimpleNamespace(workload=SimpleNamespace(prompts=PROMPTS))
    assert verify._prompts_check(recipe, setup) == []
