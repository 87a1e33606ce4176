"""Evaluator: quality first (reject early), then the workload; failures become results."""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from optimizer.backends.base import Generation
from optimizer.config import QualityConfig, SearchConfig, SloConfig, WorkloadConfig
from optimizer.measure.energy import Measurement
from optimizer.measure.workload import Workload
from optimizer.results import FAILED, MEASURED, REJECTED
from optimizer.search import evaluate as evaluate_module
from optimizer.search.evaluate import Evaluator
from optimizer.search.runner import run_search
from optimizer.store import TrialStore

VOCAB = 16


class FakeEngine:
    """Logits depend on the input ids; int8-dynamic scrambles them (breaks quality)."""

    def __init__(self, settings, log: list) -> None:
        self.settings = settings
        self.log = log

    def _table(self) -> torch.Tensor:
        table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0)) * 4
        return table.flip(-1) if self.settings.quantization == "int8-dynamic" else table

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        self.log.append(("score", self.settings.label()))
        return self._table()[token_ids]

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        self.log.append(("generate", self.settings.label()))
        if self.settings.attention == "eager":  # slow: used for the timeout test
            time.sleep(0.05)
        # greedy by the same table; a static cache here is broken: it decodes the runner-up
        choice = 1 if self.settings.kv_cache == "static" else 0
        last, tokens = prompt_ids[:, -1], []
        for _ in range(max_new_tokens):
            last = self._table()[last].argsort(-1, descending=True)[:, choice]
            tokens.append(last)
        return Generation(
            prompt_ids.shape[0],
            max_new_tokens,
            0.001,
            0.001 + 0.001 * (max_new_tokens - 1),
            token_ids=torch.stack(tokens, dim=1),
        )

    def close(self) -> None:
        self.log.append(("close", self.settings.label()))


class CountingMeter:
    source = "fake"
    idle_watts = 1.0

    @contextmanager
    def window(self):
        m = Measurement(source=self.source, idle_watts=self.idle_watts)
        start = time.perf_counter()
        yield m
        m.seconds = time.perf_counter() - start
        m.joules = 5.0 * m.seconds


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> list:
    events: list = []

    def build_engine(model, candidate, target, workdir):
        events.append(("build", candidate.settings.label()))
        if candidate.settings.quantization == "int4-weight":
            raise RuntimeError("no kernel\nfor   this")
        return FakeEngine(candidate.settings, events)

    monkeypatch.setattr(evaluate_module, "build_engine", build_engine)
    return events


@pytest.fixture
def make_evaluator(tmp_path: Path, make_target):
    def make(store: TrialStore | None = None, timeout_minutes: float = 15.0) -> Evaluator:
        return Evaluator(
            model=None,  # type: ignore[arg-type]  # only passed through to the (fake) build_engine
            target=make_target(),
            meter=CountingMeter(),
            workload=Workload(torch.randint(0, VOCAB, (4, 5)), 3),
            quality_tokens=torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1)),
            workload_cfg=WorkloadConfig(
                prompt_tokens=5,
                max_new_tokens=3,
                min_window_seconds=0.01,
                repeats=2,
                warmup_batches=1,
                idle_seconds=0,
                slo=SloConfig(tpot_ms=None),
            ),
            quality_cfg=QualityConfig(),
            search_cfg=SearchConfig(candidate_timeout_minutes=timeout_minutes),
            store=store,
            workdir=tmp_path,
        )

    return make


def test_a_good_candidate_is_measured(log, make_evaluator, make_candidate) -> None:
    result = make_evaluator().evaluate(make_candidate(batch_size=2, precision="bf16"))
    assert result.status == MEASURED and result.reason is None
    assert result.quality is not None and result.quality.mean_kl == pytest.approx(0.0, abs=1e-6)
    assert result.performance is not None and len(result.performance.windows) == 2
    assert result.feasible
    assert result.finished_at and result.seconds > 0
    builds = [e for e in log if e[0] == "build"]
    assert builds == [("build", "fp32 kv=dynamic"), ("build", "bf16 kv=dynamic")]  # the reference first
    assert log.count(("close", "fp32 kv=dynamic")) == 1  # the reference engine is released


