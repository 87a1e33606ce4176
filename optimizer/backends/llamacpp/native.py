"""A thin typed layer over llama.cpp's C API (llama-cpp-python's ctypes bindings): load a model,
make a context, decode a batch of (token, position, sequence) entries, read logits, quantize.

llama.cpp reports why it failed through its log, not through return values: a callback keeps its
recent warnings and errors, and every failure here quotes them.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from optimizer.backends.llamacpp.errors import LlamaCppBuildError, LlamaCppError

log = logging.getLogger(__name__)

KV_GGML_TYPES = {"f16": "GGML_TYPE_F16", "q8_0": "GGML_TYPE_Q8_0", "q4_0": "GGML_TYPE_Q4_0"}
# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line)
_LOG_WARN, _LOG_ERROR, _LOG_CONT = 3, 4, 5
ALL_LAYERS = 999  # n_gpu_layers: every layer on the GPU


class _LogCapture:
    """llama.cpp's recent warnings and errors, for the messages of failures."""

    def __init__(self) -> None:
        self.lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=20)  # (level, text)
        self._level = 0

    def __call__(self, level: int, text: bytes, _user_data: Any) -> None:
        if level == _LOG_CONT:
            level = self._level
        self._level = level
        if level in (_LOG_WARN, _LOG_ERROR):
            message = text.decode("utf-8", errors="replace").strip()
            if message:
                self.lines.append((level, message))
                log.debug("llama.cpp: %s", message)

    def reason(self, default: str) -> str:
        """The latest errors llama.cpp logged (errors before warnings), or `default`. By level, not
        by wording, and five of them: a refused batch explains itself in three error lines ("the
        tokens of sequence 1 ... have inconsistent sequence positions", X, Y) before the two
        "failed to initialize batch" / "failed to decode" lines."""
        errors = [text for level, text in self.lines if level == _LOG_ERROR]
        chosen = (errors or [text for _, text in self.lines])[-5:]
        return "; ".join(chosen)[:800] if chosen else default


_CAPTURE = _LogCapture()
_LOCK = threading.Lock()


@cache
def lib() -> Any:
    """llama_cpp's low-level bindings, loaded once with the backend initialized and our log
    callback installed (llama.cpp's log is global to the process)."""
    import llama_cpp.llama_cpp as bindings

    with _LOCK:
        callback = bindings.llama_log_callback(_CAPTURE)
        bindings.llama_log_set(callback, ctypes.c_void_p(0))
        _keep_alive.append(callback)  # ctypes frees a callback that nothing references
        bindings.llama_backend_init()
    return bindings


_keep_alive: list[Any] = []


def supports_gpu_offload() -> bool:
    return bool(lib().llama_supports_gpu_offload())


def load_model(path: Path, gpu: int | None) -> Any:
    """A llama_model pointer with every layer on CUDA device `gpu` (as this process numbers its
    GPUs), or on the CPU alone (None); a file llama.cpp cannot load raises LlamaCppBuildError with
    its reason."""
    c = lib()
    params = c.llama_model_default_params()
    # llama.cpp's default (split_mode LAYER) spreads the layers over every visible GPU, and a CUDA
    # build with no layer offloaded still sends a prompt's matmuls to a GPU (op offload): the
    # target's GPU alone (its meter, its memory check), and none on a CPU target (main_gpu -1)
    params.split_mode = c.LLAMA_SPLIT_MODE_NONE
    params.main_gpu = -1 if gpu is None else gpu
    params.n_gpu_layers = 0 if gpu is None else ALL_LAYERS
    _CAPTURE.lines.clear()
    model = c.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise LlamaCppBuildError(f"llama.cpp cannot load {path.name}: {_CAPTURE.reason('no reason logged')}")
    return model


def free_model(model: Any) -> None:
    lib().llama_model_free(model)


def n_vocab(model: Any) -> int:
    c = lib()
    return int(c.llama_vocab_n_tokens(c.llama_model_get_vocab(model)))


@dataclass(frozen=True)
class ContextParams:
    sequences: int  # sequence ids 0 .. sequences - 1, each with its own KV cells
    sequence_tokens: int  # the most tokens (prompt + output) one sequence holds
    n_batch: int
    n_ubatch: int
    threads: int  # 0: llama.cpp's default
    kv_type: str
    flash_attention: bool
    unified: bool = False  # one KV buffer for all sequences (else a stream per sequence)


