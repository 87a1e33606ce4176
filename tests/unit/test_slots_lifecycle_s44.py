"""loop=slots lifecycle defects found by s44: a decoder built while close() runs must not be
reattached after it, the decoder's state changes only under the engine's lock, and a generate()
that close() ends says the engine was closed."""

from __future__ import annotations

import gc
import threading
import weakref
from typing import Any

import pytest
import torch

from optimizer.backends.torch import slot_server
from optimizer.backends.torch.slot_decoder import SlotDecoder
from optimizer.backends.torch.slot_server import SlotEngine
from unit.backends.torch.test_slot_loop import prompts, tiny_llama


class SlowBuild(SlotDecoder):
    """A decoder whose build (regions allocated) blocks until the test releases it."""

    started = threading.Event()
    release = threading.Event()
    built: list[weakref.ref[SlotDecoder]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        SlowBuild.built.append(weakref.ref(self))
        SlowBuild.started.set()
        assert SlowBuild.release.wait(30)


def test_a_build_that_outlasts_close_is_dropped_not_reattached(monkeypatch: pytest.MonkeyPatch) -> None:
    """close() gives up waiting for a long build; the build ends later and must not attach its
    decoder to the closed engine (it held the regions' memory after close)."""
    SlowBuild.started.clear()
    SlowBuild.release.clear()
    SlowBuild.built.clear()
    monkeypatch.setattr(slot_server, "SlotDecoder", SlowBuild)
    engine = SlotEngine(tiny_llama(), 2, "cpu", prefix_sharing=True)
    thread = engine._thread  # close() waits 60 s for a build: the test, a moment
    monkeypatch.setattr(thread, "join", lambda timeout=None: threading.Thread.join(thread, 0.2))
    try:
        engine.submit(prompts(6)[0], 4)
        assert SlowBuild.started.wait(30)
        engine.close()  # returns while the build still runs
        assert engine._thread.is_alive()
    finally:
        SlowBuild.release.set()
    threading.Thread.join(thread, 30)
    assert not thread.is_alive()
    assert engine.decoder is None and engine.prefixes is None
    gc.collect()
    assert [ref() for ref in SlowBuild.built] == [None]  # nothing holds the built regions


class LockChecked(SlotEngine):
    """Records, for every change of the decoder's state after start, whether the lock was held."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("decoder", "prefixes") and "_thread" in self.__dict__:
            self.__dict__.setdefault("changes", []).append((name, value is None, self._cond._is_owned()))  # type: ignore[attr-defined]
        super().__setattr__(name, value)


def test_the_decoders_state_changes_under_the_lock() -> None:
    """A rebuild cleared the decoder and the prefixes outside the lock: a reader holding it
    (forget_cached_prefixes checks prefixes, then uses them) could see them vanish between."""
    engine = LockChecked(tiny_llama(), 2, "cpu", prefix_sharing=True)
    try:
        engine.reserve(64)
        engine.reserve(1000)  # a rebuild: the old decoder goes first
        engine.forget_cached_prefixes()
    finally:
        engine.close()
    changes = engine.__dict__["changes"]
    assert [(name, cleared) for name, cleared, _ in changes].count(("decoder", False)) == 2
    assert [c for c in changes if not c[2]] == []


def test_generate_ended_by_close_says_the_engine_was_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A generate() waiting on its rows when close() runs said "finished 0 of 3 requests", as if
    they had timed out."""
    engine = SlotEngine(tiny_llama(), 1, "cpu")
    engine.reserve(64)
    assert engine.decoder is not None
    run_step = engine.decoder.run_step
    stepping, release = threading.Event(), threading.Event()

    def held_step(busy: int, columns: int) -> None:
        stepping.set()
        assert release.wait(30)
        run_step(busy, columns)

    monkeypatch.setattr(engine.decoder, "run_step", held_step)
    errors: list[BaseException] = []

    def generate() -> None:
        try:
            engine.generate(torch.tensor(prompts(6, 6, 6, seed=1)), 5)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            errors.append(exc)

    caller = threading.Thread(target=generate)
    caller.start()
    assert stepping.wait(30)
    threading.Timer(0.2, release.set).start()
    engine.close()
    caller.join(30)
    assert not caller.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert str(errors[0]) == "the slot engine was closed: finished 0 of 3 requests"