def test_a_broken_candidate_is_rejected_before_any_energy_is_spent(
    log, make_evaluator, make_candidate
) -> None:
    result = make_evaluator().evaluate(make_candidate(quantization="int8-dynamic"))
    assert result.status == REJECTED
    assert result.performance is None
    assert "quality." in str(result.reason)
    assert ("generate", "fp32 int8-dynamic kv=dynamic") not in log
    assert ("close", "fp32 int8-dynamic kv=dynamic") in log


def test_a_broken_baseline_is_still_measured(log, make_evaluator, make_candidate) -> None:
    result = make_evaluator().evaluate(make_candidate(quantization="int8-dynamic"), role="baseline")
    assert result.status == REJECTED
    assert result.role == "baseline"
    assert result.performance is not None


def test_a_rejected_candidate_becomes_a_baseline_with_energy_figures(
    log, make_evaluator, make_candidate, tmp_path
) -> None:
    """A candidate rejected on quality is stored without energy figures; a later run that makes it
    its baseline (another space.baseline, the same store) measures it: the gains need them."""
    broken, good = make_candidate(quantization="int8-dynamic"), make_candidate(batch_size=2)
    first = make_evaluator(store=TrialStore(tmp_path / "t.db", "ctx"))
    run_search([good, broken], [], good, first, SearchConfig(), QualityConfig(), progress=lambda _: None)
    assert first.store is not None and first.store.get(broken).performance is None  # type: ignore[union-attr]
    second = make_evaluator(store=TrialStore(tmp_path / "t.db", "ctx"))
    outcome = run_search([good], [], broken, second, SearchConfig(), QualityConfig(), progress=lambda _: None)
    assert outcome.baseline.status == REJECTED and not outcome.baseline.reused
    assert outcome.baseline.performance is not None
    # the stored quality broke the bound: the energy is measured anyway, the quality not again
    assert log.count(("score", "fp32 int8-dynamic kv=dynamic")) == 1


def test_a_build_failure_is_a_result(log, make_evaluator, make_candidate) -> None:
    result = make_evaluator().evaluate(make_candidate(quantization="int4-weight"))
    assert result.status == FAILED
    assert result.reason == "RuntimeError: no kernel for this"
    assert result.quality is None and result.performance is None


def test_a_timeout_is_a_failed_result(log, make_evaluator, make_candidate) -> None:
    result = make_evaluator(timeout_minutes=0.1 / 60).evaluate(make_candidate(attention="eager"))
    assert result.status == FAILED
    assert result.reason is not None and result.reason.startswith("CandidateTimeout")
    assert ("close", "fp32 kv=dynamic eager") in log  # the engine is closed on the way out


def test_quality_is_computed_once_per_numerics(log, make_evaluator, make_candidate) -> None:
    evaluator = make_evaluator()
    first = evaluator.evaluate(make_candidate(batch_size=1, precision="bf16"))
    second = evaluator.evaluate(make_candidate(batch_size=8, threads=1, precision="bf16"))
    assert first.quality == second.quality
    bf16_scores = [e for e in log if e == ("score", "bf16 kv=dynamic")]
    assert len(bf16_scores) == 1  # 3 sequences, batch 4: one score call, for the first only
    assert [e for e in log if e[0] == "build"].count(("build", "fp32 kv=dynamic")) == 1


def test_quality_comes_from_the_store(
    log, make_evaluator, make_candidate, make_result, make_quality, tmp_path
) -> None:
    store = TrialStore(tmp_path / "t.db", "ctx")
    quality = make_quality(mean_kl=0.001)
    store.append(make_result(candidate=make_candidate(batch_size=1, precision="bf16"), quality=quality))
    result = make_evaluator(store=store).evaluate(make_candidate(batch_size=4, precision="bf16"))
    assert result.quality == quality
    assert not any(e[0] == "score" for e in log)  # neither reference nor candidate scored


