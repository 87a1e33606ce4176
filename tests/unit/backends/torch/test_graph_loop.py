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


def test_a_compiled_decoder_prefills_compiled_and_keeps_greedy_tokens(tiny_model_dir: Path) -> None:
    """compiled=True runs the prefill through inductor too (a second static shape of the step's
    function); its cache and tokens must be what the eager prefill gives."""
    from transformers import AutoModelForCausalLM

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # process-wide: earlier tests' compiles count there too
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    prompt = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    decoder = GraphDecoder(model, 2, 6, 4, torch.device("cpu"), compiled=True)
    with torch.no_grad():
        decoder.prefill(prompt, eager=True)
        eager_keys = decoder.cache.layers[0].keys.clone()
        decoder.prefill(prompt)
        torch.testing.assert_close(decoder.cache.layers[0].keys, eager_keys, rtol=1e-4, atol=1e-5)
        for _ in range(3):
            decoder.step()
        want = model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(decoder.output[:, :4], want[:, 6:])
    # the prefill and the step: two compiled entries, i.e. the prefill did not run eagerly
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
