"""ORT intra-op spinning as a setting: busy-waiting threads burn the CPU time the energy estimate
counts. Off, the session option is set (on the ort-onnx session, in genai's session_options);
on, ORT's default, nothing is set and every candidate written before keeps its keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from optimizer.backends import installed
from optimizer.backends.ort_genai.backend import session_options
from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from optimizer.backends.ort_onnx import backend
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.config import OrtOnnxAxes, SpaceConfig, compose_run_config
from optimizer.errors import UserError
from optimizer.space import Candidate, enumerate_candidates

SPIN_KEY = "session.intra_op.allow_spinning"
ort = pytest.importorskip("onnxruntime")


class FakeSession:
    made: list[Any] = []

    def __init__(self, path: str, options: Any, providers: list[Any]) -> None:
        FakeSession.made.append(options)

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]


def _entry(options: Any) -> str | None:
    try:
        return str(options.get_session_config_entry(SPIN_KEY))
    except RuntimeError:  # ORT raises for a key never set
        return None


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    FakeSession.made = []
    return FakeSession.made


def test_the_session_option_is_set_only_when_spinning_is_off(made: list[Any]) -> None:
    backend.make_session(Path("m.onnx"), ["CPUExecutionProvider"], 2)
    backend.make_session(Path("m.onnx"), ["CPUExecutionProvider"], 2, spinning=False)
    assert [_entry(options) for options in made] == [None, "0"]


@pytest.mark.parametrize(("spinning", "entry"), [(True, None), (False, "0")])
def test_the_backend_passes_the_candidates_spinning(
    made: list[Any], monkeypatch: pytest.MonkeyPatch, make_target, tmp_path: Path, spinning, entry
) -> None:
    monkeypatch.setattr(backend, "onnx_model_for", lambda *a: tmp_path)
    monkeypatch.setattr(backend, "OrtSteps", lambda *a: None)
    monkeypatch.setattr(backend, "StepEngine", lambda steps: None)
    monkeypatch.setattr(backend, "load_check", lambda engine: None)
    candidate = Candidate(OrtOnnxSettings(spinning=spinning), 1, 2)
    backend.OrtOnnxBackend().build(None, candidate, make_target(cores=2), tmp_path)  # type: ignore[arg-type]
    assert [_entry(options) for options in made] == [entry]


def test_genai_session_options_carry_spinning_as_a_config_entry() -> None:
    assert session_options(OrtGenaiSettings(), 0) == {}
    assert session_options(OrtGenaiSettings(), 2) == {"intra_op_num_threads": 2, "inter_op_num_threads": 1}
    assert session_options(OrtGenaiSettings(spinning=False), 2) == {
        "intra_op_num_threads": 2,
        "inter_op_num_threads": 1,
        SPIN_KEY: "0",  # genai passes string-valued options it does not know to AddConfigEntry
    }


# (key, numerics key) as stores held them before spinning was a setting
BEFORE = [
    (Candidate(OrtOnnxSettings(), 1, 2), ("f8f9287b85f93a6b", "a8d44755cd61e957")),
    (Candidate(OrtOnnxSettings(quantization="int8-dynamic"), 8, 0), ("c0be5e7a9798c703", "5add87e531a39984")),
    (
        Candidate(OrtGenaiSettings(precision="int8", accuracy_level=4), 8, 2),
        ("5f42c8e6baf9e2b1", "2135c7adaa42b80a"),
    ),
]


@pytest.mark.parametrize(("candidate", "before"), BEFORE, ids=[c.label() for c, _ in BEFORE])
def test_default_candidates_keep_their_keys(candidate: Candidate, before: tuple[str, str]) -> None:
    assert (candidate.key(), candidate.numerics_key()) == before
    assert "spinning" not in candidate.to_dict()


@pytest.mark.parametrize("settings", [OrtOnnxSettings(spinning=False), OrtGenaiSettings(spinning=False)])
def test_spinning_off_is_its_own_candidate_with_the_same_probe(settings: Any) -> None:
    off = Candidate(settings, 1, 2)
    on = Candidate(type(settings)(), 1, 2)
    assert off.key() != on.key()
    assert off.numerics_key() == on.numerics_key()  # threads wait differently, compute the same
    assert off.to_dict()["spinning"] is False
    assert Candidate.from_dict(off.to_dict()) == off
    assert off.label().endswith("no-spin b1 t2")


def test_spinning_must_be_a_bool() -> None:
    with pytest.raises(UserError) as info:
        OrtOnnxSettings(spinning="false")  # type: ignore[arg-type]
    assert info.value.field == "settings.spinning"


def test_a_space_with_both_values_yields_both_candidates(make_target, monkeypatch) -> None:
    monkeypatch.setattr(installed, "has_module", lambda name: name != "tensorrt")
    monkeypatch.setattr(installed, "has_distribution", lambda name: False)
    space = SpaceConfig(
        backends=["ort-onnx"],
        batch_sizes=[1],
        threads=[2],
        ort_onnx=OrtOnnxAxes(quantizations=["none"], spinning=[True, False]),
    )
    valid, excluded = enumerate_candidates(space, make_target(cores=2))
    assert excluded == []
    assert valid == [Candidate(OrtOnnxSettings(spinning=s), 1, 2) for s in (True, False)]


def test_the_default_axis_spins_and_a_bad_value_names_its_field() -> None:
    assert OrtOnnxAxes().spinning == [True]
    with pytest.raises(UserError) as info:
        compose_run_config(["space.ort_onnx.spinning=[maybe]"])
    assert info.value.field.startswith("space.ort_onnx.spinning")


def test_presets_cpu_ort_searches_both_and_gpu_ort_the_default() -> None:
    assert compose_run_config(["space=cpu-ort"]).space.ort_onnx.spinning == [True, False]
    assert compose_run_config(["space=gpu-ort"]).space.ort_onnx.spinning == [True]
    assert "ort-onnx" not in compose_run_config([]).space.backends  # the default CPU space


def test_a_genai_space_with_both_values_yields_both_candidates() -> None:
    from optimizer.backends.ort_genai.spec import OrtGenaiSpec
    from optimizer.config.space import OrtGenaiAxes

    space = SpaceConfig(ort_genai=OrtGenaiAxes(precisions=["fp32"], spinning=[True, False]))
    assert [s.spinning for s in OrtGenaiSpec().settings_for(space)] == [True, False]
    assert all(isinstance(s, OrtGenaiSettings) for s in OrtGenaiSpec().settings_for(space))
    assert OrtGenaiAxes().spinning == [True]
    with pytest.raises(UserError) as info:
        compose_run_config(["space.ort_genai.spinning=[maybe]"])
    assert info.value.field.startswith("space.ort_genai.spinning")
