"""Prefix reuse in the llama.cpp engine over a fake of llama.cpp's memory API: a memory that cannot
keep part of a sequence (a recurrent state holds only its last position; a sliding-window cache
overwrites old positions) makes the request prefill from position 0 instead of decoding on after
cells that are not (or no longer) what the scheduler thinks.

llama_memory_seq_rm returns false where a recurrent state would have to be cut short and leaves
the cells in place; `Context.trim` ignored that, so the next decode either failed the step
(llama.cpp: "inconsistent sequence positions", every request in the batch failed) or attended
over the wrong tokens."""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from optimizer.backends.llamacpp import native
from optimizer.backends.llamacpp.errors import LlamaCppError
from optimizer.backends.llamacpp.slots import COPY_MIN_TOKENS, Request, Slots

VOCAB = 997


class FakeLlama:
    """The parts of llama.cpp's C API that Context uses, over one memory of `kind`: "attention"
    (every position kept), "recurrent" (one state at its last position: seq_rm refuses a partial
    removal and changes nothing) or "swa" (positions before the last `window` are overwritten).
    The next token is a hash of what the decoded token attends to, so stale or missing cells
    change it."""

    GGML_TYPE_F16 = 1
    LLAMA_FLASH_ATTN_TYPE_ENABLED, LLAMA_FLASH_ATTN_TYPE_DISABLED = 1, 0

    def __init__(self, kind: str, window: int = 0) -> None:
        self.kind, self.window = kind, window
        self.cells: defaultdict[int, dict[int, int]] = defaultdict(dict)  # sequence -> position -> token
        self.refused = 0

    # the context
    def llama_context_default_params(self) -> SimpleNamespace:
        return SimpleNamespace()

    def llama_init_from_model(self, model: object, params: object) -> object:
        return object()

    def llama_get_memory(self, ctx: object) -> object:
        return self

    def llama_batch_init(self, n: int, embd: int, seqs: int) -> object:
        return object()

    def llama_model_n_swa(self, model: object) -> int:
        return self.window if self.kind == "swa" else 0

    # the memory
    def llama_memory_clear(self, memory: object, data: bool) -> None:
        self.cells.clear()

    def llama_memory_seq_rm(self, memory: object, seq: int, p0: int, p1: int) -> bool:
        cells = self.cells[seq]
        p0, p1 = max(p0, 0), (p1 if p1 >= 0 else 2**31)
        last = max(cells, default=-1)
        if self.kind == "recurrent" and 0 < p0 <= last < p1:  # llama_memory_recurrent::seq_rm
            self.refused += 1
            return False
        for pos in [p for p in cells if p0 <= p < p1]:
            del cells[pos]
        return True

    def llama_memory_seq_cp(self, memory: object, source: int, target: int, p0: int, p1: int) -> None:
        self.cells[target] = dict(self.cells[source])

    def llama_memory_seq_pos_min(self, memory: object, seq: int) -> int:
        cells = self.cells[seq]
        if not cells:
            return -1
        return max(cells) if self.kind == "recurrent" else min(cells)  # one state: its position

    def llama_memory_seq_pos_max(self, memory: object, seq: int) -> int:
        return max(self.cells[seq], default=-1)

    # a decode, as the engine's step calls Context.decode
    def decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        sequences: Sequence[int],
        outputs: Sequence[bool],
    ) -> np.ndarray:
        firsts: dict[int, int] = {}
        for pos, seq in zip(positions, sequences, strict=True):
            firsts.setdefault(seq, pos)
        for seq, pos in firsts.items():  # llama_batch_allocr's check
            last = max(self.cells[seq], default=-1)
            if last >= 0 and pos != last + 1:
                raise LlamaCppError(
                    f"inconsistent sequence positions: sequence {seq} holds {last}, batch at {pos}"
                )
        rows = []
        for token, pos, seq, output in zip(tokens, positions, sequences, outputs, strict=True):
            cells = self.cells[seq]
            cells[pos] = token
            if output:
                low = pos - self.window + 1 if self.kind == "swa" else 0
                seen = sorted((p, t) for p, t in cells.items() if low <= p <= pos)
                row = np.zeros(VOCAB, dtype=np.float32)
                row[zlib.crc32(repr(seen).encode()) % VOCAB] = 1.0
                rows.append(row)
        if self.kind == "swa":  # the cells outside every window are taken for new tokens
            for cells in self.cells.values():
                for pos in [p for p in cells if p <= max(cells) - self.window]:
                    del cells[pos]
        return np.stack(rows) if rows else np.zeros((0, VOCAB), dtype=np.float32)


def context(monkeypatch: pytest.MonkeyPatch, fake: FakeLlama) -> native.Context:
    monkeypatch.setattr(native, "lib", lambda: fake)
    params = native.ContextParams(2, 256, 64, 64, 0, "f16", False)
    return native.Context(object(), VOCAB, params)