def test_the_reference_is_not_built_while_a_candidate_is_loaded(log, make_evaluator, make_candidate) -> None:
    make_evaluator().evaluate(make_candidate(precision="bf16"))
    builds_and_closes = [e for e in log if e[0] in ("build", "close")]
    # each engine is closed before the next one is built
    assert builds_and_closes == [
        ("build", "fp32 kv=dynamic"),
        ("close", "fp32 kv=dynamic"),
        ("build", "bf16 kv=dynamic"),
        ("close", "bf16 kv=dynamic"),
    ]


def test_a_worker_waits_for_quality_another_worker_is_measuring(
    log, make_evaluator, make_candidate, make_quality, tmp_path, monkeypatch
) -> None:
    import threading

    from optimizer.search import evaluate as module

    monkeypatch.setattr(module, "QUALITY_POLL_SECONDS", 0.05)
    path = tmp_path / "t.db"
    candidate = make_candidate(batch_size=4, precision="bf16")
    other = TrialStore(path, "ctx")  # another worker, measuring this numerics' quality
    assert other.claim("quality/" + candidate.numerics_key(), 60)
    quality = make_quality(mean_kl=0.002)
    threading.Timer(0.3, lambda: other.put_quality(candidate.numerics_key(), quality.to_dict())).start()
    result = make_evaluator(store=TrialStore(path, "ctx")).evaluate(candidate)
    assert result.quality == quality
    assert not any(e[0] == "score" for e in log)  # it waited and reused: nothing scored here
    assert result.status == MEASURED


def test_quality_measured_here_is_stored_before_the_runner_stores_the_result(
    log, make_evaluator, make_candidate, tmp_path
) -> None:
    path = tmp_path / "t.db"
    store = TrialStore(path, "ctx")
    candidate = make_candidate(precision="bf16")
    make_evaluator(store=store).evaluate(candidate)
    assert TrialStore(path, "ctx").quality_for(candidate.numerics_key()) is not None
    assert store.claims_held() == 0  # the quality lease was given up


def test_generate_only_paths_are_checked_against_the_probed_forward_before_any_window(
    log, make_evaluator, make_candidate
) -> None:
    compiled = make_evaluator().evaluate(make_candidate(batch_size=2, compile=True))
    assert compiled.status == MEASURED
    label = compiled.candidate.settings.label()
    events = [e for e in log if e[1] == label]
    first_generate = events.index(("generate", label))
    assert events[first_generate + 1] == ("score", label)  # the check's plain forwards follow it

    broken = make_evaluator().evaluate(make_candidate(batch_size=2, kv_cache="static"))
    assert broken.status == FAILED and broken.performance is None
    assert "greedy output differs from the plain forward's" in (broken.reason or "")

    plain = make_evaluator().evaluate(make_candidate(batch_size=2, precision="bf16"))
    assert plain.status == MEASURED  # nothing generate-only: no check, no extra batch


def test_a_stream_engine_is_sized_for_the_stream_before_the_check_compiles_it(
    log, make_evaluator, make_candidate
) -> None:
    """loop=slots compiles and captures at its slots' size: the check's batch must run at the size
    the stream will use, or the stream pays a second build."""

    class SizedEngine(FakeEngine):
        def reserve(self, sequence_tokens: int) -> None:
            self.log.append(("reserve", sequence_tokens))

    evaluator = make_evaluator()
    candidate = make_candidate(batch_size=2, compile=True)
    evaluator.streams = {
        2.0: SimpleNamespace(longest_request_tokens=300),
        4.0: SimpleNamespace(longest_request_tokens=420),
    }
    evaluator._check_generate_paths(SizedEngine(candidate.settings, log), candidate)
    assert log[:2] == [("reserve", 420), ("generate", candidate.settings.label())]


