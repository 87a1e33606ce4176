"""loop=slots lifecycle races found by s44: close() must not pull the decoder from under a step
it gave up waiting for, a generate() whose loop thread died says the loop's error, two generates
at once each get their own rows, and score() never sees the model vanish under it."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import torch

from optimizer.backends.torch import slot_generate
from optimizer.backends.torch.slot_server import SlotEngine
from unit.backends.torch.test_slot_loop import prompts, tiny_llama


def held_steps(engine: SlotEngine, monkeypatch: pytest.MonkeyPatch, then: Any = None) -> tuple[Any, Any]:
    """Make the decoder's steps wait for `release` (set `stepping` first), then run `then` or the step."""
    assert engine.decoder is not None
    run_step = engine.decoder.run_step
    stepping, release = threading.Event(), threading.Event()

    def held_step(busy: int, columns: int) -> None:
        stepping.set()
        assert release.wait(30)
        (then or run_step)(busy, columns)

    monkeypatch.setattr(engine.decoder, "run_step", held_step)
    return stepping, release


def test_close_that_gives_up_on_a_step_leaves_the_step_its_decoder(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """close()'s join timed out while a decode step ran, and close() cleared the decoder under it:
    the step then failed its requests with "'NoneType' object has no attribute 'tokens'"."""
    engine = SlotEngine(tiny_llama(), 1, "cpu", prefix_sharing=True)
    engine.reserve(64)
    stepping, release = held_steps(engine, monkeypatch)
    thread = engine._thread  # close() waits 60 s for the loop: the test, a moment
    monkeypatch.setattr(thread, "join", lambda timeout=None: threading.Thread.join(thread, 0.2))
    engine.submit(prompts(6)[0], 5)
    assert stepping.wait(30)
    with caplog.at_level(logging.ERROR):
        engine.close()  # returns while the step still runs
        assert thread.is_alive()
        release.set()
        threading.Thread.join(thread, 30)
    assert not thread.is_alive()
    # no step failed (the decoder's INFO line may be captured too, where an earlier test set INFO)
    failed = [
        r.getMessage()
        for r in caplog.records
        if r.name == SlotEngine.__module__ and r.levelno >= logging.ERROR
    ]
    assert failed == []
    assert [c.error for c in engine._done if c.error] == []
    assert (
        engine.decoder is None and engine.prefixes is None and engine.model is None
    )  # the loop dropped them


class Died(BaseException):
    """Escapes the step's `except Exception`, as the loop thread's own failures do."""


def test_generate_says_the_loop_error_when_the_loop_dies_after_a_collect_timed_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A collect timed out just before the loop thread died: generate() saw the engine stopped and
    said "finished 0 of 3", and its cancel_all() discarded the completions with the loop's error."""
    engine = SlotEngine(tiny_llama(), 4, "cpu")
    engine.reserve(64)

    def die(busy: int, columns: int) -> None:
        raise Died("the device fell off")

    stepping, release = held_steps(engine, monkeypatch, die)
    collect = engine.collect

    def late_collect(timeout_seconds: float) -> list[Any]:
        taken = collect(min(timeout_seconds, 0.05))
        if not taken and stepping.is_set() and not release.is_set():  # timed out: now the loop dies
            release.set()
            threading.Thread.join(engine._thread, 30)
        return taken

    monkeypatch.setattr(engine, "collect", late_collect)
    try:
        with pytest.raises(RuntimeError) as raised:
            engine.generate(torch.tensor(prompts(6, 6, 6, seed=1)), 5)
    finally:
        release.set()
        engine.close()
    assert "the slot engine's loop thread stopped: Died: the device fell off" in str(raised.value)


def test_two_generates_at_once_each_get_their_own_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each generate() took every completion there was: one took the other's row, counted it as
    its own and failed with a KeyError, and the other waited out the result timeout."""
    monkeypatch.setattr(slot_generate, "RESULT_TIMEOUT_SECONDS", 10.0)
    engine = SlotEngine(tiny_llama(), 2, "cpu")
    engine.reserve(128)
    collect = engine.collect

    def late_for_b(timeout_seconds: float) -> list[Any]:  # A always takes first what both wait for
        if threading.current_thread().name == "b":
            time.sleep(0.3)
        return collect(timeout_seconds)

    monkeypatch.setattr(engine, "collect", late_for_b)
    results: dict[str, Any] = {}

    def generate(name: str, prompt: list[int], new_tokens: int) -> None:
        try:
            results[name] = engine.generate(torch.tensor([prompt]), new_tokens).token_ids
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            results[name] = exc

    a_prompt, b_prompt = prompts(6, 7, seed=2)
    a = threading.Thread(target=generate, args=("a", a_prompt, 8), name="a")
    b = threading.Thread(target=generate, args=("b", b_prompt, 2), name="b")
    try:
        a.start()
        deadline = time.perf_counter() + 30
        while not engine._running and time.perf_counter() < deadline:
            time.sleep(0.005)
        b.start()
        a.join(30)
        b.join(30)
        alone_a = engine.generate(torch.tensor([a_prompt]), 8).token_ids
        alone_b = engine.generate(torch.tensor([b_prompt]), 2).token_ids
    finally:
        engine.close()
    assert isinstance(results["a"], torch.Tensor), results["a"]
    assert isinstance(results["b"], torch.Tensor), results["b"]
    assert torch.equal(results["a"], alone_a) and torch.equal(results["b"], alone_b)


def test_score_during_close_never_calls_a_cleared_model() -> None:
    """score() checked the model before waiting for the device lock and close() cleared it
    meanwhile: it then called None ("'NoneType' object is not callable")."""
    engine = SlotEngine(tiny_llama(), 1, "cpu")
    outcome: list[Any] = []

    def score() -> None:
        try:
            outcome.append(engine.score(torch.tensor([prompts(5)[0]])))
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            outcome.append(exc)

    engine._device_lock.acquire()  # as a step holds it
    scorer = threading.Thread(target=score)
    closer = threading.Thread(target=engine.close)
    try:
        scorer.start()
        time.sleep(0.2)  # score() waits for the lock
        closer.start()
        time.sleep(0.2)
    finally:
        engine._device_lock.release()
    scorer.join(30)
    closer.join(30)
    assert not scorer.is_alive() and not closer.is_alive()
    assert len(outcome) == 1
    if isinstance(outcome[0], BaseException):  # close() came first: said so, not a TypeError
        assert isinstance(outcome[0], RuntimeError) and str(outcome[0]) == "the slot engine is closed"
    else:
        assert outcome[0].shape == (1, 5, 300)
