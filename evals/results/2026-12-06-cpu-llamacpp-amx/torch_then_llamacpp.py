"""llama.cpp (l) and torch bf16 (t) work in one process, in a given order: which order dies.

    PYTHONPATH=SITE_WITH_AN_AMX_WHEEL python torch_then_llamacpp.py ltl Q8_0.gguf

`l` evaluates 256 prompt tokens with llama.cpp (2 threads); `t` runs five bf16 matmuls in torch
(oneDNN, AMX on a CPU with it). Prints each step as it finishes, then the libgomp files mapped.
"""

import sys
from pathlib import Path

import llama_cpp
import torch

order, gguf = sys.argv[1], sys.argv[2]
llm = llama_cpp.Llama(gguf, n_ctx=1024, n_batch=512, n_threads=2, n_threads_batch=2, verbose=False)
tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 32)[:256]
a = torch.randn(256, 1024, dtype=torch.bfloat16)
b = torch.randn(1024, 1024, dtype=torch.bfloat16)


def torch_bf16() -> None:
    for _ in range(5):
        (a @ b).sum()


def llama() -> None:
    llm.reset()
    llm.eval(tokens)


steps = {"t": torch_bf16, "l": llama}
for step in order:
    steps[step]()
    print(step, "ok", flush=True)
maps = Path("/proc/self/maps").read_text()
print(sorted({line.split()[-1] for line in maps.splitlines() if "gomp" in line}))