def test_the_artifact_an_engine_serves_is_in_its_result_and_survives_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_evaluator, make_candidate
) -> None:
    from optimizer.backends.artifacts import cached_artifact
    from optimizer.results import CandidateResult

    events: list = []

    def build_engine(model, candidate, target, workdir):
        if candidate.settings.precision == "bf16":  # the reference (fp32) serves the model's weights

            def quantize(tmp: Path) -> dict:
                (tmp / "model.gguf").write_bytes(b"bf16 weights")
                return {}

            cached_artifact(workdir / "bf16", quantize, "bf16 weights")
        return FakeEngine(candidate.settings, events)

    monkeypatch.setattr(evaluate_module, "build_engine", build_engine)
    store = TrialStore(tmp_path / "t.db", "ctx")
    result = make_evaluator(store).evaluate(make_candidate(batch_size=2, precision="bf16"))
    assert result.status == MEASURED
    assert result.artifact == {
        "what": "bf16 weights",
        "files": {"model.gguf": hashlib.sha256(b"bf16 weights").hexdigest()},
    }
    assert CandidateResult.from_dict(result.to_dict()).artifact == result.artifact  # as stored
    plain = make_evaluator().evaluate(make_candidate(batch_size=2))
    assert plain.status == MEASURED and plain.artifact is None


def dead_worker(path: Path) -> TrialStore:
    """A store as a worker of this host that has since died would have used it."""
    import subprocess

    from optimizer.store.leases import worker_identity

    exited = subprocess.Popen(["true"])
    exited.wait()
    return TrialStore(path, "ctx", worker=f"{worker_identity().rsplit(':', 2)[0]}:{exited.pid}:dead")


def test_numerics_whose_quality_probe_killed_two_processes_fail_unbuilt(
    log, make_evaluator, make_candidate, tmp_path
) -> None:
    """The probe does not depend on the batch size: once two processes died in a numerics' probe,
    its other batch sizes fail at once instead of each killing two more."""
    path = tmp_path / "t.db"
    probe = "quality/probe/" + make_candidate(precision="bf16").numerics_key()
    assert dead_worker(path).claim(probe, 3600)  # died probing bf16
    taker = TrialStore(path, "ctx")
    assert taker.claim(probe, 60)  # taken over by the next: the first death
    taker.release(probe)
    assert dead_worker(path).claim(probe, 3600)  # which died probing it too
    evaluator = make_evaluator(store=TrialStore(path, "ctx"))
    for batch_size in (4, 8):
        failed = evaluator.evaluate(make_candidate(batch_size=batch_size, precision="bf16"))
        assert failed.status == FAILED
        assert failed.reason is not None and failed.reason.startswith("2 processes died in the quality probe")
    assert ("build", "bf16 kv=dynamic") not in log
    assert evaluator.evaluate(make_candidate(batch_size=4)).status == MEASURED  # other numerics
    assert evaluator.store is not None and evaluator.store.claims_held() == 0


def test_the_probe_lease_is_held_around_the_probe_only(
    log, make_evaluator, make_candidate, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A death in a build depends on its batch size: only one in the probe is the numerics'."""
    store = TrialStore(tmp_path / "t.db", "ctx")
    candidate = make_candidate(batch_size=2, precision="bf16")
    probe = "quality/probe/" + candidate.numerics_key()
    holders: list = []
    build, probe_quality = evaluate_module.build_engine, evaluate_module.evaluate_quality

    def building(model, cand, target, workdir):
        holders.append(("build", store.claim_owner(probe)))
        return build(model, cand, target, workdir)

    def probing(engine, reference):
        holders.append(("probe", store.claim_owner(probe)))
        return probe_quality(engine, reference)

    monkeypatch.setattr(evaluate_module, "build_engine", building)
    monkeypatch.setattr(evaluate_module, "evaluate_quality", probing)
    assert make_evaluator(store=store).evaluate(candidate).status == MEASURED
    assert holders[1:] == [("build", None), ("probe", store.worker)]  # [0]: the reference's build
    assert store.claims_held() == 0
