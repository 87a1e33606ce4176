"""The captured decode loop's steps, run eagerly on the CPU (capture itself needs CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optimizer.backends.torch.graph_loop import WARMUP_STEPS, GraphDecoder


@pytest.mark.parametrize("new_tokens", [2, 3, 8])
def test_the_capture_steps_fit_a_short_answer_and_keep_greedy_tokens(
    tiny_model_dir: Path, new_tokens: int
) -> None:
    """Capture runs a prefill, WARMUP_STEPS steps and the captured one: with 2 or 3 new tokens
    they wrote past the output (on CUDA a device-side assert that outlives the candidate)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    prompt = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    decoder = GraphDecoder(model, 2, 6, new_tokens, torch.device("cpu"))
    with torch.no_grad():
        decoder.prefill(prompt)
        for _ in range(WARMUP_STEPS + 1):  # what _capture runs before and inside the graph
            decoder.step()
        decoder.prefill(prompt)  # generate() starts again from the prompt
        for _ in range(new_tokens - 1):
            decoder.step()
        want = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    assert torch.equal(decoder.output[:, :new_tokens], want[:, 6:])
