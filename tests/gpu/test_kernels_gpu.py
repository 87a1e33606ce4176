"""Kernel-time tables on CUDA: eager kernels, kernels inside CUDA-graph replays, a tiny Llama decode.

The tables are printed (run with `-s`) so that a GPU run shows real kernel names and categories.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.gpu


def _matmul_softmax_step() -> Callable[[], None]:
    import torch

    torch.manual_seed(0)
    x = torch.randn(8, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) / 64

    def step() -> None:
        torch.softmax(x @ w, dim=-1)

    return step


def test_eager_step_has_gemm_time() -> None:
    import torch

    from optimizer.measure.kernel_categories import SOFTMAX
    from optimizer.measure.kernels import profile_steps

    profile = profile_steps(_matmul_softmax_step(), steps=5, device=torch.device("cuda"))
    print(profile.markdown())
    assert profile.source == "cuda kernels" and profile.kernels_reported and not profile.note
    categories = profile.by_category()
    assert categories.get("gemm", 0.0) > 0
    assert categories.get(SOFTMAX, 0.0) > 0  # the softmax, which its name cannot tell from attention's
    assert 0 < profile.busy_ms_per_step <= profile.wall_ms_per_step * 1.01
    gemm_calls = sum(row.calls for row in profile.rows if row.category == "gemm")
    assert gemm_calls >= 5  # one GEMM per step, plus any split-K reduction kernels


def test_graph_replays_report_kernels_or_say_none() -> None:
    import torch

    from optimizer.measure.kernels import profile_steps

    step = _matmul_softmax_step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # cuBLAS handles and workspaces are made off the capture
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    profile = profile_steps(graph.replay, steps=3, device=torch.device("cuda"))
    print(f"CUDA-graph kernels reported: {profile.kernels_reported}\n{profile.markdown()}")
    if profile.kernels_reported:
        assert profile.by_category().get("gemm", 0.0) > 0
        assert profile.busy_ms_per_step <= profile.wall_ms_per_step * 1.01
    else:
        assert "no CUDA kernels" in profile.note
        assert profile.by_category() == {"unattributed": profile.wall_ms_per_step}


def test_tiny_llama_decode_step(tiny_cuda_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from optimizer.measure.kernels import profile_steps

    model: Any = AutoModelForCausalLM.from_pretrained(str(tiny_cuda_model_dir), dtype=torch.bfloat16)
    model = model.to("cuda").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 16), device="cuda")
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        token = model(ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)

    def step() -> None:
        nonlocal token
        with torch.inference_mode():
            logits = model(token, past_key_values=cache, use_cache=True).logits
            token = logits[:, -1:].argmax(-1)

    profile = profile_steps(step, steps=5, device=torch.device("cuda"))
    print(profile.markdown(top=40))
    others = [row.name for row in profile.rows if row.category == "other"]
    print("uncategorized kernels:\n" + "\n".join(others))
    categories = profile.by_category()
    for category in ("gemm", "attention", "logits+sampling", "norm/rope/activation"):
        assert categories.get(category, 0.0) > 0, category