class Context:
    """A llama_context with a reusable batch. Not thread-safe: one thread decodes at a time."""

    def __init__(self, model: Any, vocab: int, params: ContextParams) -> None:
        c = self._c = lib()
        self.params = params
        self.vocab = vocab
        cp = c.llama_context_default_params()
        cp.n_ctx = params.sequences * params.sequence_tokens
        cp.n_batch, cp.n_ubatch = params.n_batch, min(params.n_ubatch, params.n_batch)
        cp.n_seq_max = params.sequences
        if params.threads:
            cp.n_threads = cp.n_threads_batch = params.threads
        cp.type_k = cp.type_v = getattr(c, KV_GGML_TYPES[params.kv_type])
        cp.flash_attn_type = (
            c.LLAMA_FLASH_ATTN_TYPE_ENABLED if params.flash_attention else c.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        # each sequence its own KV stream: a decode step attends over its own cells only
        cp.kv_unified = params.unified
        cp.no_perf = True
        _CAPTURE.lines.clear()
        self.ctx = c.llama_init_from_model(model, cp)
        if not self.ctx:
            raise LlamaCppBuildError(
                f"llama.cpp cannot create the context: {_CAPTURE.reason('no reason logged')}"
            )
        self.memory = c.llama_get_memory(self.ctx)
        self.batch = c.llama_batch_init(params.n_batch, 0, 1)
        # positions a token attends back over in a sliding-window layer (1: none of them sliding)
        self.window = max(1, int(c.llama_model_n_swa(model)))

    def clear(self) -> None:
        """Forget every sequence's cells."""
        self._c.llama_memory_clear(self.memory, True)

    def trim(self, sequence: int, keep: int = 0) -> bool:
        """Forget a sequence's cells from position `keep` on (0: all of them). False when the
        sequence cannot keep exactly its first `keep` positions: then it holds none, and the
        caller prefills from position 0.

        A recurrent state (Mamba, RWKV, a hybrid's recurrent layers) holds only its last
        position, so llama.cpp refuses to cut it short (seq_rm returns false, the cells stay); a
        sliding-window cache may have overwritten positions the next token still attends to.
        Decoding on from `keep` over either fails the step or reads the wrong state."""
        c, memory = self._c, self.memory
        if keep > 0 and c.llama_memory_seq_rm(memory, sequence, keep, -1):
            # llama.cpp server's test: positions keep - window .. keep - 1 there, none after
            low = c.llama_memory_seq_pos_min(memory, sequence)
            high = c.llama_memory_seq_pos_max(memory, sequence)
            if 0 <= low <= max(0, keep - self.window) and high == keep - 1:
                return True
        c.llama_memory_seq_rm(memory, sequence, -1, -1)  # removing a whole sequence never fails
        return keep == 0

    def copy(self, source: int, target: int) -> None:
        """Replace sequence `target`'s cells with all of `source`'s. Across KV streams (one per
        sequence unless unified) llama.cpp copies only whole sequences; the caller trims after."""
        self.trim(target)
        self._c.llama_memory_seq_cp(self.memory, source, target, -1, -1)

    def decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        sequences: Sequence[int],
        outputs: Sequence[bool],
    ) -> np.ndarray:
        """One llama_decode of at most n_batch entries; the logits [outputs, vocab] (a view, valid
        until the next decode) of the entries marked as outputs, in batch order."""
        n = len(tokens)
        if not 0 < n <= self.params.n_batch:
            raise ValueError(f"a batch holds 1..{self.params.n_batch} tokens, got {n}")
        b = self.batch
        for i in range(n):
            b.token[i] = tokens[i]
            b.pos[i] = positions[i]
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = sequences[i]
            b.logits[i] = outputs[i]
        b.n_tokens = n
        rc = self._c.llama_decode(self.ctx, b)
        if rc != 0:
            what = "no KV cache slot for the batch" if rc == 1 else f"llama_decode returned {rc}"
            raise LlamaCppError(f"{what}: {_CAPTURE.reason('no reason logged')}")
        count = sum(1 for o in outputs if o)
        pointer = self._c.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(pointer, shape=(count, self.vocab))

    def close(self) -> None:
        if self.ctx:
            self._c.llama_batch_free(self.batch)
            self._c.llama_free(self.ctx)
            self.ctx = None


def quantize_gguf(source: Path, out: Path, weight_type: str, threads: int) -> None:
    """Requantize `source` into `out` with llama.cpp's own quantizer (llama-quantize's code)."""
    c = lib()
    ftype = getattr(c, f"LLAMA_FTYPE_MOSTLY_{weight_type}", None)
    if ftype is None:
        raise LlamaCppBuildError(f"this llama-cpp-python has no {weight_type} quantization")
    params = c.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = True  # the source may be quantized already (a Q4_1 GGUF)
    _CAPTURE.lines.clear()
    rc = c.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.is_file():
        raise LlamaCppBuildError(
            f"llama_model_quantize to {weight_type} failed ({rc}): {_CAPTURE.reason('no reason logged')}"
        )
