"""A plain softmax kernel is not counted as attention: by its name alone it may be eager
attention's (matmul, softmax, matmul) or sampling's over the vocabulary, so it has a category that
says so. Fused attention kernels stay attention; log-softmax stays logits+sampling."""

from __future__ import annotations

import pytest

from optimizer.measure.kernel_categories import CATEGORIES, SOFTMAX, categorize

PLAIN_SOFTMAX = [
    # cunn_SoftMaxForward runs rows too long for one warp: a vocabulary's, or a long context's
    "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, "
    "at::native::(anonymous namespace)::SoftMaxForwardEpilogue>(float*, float const*, int)",
    "void (anonymous namespace)::softmax_warp_forward<c10::BFloat16, c10::BFloat16, float, 5, false, "
    "false>(c10::BFloat16*, c10::BFloat16 const*, int, int, int, bool const*, int, bool)",
    "triton_red_fused__softmax_add_0",  # a mask or a logit bias added first
    "triton_red_fused__softmax_div_0",  # a 1/sqrt(d) scale or a sampling temperature
    "triton_per_fused__softmax__to_copy_1",
    "aten::softmax",
    "aten::_softmax",
    "aten::_safe_softmax",
]


@pytest.mark.parametrize("name", PLAIN_SOFTMAX)
def test_a_plain_softmax_is_not_counted_as_attention(name: str) -> None:
    assert categorize(name) == SOFTMAX


def test_the_category_says_it_may_be_either() -> None:
    assert SOFTMAX in CATEGORIES and "attention" in SOFTMAX and "sampling" in SOFTMAX


@pytest.mark.parametrize(
    ("name", "category"),
    [
        (
            "void pytorch_flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128>>(Flash_fwd_params)",
            "attention",
        ),
        ("aten::scaled_dot_product_attention", "attention"),
        ("void flashinfer::BatchDecodeWithPagedKVCacheKernel<online_softmax>", "attention"),
        ("aten::log_softmax", "logits+sampling"),
        ("triton_red_fused__log_softmax_1", "logits+sampling"),
        (
            "void (anonymous namespace)::softmax_warp_forward<float, float, float, 10, true, false>(float*, "
            "float const*, int, int, int, bool const*, int, bool)",
            "logits+sampling",
        ),
    ],
)
def test_fused_attention_and_log_softmax_keep_their_categories(name: str, category: str) -> None:
    assert categorize(name) == category


def test_a_cpu_sampling_step_reports_no_attention() -> None:
    """A step that only samples (temperature, softmax over the vocabulary, multinomial) profiled on
    the CPU: its softmax read as attention time in a step with no attention at all."""
    import torch

    from optimizer.measure.kernels import profile_steps

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        logits = torch.randn(2, 4096)

        def step() -> None:
            torch.multinomial(torch.softmax(logits / 0.7, dim=-1), 1)

        categories = profile_steps(step, steps=2, device=torch.device("cpu")).by_category()
    finally:
        torch.set_num_threads(threads)
    assert "attention" not in categories and SOFTMAX in categories, categories
