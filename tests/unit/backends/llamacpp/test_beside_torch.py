"""llama.cpp, then torch's bf16 matmuls, then llama.cpp again, in one process, as a search re-measures
finalists side by side. On a CPU with AMX, oneDNN's AMX kernels leave the tiles without ggml's
config; an unpatched AMX build of ggml (config loaded once per thread) then dies with SIGILL on the
second evaluation. Run in a child process, so that such a death fails this test, not the session."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'wattsmith[llamacpp]')")

# Evaluates 256 tokens with 2 threads, runs torch bf16 matmuls on the same threads, evaluates again;
# prints the largest change in the last position's logits.
LLAMA_TORCH_LLAMA = """
import json, sys
import llama_cpp, numpy, torch
llm = llama_cpp.Llama(sys.argv[1], n_ctx=512, n_batch=256, n_threads=2, n_threads_batch=2, verbose=False)
tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 32)[:256]

def last_logits():
    llm.reset()
    llm.eval(tokens)
    return numpy.array(llm.scores[len(tokens) - 1])

before = last_logits()
torch.set_num_threads(2)
a, b = torch.randn(256, 1024, dtype=torch.bfloat16), torch.randn(1024, 1024, dtype=torch.bfloat16)
for _ in range(5):
    (a @ b).sum()
after = last_logits()
print(json.dumps({"max_abs_diff": float(abs(after - before).max())}))
"""


def test_llamacpp_computes_after_torch_bf16_in_the_same_process(gguf: Path) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", LLAMA_TORCH_LLAMA, str(gguf)], capture_output=True, text=True, timeout=300
    )
    died = f" ({signal.Signals(-ran.returncode).name})" if ran.returncode < 0 else ""
    assert ran.returncode == 0, f"exit {ran.returncode}{died}: {ran.stderr[-2000:]}"
    result = json.loads(ran.stdout.splitlines()[-1])
    # the same tokens on the same threads: the same logits, torch's work in between or not
    assert result["max_abs_diff"] < 1e-3, result