def serve(
    monkeypatch: pytest.MonkeyPatch, fake: FakeLlama, asked: list[tuple[int, ...]], reuse: bool
) -> tuple[Any, ...]:
    """Each prompt after the one before finished, through Slots on one sequence (as the engine's
    loop runs them): the tokens of each, and the prompt tokens reused."""
    ctx = context(monkeypatch, fake)
    slots = Slots(1, 64, reuse_prefix=reuse)
    answers = []
    for i, prompt in enumerate(asked):
        request = Request(f"r{i}", prompt, 4)
        slots.waiting.append(request)
        while slots.busy:
            slots.admit(ctx.trim, ctx.copy)
            slots.step(fake.decode, lambda: 0.0)
        answers.append(tuple(request.tokens))
    return tuple(answers), slots.prefix.as_dict()["reused_prompt_tokens"]


PREFIX = tuple(range(1, 21))  # 20 tokens both prompts start with
ASKED = [PREFIX + (30, 31, 32, 33, 34, 35), PREFIX + (40, 41, 42)]


@pytest.mark.parametrize("kind", ["recurrent", "swa"])
def test_a_memory_that_cannot_keep_the_prefix_prefills_the_prompt_again(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    want, _ = serve(monkeypatch, FakeLlama(kind, window=8), ASKED, False)
    fake = FakeLlama(kind, window=8)
    got, reused = serve(monkeypatch, fake, ASKED, True)
    assert got == want  # before: the step failed (recurrent) or answered from missing cells (swa)
    assert reused == 0  # nothing was reused, and the counters say so
    assert fake.refused == (1 if kind == "recurrent" else 0)


def test_an_attention_cache_still_keeps_the_shared_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    want, _ = serve(monkeypatch, FakeLlama("attention"), ASKED, False)
    got, reused = serve(monkeypatch, FakeLlama("attention"), ASKED, True)
    assert got == want and reused == 20


def test_a_recurrent_state_is_reused_where_the_new_prompt_extends_all_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A conversation's next turn resends everything the state holds: nothing to cut, reused."""
    first = ASKED[0]
    (answer,), _ = serve(monkeypatch, FakeLlama("recurrent"), [first], True)
    second = first + answer[:-1] + (50, 51)  # the state holds the prompt and all outputs but the last
    want, _ = serve(monkeypatch, FakeLlama("recurrent"), [first, second], False)
    fake = FakeLlama("recurrent")
    got, reused = serve(monkeypatch, fake, [first, second], True)
    assert got == want and reused == len(first) + 3 and fake.refused == 0


def test_trim_says_whether_the_sequence_holds_exactly_the_kept_positions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for kind, kept in (("attention", True), ("recurrent", False)):
        fake = FakeLlama(kind)
        ctx = context(monkeypatch, fake)
        fake.cells[1] = dict.fromkeys(range(10), 7)
        assert ctx.trim(1, 4) is kept
        assert sorted(fake.cells[1]) == (list(range(4)) if kept else [])  # refused: none left
        assert ctx.trim(1, 0) is True and not fake.cells[1]
    fake = FakeLlama("swa", window=4)
    ctx = context(monkeypatch, fake)
    # 0..4 overwritten; llama.cpp server's test asks for one position more than the window
    fake.cells[0] = dict.fromkeys(range(5, 10), 7)
    assert ctx.trim(0, 9) is True and sorted(fake.cells[0]) == [5, 6, 7, 8]
    fake.cells[0] = dict.fromkeys(range(5, 10), 7)
    assert ctx.trim(0, 8) is False and not fake.cells[0]  # 8 attends back to 5 (and 4: gone)


def test_a_copied_running_prefix_that_a_recurrent_state_cannot_keep_is_prefilled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new request sharing a running one's system prompt: llama.cpp copies the state, which
    holds more than the shared prefix; the copy cannot be cut back, so it prefills it all."""
    system = tuple(range(100, 100 + COPY_MIN_TOKENS + 4))
    first, second = system + (1, 2, 3), system + (4, 5)

    def run(fake: FakeLlama, reuse: bool) -> tuple[tuple[int, ...], ...]:
        ctx = context(monkeypatch, fake)
        slots = Slots(2, 64, reuse_prefix=reuse)
        a, b = Request("a", first, 12), Request("b", second, 4)
        slots.waiting.append(a)
        slots.admit(ctx.trim, ctx.copy)
        slots.step(fake.decode, lambda: 0.0)  # a prefilled, decoding
        slots.waiting.append(b)
        while slots.busy:
            slots.admit(ctx.trim, ctx.copy)
            slots.step(fake.decode, lambda: 0.0)
        return tuple(a.tokens), tuple(b.tokens)

    want = run(FakeLlama("recurrent"), False)
    fake = FakeLlama("recurrent")
    assert run(fake, True) == want and fake.refused == 1


def tiny_mamba(path: Path, vocab: int = 64, n_embd: int = 32) -> Path:
    """A random-weight Mamba GGUF of ~90 KB: llama.cpp keeps its state in recurrent memory."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    inner, state, conv, rank = 2 * n_embd, 8, 4, 4
    w = gguf.GGUFWriter(str(path), "mamba")
    for add, value in (
        (w.add_context_length, 1024),
        (w.add_embedding_length, n_embd),
        (w.add_feed_forward_length, 0),
        (w.add_head_count, 0),
        (w.add_block_count, 2),
        (w.add_ssm_conv_kernel, conv),
        (w.add_ssm_inner_size, inner),
        (w.add_ssm_state_size, state),
        (w.add_ssm_time_step_rank, rank),
        (w.add_layer_norm_rms_eps, 1e-5),
        (w.add_tokenizer_model, "llama"),
        (w.add_token_list, ["<unk>", "<s>", "</s>", *(f"t{i}" for i in range(vocab - 3))]),
        (w.add_token_scores, [0.0] * vocab),
        (w.add_token_types, [2, 3, 3] + [1] * (vocab - 3)),
        (w.add_bos_token_id, 1),
        (w.add_eos_token_id, 2),
    ):
        add(value)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    w.add_tensor("token_embd.weight", weights(vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output.weight", weights(vocab, n_embd))
    for i in range(2):
        for name, tensor in (
            ("attn_norm.weight", np.ones(n_embd, np.float32)),
            ("ssm_in.weight", weights(2 * inner, n_embd)),
            ("ssm_conv1d.weight", weights(inner, conv)),
            ("ssm_conv1d.bias", weights(inner)),
            ("ssm_x.weight", weights(rank + 2 * state, inner)),
            ("ssm_dt.weight", weights(inner, rank)),
            ("ssm_dt.bias", weights(inner)),
            ("ssm_a", -np.exp(weights(inner, state))),
            ("ssm_d", weights(inner)),
            ("ssm_out.weight", weights(n_embd, inner)),
        ):
            w.add_tensor(f"blk.{i}.{name}", tensor)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_prefix_sharing_on_a_real_recurrent_model_answers_as_without_it(tmp_path: Path) -> None:
    """llama.cpp's own recurrent memory: a prompt sharing only a prefix with the slot's state is
    prefilled again (before: 'llama_decode returned -1', the request failed, 20 tokens counted
    reused); the next turn of a conversation reuses the whole state."""
    pytest.importorskip("llama_cpp")
    from optimizer.backends.llamacpp.engine import LlamaCppEngine
    from optimizer.backends.llamacpp.settings import LlamaCppSettings

    model = tiny_mamba(tmp_path / "mamba.gguf")
    first = [5 + i % 50 for i in range(26)]
    results: dict[bool, list[tuple[int, ...]]] = {}
    for sharing in (False, True):
        engine = LlamaCppEngine(model, LlamaCppSettings(prefix_sharing=sharing), threads=1, sequences=1)
        try:
            answers = []
            for prompt in (first, first[:20] + [40, 41, 42], first[:20] + [40, 41, 42]):
                engine.submit(prompt, 6)
                (done,) = engine.collect(30.0)
                assert done.error is None, done.error
                answers.append(done.token_ids)
            # the next turn: everything the state holds (the last prompt, all outputs but the last)
            engine.submit([*first[:20], 40, 41, 42, *answers[-1][:-1], 7], 6)
            (done,) = engine.collect(30.0)
            assert done.error is None, done.error
            results[sharing] = [*answers, done.token_ids]
            if sharing:
                # the repeated prompt reuses nothing (its last token is fed again: a state cannot
                # drop it); the next turn all 23 + 5 cells
                assert engine.prefix_counters()["reused_prompt_tokens"] == 23 + 5
        finally:
            engine.close()
    assert results[True] == results[False]


def test_a_failure_names_llama_cpps_errors_by_level_not_by_wording() -> None:
    """A decode refused over a cut that did not happen logs its cause as an error without the word
    "error" or "failed"; the message kept only the "failed to initialize batch" line after it."""
    from optimizer.backends.llamacpp.native import _LOG_CONT, _LOG_ERROR, _LOG_WARN, _LogCapture

    capture = _LogCapture()
    capture(_LOG_WARN, b"some warning about the failed cache", None)
    # llama_batch_allocr::init's lines, then llama_context::decode's and llama_decode's
    capture(
        _LOG_ERROR,
        b"init: the tokens of sequence 1 in the input batch have inconsistent sequence positions:",
        None,
    )
    capture(_LOG_ERROR, b" - the last position stored in the memory module ... is X = 27", None)
    capture(
        _LOG_ERROR,
        b" - the tokens for sequence 1 in the input batch have a starting position of Y = 20",
        None,
    )
    capture(_LOG_CONT, b"", None)
    capture(_LOG_ERROR, b"decode: failed to initialize batch", None)
    capture(_LOG_ERROR, b"llama_decode: failed to decode, ret = -1", None)
    reason = capture.reason("none")
    assert "inconsistent sequence positions" in reason and "Y = 20" in reason
    assert "failed to decode" in reason and "warning" not in reason
    capture.lines.clear()
    capture(_LOG_WARN, b"only a warning", None)
    assert capture.reason("none") == "only a warning"
