"""The table of backends: one spec per settings type, named as configs and recipes name them."""

from __future__ import annotations

import pytest

from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from optimizer.backends.ort_onnx.settings import OrtOnnxSettings
from optimizer.backends.registry import SPECS, SPECS_BY_NAME, spec_for
from optimizer.backends.tensorrt.settings import TensorRTSettings
from optimizer.backends.torch.settings import TorchSettings
from optimizer.config import BACKENDS


def test_every_spec_is_keyed_by_its_own_settings_type() -> None:
    for settings_type, spec in SPECS.items():
        assert spec.settings_type is settings_type
        assert spec.name == settings_type.BACKEND
        assert spec_for(settings_type()) is spec


def test_backend_names_match_the_config_in_order() -> None:
    assert tuple(SPECS_BY_NAME) == BACKENDS


def test_settings_of_an_unknown_type_have_no_spec() -> None:
    with pytest.raises(TypeError, match="object"):
        spec_for(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "kind"),
    [
        (TorchSettings(), "fp32"),
        (TorchSettings("bf16"), "reduced"),
        (TorchSettings("bf16", "int4-weight"), "reduced"),  # weight-only: bf16 matmuls
        (TorchSettings("fp32", "int8-dynamic"), "int8"),
        (TorchSettings("bf16", "fp8-static"), "fp8"),
        (OrtGenaiSettings(), "fp32"),
        (OrtGenaiSettings(provider="cuda", precision="fp16"), "reduced"),
        (OrtGenaiSettings(precision="int4"), "int8"),
        (OrtOnnxSettings(), "fp32"),
        (OrtOnnxSettings(quantization="int8-static"), "int8"),
        (OrtOnnxSettings(provider="cuda", precision="fp16"), "reduced"),
        (TensorRTSettings("fp16"), "reduced"),
        (TensorRTSettings("int8"), "int8"),
    ],
)
def test_matmul_kinds(settings, kind: str) -> None:
    assert spec_for(settings).matmul_kind(settings) == kind


def test_footprints_count_bytes_per_element() -> None:
    def footprint(settings):  # type: ignore[no-untyped-def]
        return spec_for(settings).footprint(settings, 30)

    int4 = footprint(TorchSettings("bf16", "int4-weight"))
    assert (int4.weight_bytes, int4.activation_bytes, int4.kv_bytes) == (
        0.5 + 4 / 128,
        2.0,
        2.0,
    )  # group scales
    # 4 bits and a scale and zero point (fp32 activations) per 64 elements; the roofline's bits alone
    assert footprint(TorchSettings(kv_cache="quanto-4")).kv_bytes == 0.5 + 2 * 4.0 / 64
    assert spec_for(TorchSettings()).moved_bytes(TorchSettings(kv_cache="quanto-4"), 30).kv_bytes == 0.5
    assert footprint(TorchSettings(kv_cache="offloaded")).kv_on_device_fraction == pytest.approx(2 / 30)
    assert footprint(TensorRTSettings("int8")).weight_bytes == 1.0
