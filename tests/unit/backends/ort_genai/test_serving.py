"""A request stream through onnxruntime-genai's Engine API on a tiny random Llama: per-token
times, greedy tokens equal to the Generator's, the batch limit, cancel_all, and serve_stream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime_genai", reason="needs onnxruntime-genai (pip install 'wattsmith[ort]')")

import torch  # noqa: E402

from optimizer.backends.ort_genai.backend import OrtGenaiEngine  # noqa: E402
from optimizer.backends.ort_genai.serving import GenaiEngineServer  # noqa: E402
from optimizer.backends.ort_genai.settings import OrtGenaiSettings  # noqa: E402
from optimizer.backends.ort_genai.spec import ENGINE_STATIC_BATCH  # noqa: E402
from optimizer.backends.queued import serving_engine  # noqa: E402
from optimizer.backends.registry import build_engine  # noqa: E402
from optimizer.config import ModelConfig, SloConfig  # noqa: E402
from optimizer.measure.serving import Completion, serve_stream  # noqa: E402
from optimizer.measure.stream import RequestStream, StreamRequest  # noqa: E402
from optimizer.model import ModelSpec, resolve_model  # noqa: E402
from optimizer.space import Candidate  # noqa: E402
from unit.factories import target_spec  # noqa: E402

pytestmark = pytest.mark.slow
MAX_REQUESTS = 3  # below genai's own static batch of 4: the limit is ours
VOCAB = 49152


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrtGenaiEngine]:
    workdir = tmp_path_factory.mktemp("genai-serving")
    spec: ModelSpec = resolve_model(ModelConfig(source=str(tiny_model_dir)), workdir)
    target = target_spec(cores=2, bf16=False, energy_source="estimate")
    built = build_engine(spec, Candidate(OrtGenaiSettings(), MAX_REQUESTS, 1), target, workdir)
    assert isinstance(built, OrtGenaiEngine) and built.max_requests == MAX_REQUESTS
    yield built
    built.close()


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    """Prompts of different lengths, so that every batch mixes them."""
    rng = np.random.default_rng(seed)
    return [rng.integers(3, VOCAB, size=3 + 4 * i).tolist() for i in range(count)]


def generated(engine: OrtGenaiEngine, prompt: list[int], new_tokens: int) -> list[int]:
    """The Generator's greedy tokens for one prompt (the backend's offline path)."""
    generation = engine.generate(torch.tensor([prompt]), new_tokens)
    assert generation.token_ids is not None
    return generation.token_ids[0].tolist()


def collect_all(engine: OrtGenaiEngine, count: int, timeout: float = 60.0) -> dict[str, Completion]:
    done: dict[str, Completion] = {}
    deadline = time.monotonic() + timeout
    while len(done) < count and time.monotonic() < deadline:
        done.update((c.request_id, c) for c in engine.collect(0.5))
    assert len(done) == count, f"{len(done)} of {count} requests finished"
    return done


def test_stream_tokens_equal_the_generator_and_carry_token_times(engine: OrtGenaiEngine) -> None:
    asked = prompts(5)
    lengths = [6, 3, 9, 4, 7]
    engine.reserve(64)  # starts the Engine and checks its parity: not inside the first submit
    submitted: dict[str, tuple[int, float]] = {}
    for i, (prompt, new_tokens) in enumerate(zip(asked, lengths, strict=True)):
        before = time.perf_counter()
        request_id = engine.submit(prompt, new_tokens)
        assert time.perf_counter() - before < 0.5  # submit queues; the loop thread generates
        submitted[request_id] = (i, before)
    done = collect_all(engine, len(asked))
    for request_id, completion in done.items():
        i, before = submitted[request_id]
        assert completion.error is None
        assert len(completion.token_ids) == len(completion.token_times) == lengths[i]  # EOS ignored
        times = completion.token_times
        assert before < times[0] and list(times) == sorted(times)  # TTFT from submission, TPOT from the gaps
        assert list(completion.token_ids) == generated(engine, asked[i], lengths[i])


def test_no_more_than_max_requests_run_together(engine: OrtGenaiEngine) -> None:
    server = engine.server()
    server.most_running = 0
    ids = [engine.submit(p, 5) for p in prompts(2 * MAX_REQUESTS + 1, seed=1)]
    done = collect_all(engine, len(ids))
    assert server.capabilities["configured_max_batch_size"] == ENGINE_STATIC_BATCH
    assert server.most_running == MAX_REQUESTS
    # a request's tokens come one per step: never two of one request at the same time
    assert all(len(set(c.token_times)) == 5 for c in done.values())


def test_cancel_all_leaves_the_engine_idle_and_usable(engine: OrtGenaiEngine) -> None:
    for prompt in prompts(2 * MAX_REQUESTS, seed=2):
        engine.submit(prompt, 400)
    time.sleep(0.2)
    engine.cancel_all()
    assert engine.server().idle
    assert engine.collect(0.1) == []  # cancelled requests report nothing
    prompt = prompts(1, seed=3)[0]
    request_id = engine.submit(prompt, 4)
    done = collect_all(engine, 1)
    assert list(done[request_id].token_ids) == generated(engine, prompt, 4)


def test_serve_stream_measures_the_engine(engine: OrtGenaiEngine) -> None:
    from optimizer.measure.energy import EstimateMeter

    assert serving_engine(engine, MAX_REQUESTS, 64) is engine  # no queue in front of it
    requests = tuple(StreamRequest(i, 0.02 * i, tuple(p), 4) for i, p in enumerate(prompts(8, seed=4)))
    run = serve_stream(engine, RequestStream(requests, "test"), EstimateMeter(2, 5.0, 1.5), SloConfig(), 1, 1)
    assert all(r.output_tokens == 4 and r.ttft > 0 for r in run.requests)
    assert run.window.output_tokens > 0


def test_close_stops_the_loop_thread(tiny_model_dir: Path, engine: OrtGenaiEngine) -> None:
    other = OrtGenaiEngine.load(engine.build_dir, OrtGenaiSettings(), threads=1, max_requests=2)
    request_id = other.submit(prompts(1)[0], 3)
    assert [c.request_id for c in collect_all(other, 1).values()] == [request_id]
    server = other.server()
    other.close()
    assert not server._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        other.submit([1, 2], 2)


def test_more_than_genais_batch_fails_to_start(engine: OrtGenaiEngine) -> None:
    import onnxruntime_genai as og

    with pytest.raises(RuntimeError, match=f"at most {ENGINE_STATIC_BATCH} requests at once"):
        GenaiEngineServer(og, engine.model, ENGINE_STATIC_BATCH + 1)


def test_a_refused_request_fails_alone(engine: OrtGenaiEngine) -> None:
    too_long = engine.submit(list(range(3, 603)), 4)  # past the tiny model's 512-token context
    prompt = prompts(1, seed=5)[0]
    fine = engine.submit(prompt, 3)
    done = collect_all(engine, 2)
    assert done[too_long].error is not None and not done[too_long].token_ids
    assert done[fine].error is None and list(done[fine].token_ids) == generated(engine, prompt, 3)


def test_an_engine_that_decodes_otherwise_fails_its_parity_check(
    engine: OrtGenaiEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optimizer.backends.ort_genai import backend

    def shifted(engine_: OrtGenaiEngine, prompt_ids: torch.Tensor, new_tokens: int, suppressed=()):  # type: ignore[no-untyped-def]
        tokens, logits = real(engine_, prompt_ids, new_tokens, suppressed)
        logits = logits.clone()
        wrong = (tokens + 1) % VOCAB
        # a clear winner that the Engine missed
        logits.scatter_(2, wrong.unsqueeze(-1), float(logits.max()) + 10.0)
        return wrong, logits

    real = backend.reference_greedy
    monkeypatch.setattr(backend, "reference_greedy", shifted)
    fresh = OrtGenaiEngine.load(engine.build_dir, OrtGenaiSettings(), threads=1, max_requests=2)
    try:
        with pytest.raises(RuntimeError, match="Engine's greedy output differs"):
            fresh.submit([1, 2, 3], 2)
        assert fresh._server is None  # not kept: the next submit checks again
    finally:
        fresh.close()


def test_a_failing_engine_loop_reaches_the_caller() -> None:
    """genai raising inside run() (an unhealthy Engine) fails the next collect, submit and
    cancel_all with its message, instead of leaving the stream waiting."""

    class Caps:
        configured_max_batch_size, max_request_length, max_scheduled_tokens = 4, 0, 0

    class BrokenEngine:
        def __init__(self, model: object) -> None:
            pass

        def get_capabilities(self) -> Caps:
            return Caps()

        def create_event_buffer(self, capacity: int) -> list:
            return []

        def create_request(self, options: object = None) -> object:
            return FakeRequest()

        def has_pending_requests(self) -> bool:
            return True

        def run(self, buffer: object) -> list:
            raise RuntimeError("Static-batch execution failed and the Engine is no longer healthy.")

    class FakeRequest:
        def begin_turn(self, tokens: object, options: object) -> int:
            return 1

        def close(self) -> None:
            pass

    class FakeOptions:
        def __init__(self, *args: object) -> None:
            pass

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return lambda *args: None

    class FakeOg:
        Engine, RequestOptions, TurnOptions = BrokenEngine, FakeOptions, FakeOptions

    server = GenaiEngineServer(FakeOg(), object(), 2)
    server.submit([1, 2, 3], 2)
    with pytest.raises(RuntimeError, match="no longer healthy"):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            server.collect(0.1)
    with pytest.raises(RuntimeError, match="no longer healthy"):
        server.submit([1], 1)
    with pytest.raises(RuntimeError, match="no longer healthy"):
        server.cancel_all()
    server.close()
