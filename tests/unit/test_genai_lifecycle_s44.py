"""onnxruntime-genai lifecycle defects found by s44: a failed Engine loop left its requests in
`first_token_times()` and `idle`, and generate() after close() raised pybind's TypeError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optimizer.backends.ort_genai.backend import OrtGenaiEngine
from optimizer.backends.ort_genai.settings import OrtGenaiSettings
from unit.test_engines2_s43 import started_server


def test_a_failed_loop_leaves_no_request_behind() -> None:
    """The loop failed with a request handed to genai and another waiting: neither can finish,
    yet first_token_times() still told them and `idle` stayed False."""
    server, engine = started_server()
    try:
        server.submit([4, 5], 2)
        server.submit([6, 7], 2)  # past max_requests=2: waits in the inbox
        engine.fail.set()
        server._thread.join(10)
        assert not server._thread.is_alive()
        with pytest.raises(RuntimeError, match="the device is gone"):
            server.collect(0.1)
        assert server.first_token_times() == {}
        assert server.idle
    finally:
        server.close()


@pytest.mark.parametrize("call", ["generate", "score"])
def test_generate_after_close_says_the_engine_is_closed(tmp_path: Path, call: str) -> None:
    og = pytest.importorskip("onnxruntime_genai")
    engine = OrtGenaiEngine(og, object(), OrtGenaiSettings(), tmp_path)
    engine.close()
    with pytest.raises(RuntimeError, match="the engine is closed"):
        if call == "generate":
            engine.generate(torch.tensor([[1, 2, 3]]), 2)
        else:
            engine.score(torch.tensor([[1, 2, 3]]))
