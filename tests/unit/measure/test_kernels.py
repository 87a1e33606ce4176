"""The KernelProfile arithmetic and tables, and a CPU profile."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from optimizer.measure.kernel_categories import SOFTMAX
from optimizer.measure.kernels import KernelProfile, KernelRow, kernel_rows, profile_steps


def _profile(**overrides: object) -> KernelProfile:
    values: dict[str, object] = {
        "steps": 2,
        "wall_ms_per_step": 10.0,
        "busy_ms_per_step": 8.5,
        "rows": [
            KernelRow("nvjet_tst_64x8_64x16_4x1_v_bz_splitK_TNT", "gemm", 400, 9000.0),
            KernelRow("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_kernel__5x_cublas", "gemm", 100, 3000.0),
            KernelRow("pytorch_flash::flash_fwd_splitkv_kernel<" + "x" * 200 + ">", "attention", 60, 4000.0),
            KernelRow("Memcpy HtoD (Pageable -> Device)", "copies", 2, 1000.0),
        ],
    }
    values.update(overrides)
    return KernelProfile(**values)  # type: ignore[arg-type]


def test_host_gaps_are_wall_minus_busy() -> None:
    profile = _profile()
    assert profile.host_gap_ms_per_step == pytest.approx(1.5)
    assert profile.by_category() == pytest.approx(
        {"gemm": 6.0, "attention": 2.0, "copies": 0.5, "host gaps": 1.5}
    )
    assert list(profile.by_category()) == ["gemm", "attention", "copies", "host gaps"]
    assert sum(profile.by_category().values()) == pytest.approx(profile.wall_ms_per_step)


def test_host_gaps_never_go_negative() -> None:
    assert _profile(busy_ms_per_step=10.2).host_gap_ms_per_step == 0.0


def test_markdown_tables() -> None:
    text = _profile().markdown(top=3)
    assert "| gemm | 6.000 | 60.0% |" in text
    assert "| host gaps | 1.500 | 15.0% |" in text
    # top kernels, most time first: calls/step, us/call, ms/step
    assert "| nvjet_tst_64x8_64x16_4x1_v_bz_splitK_TNT | gemm | 200.00 | 22.5 | 4.500 |" in text
    assert "Memcpy" not in text  # beyond top=3
    long_row = next(line for line in text.splitlines() if "flash_fwd_splitkv" in line)
    cell = long_row.split(" | ")[0].removeprefix("| ")
    assert len(cell) == 90 and cell.endswith("…")


def test_no_kernels_reported_is_said_not_divided() -> None:
    profile = _profile(rows=[], busy_ms_per_step=0.0, note="the profiler reported no CUDA kernels")
    assert not profile.kernels_reported
    assert profile.by_category() == {"unattributed": 10.0}
    text = profile.markdown()
    assert "Note: the profiler reported no CUDA kernels" in text
    assert "| kernel |" not in text
    assert "| unattributed | 10.000 | 100.0% |" in text  # the whole wall, not divided among kernels
    # no division by a zero wall: the share is said to be unknown
    assert "| unattributed | 0.000 | n/a |" in _profile(rows=[], wall_ms_per_step=0.0).markdown()


def test_to_dict_is_json() -> None:
    data = json.loads(json.dumps(_profile().to_dict()))
    assert data["host_gap_ms_per_step"] == pytest.approx(1.5)
    assert data["rows"][0]["calls_per_step"] == 200
    assert data["by_category_ms_per_step"]["attention"] == pytest.approx(2.0)


def test_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="steps"):
        _profile(steps=0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core runner, spinning OpenMP workers stall tiny ops."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_profile_steps_on_cpu_counts_outermost_ops(one_thread: None) -> None:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 512)).eval()
    x = torch.randn(4, 64)
    calls = []

    def step() -> None:
        calls.append(1)
        # ops under a record_function range still count as outermost
        with torch.inference_mode(), torch.profiler.record_function("decode"):
            probs = torch.softmax(model(x), dim=-1)
            torch.argmax(probs, dim=-1)

    profile = profile_steps(step, steps=4, device=torch.device("cpu"))
    assert len(calls) == 1 + 4 + 4  # warm-up, unprofiled timing, profiled steps
    assert profile.source == "cpu ops" and profile.note == ""
    per_step = {row.name: row.calls / profile.steps for row in profile.rows}
    # aten::addmm and aten::t run inside aten::linear: not counted a second time
    assert per_step == {"aten::linear": 2, "aten::softmax": 1, "aten::argmax": 1}
    categories = profile.by_category()
    assert categories["gemm"] > 0
    # the softmax over the logits is sampling's, which its name cannot tell from attention's
    assert set(categories) == {"gemm", SOFTMAX, "logits+sampling", "host gaps"}
    assert profile.busy_ms_per_step == pytest.approx(sum(r.total_us for r in profile.rows) / 1000 / 4)
    assert profile.busy_ms_per_step <= profile.wall_ms_per_step * 1.01
    assert profile.unprofiled_wall_ms_per_step is not None and profile.unprofiled_wall_ms_per_step > 0


def test_profile_steps_rejects_zero_steps() -> None:
    import torch

    with pytest.raises(ValueError, match="steps"):
        profile_steps(lambda: None, steps=0, device=torch.device("cpu"))


def test_kernel_rows_on_cuda_keep_device_kernels_only() -> None:
    """The CUDA branch, fed FunctionEvents shaped as the profiler makes them from CUPTI records."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    def event(name: str, start: float, end: float, device: DeviceType, **kw: object) -> FunctionEvent:
        return FunctionEvent(id=0, name=name, thread=0, start_us=start, end_us=end, device_type=device, **kw)

    gemm = "nvjet_tst_64x8_64x16_4x1_v_bz_splitK_TNT"
    events = [
        event("aten::mm", 0, 30, DeviceType.CPU),  # host side: its time is not device time
        event("cudaLaunchKernel", 5, 10, DeviceType.CPU),
        event(gemm, 12, 20, DeviceType.CUDA),
        event(gemm, 40, 48.5, DeviceType.CUDA),
        event("Memcpy DtoD (Device -> Device)", 50, 51, DeviceType.CUDA),
        event("decode", 10, 60, DeviceType.CUDA, is_user_annotation=True),  # spans the kernels
    ]
    rows = {row.name: row for row in kernel_rows(events, cuda=True)}
    assert set(rows) == {gemm, "Memcpy DtoD (Device -> Device)"}
    assert rows[gemm].calls == 2 and rows[gemm].total_us == pytest.approx(16.5)
    assert rows[gemm].category == "gemm"
    assert rows["Memcpy DtoD (Device -> Device)"].category == "copies"
    assert kernel_rows([e for e in events if e.device_type == DeviceType.CPU], cuda=True) == []
