"""TrialStore: append-only JSONL, resumable, isolated by context, robust to a torn last line."""

from __future__ import annotations

import json
from pathlib import Path

from optimizer.results import FAILED, REJECTED
from optimizer.store import STORE_SCHEMA, TrialStore, context_key


def test_context_key_is_stable_and_order_free() -> None:
    a = context_key({"model": "abc", "target": {"cores": 2, "kind": "cpu"}})
    b = context_key({"target": {"kind": "cpu", "cores": 2}, "model": "abc"})
    assert a == b and len(a) == 16
    assert a != context_key({"model": "abd", "target": {"cores": 2, "kind": "cpu"}})


def test_append_then_get_in_a_new_store(tmp_path: Path, make_result, make_quality, make_performance) -> None:
    path = tmp_path / "sub" / "trials.jsonl"
    result = make_result(quality=make_quality(mean_kl=0.01), performance=make_performance())
    store = TrialStore(path, "ctx")
    assert store.get(result.candidate) is None
    store.append(result)
    assert store.get(result.candidate) == result
    resumed = TrialStore(path, "ctx")
    assert resumed.get(result.candidate) == result
    record = json.loads(path.read_text().splitlines()[0])
    assert record["schema"] == STORE_SCHEMA
    assert record["candidate_key"] == result.candidate.key()
    assert record["numerics_key"] == result.candidate.numerics_key()


def test_other_candidates_are_not_found(tmp_path: Path, make_result, make_candidate) -> None:
    store = TrialStore(tmp_path / "t.jsonl", "ctx")
    store.append(make_result(candidate=make_candidate(batch_size=1)))
    assert TrialStore(tmp_path / "t.jsonl", "ctx").get(make_candidate(batch_size=2)) is None


def test_a_different_context_is_isolated(tmp_path: Path, make_result) -> None:
    path = tmp_path / "t.jsonl"
    result = make_result()
    TrialStore(path, "ctx-a").append(result)
    assert TrialStore(path, "ctx-b").get(result.candidate) is None
    assert TrialStore(path, "ctx-a").get(result.candidate) == result


def test_the_last_record_wins(tmp_path: Path, make_result) -> None:
    path = tmp_path / "t.jsonl"
    store = TrialStore(path, "ctx")
    store.append(make_result(status=FAILED, reason="first try"))
    store.append(make_result(status=REJECTED, reason="second try"))
    assert TrialStore(path, "ctx").get(make_result().candidate).reason == "second try"
    assert len(path.read_text().splitlines()) == 2  # append-only


def test_a_torn_last_line_is_skipped_and_the_next_append_loads(
    tmp_path: Path, make_result, make_candidate
) -> None:
    path = tmp_path / "t.jsonl"
    first = make_result(candidate=make_candidate(batch_size=1))
    TrialStore(path, "ctx").append(first)
    full = path.read_text()
    torn = json.dumps({"schema": STORE_SCHEMA, "context": "ctx", "candidate_key": "x"})[:25]
    path.write_text(full + torn)  # a writer killed mid-line: no newline
    store = TrialStore(path, "ctx")
    assert store.get(first.candidate) == first
    second = make_result(candidate=make_candidate(batch_size=2))
    store.append(second)
    lines = path.read_text().splitlines()
    assert lines[1] == torn  # the torn fragment stays on its own line
    resumed = TrialStore(path, "ctx")
    assert resumed.get(first.candidate) == first
    assert resumed.get(second.candidate) == second


def test_blank_and_garbage_lines_are_skipped(tmp_path: Path, make_result) -> None:
    path = tmp_path / "t.jsonl"
    result = make_result()
    TrialStore(path, "ctx").append(result)
    path.write_text("\n" + "{not json\n" + path.read_text() + "\n")
    assert TrialStore(path, "ctx").get(result.candidate) == result


def test_other_schema_versions_are_ignored(tmp_path: Path, make_result) -> None:
    path = tmp_path / "t.jsonl"
    result = make_result()
    TrialStore(path, "ctx").append(result)
    record = json.loads(path.read_text())
    record["schema"] = STORE_SCHEMA + 1
    path.write_text(json.dumps(record) + "\n")
    assert TrialStore(path, "ctx").get(result.candidate) is None


def test_an_unreadable_stored_result_is_measured_again(tmp_path: Path, make_result) -> None:
    path = tmp_path / "t.jsonl"
    result = make_result()
    TrialStore(path, "ctx").append(result)
    record = json.loads(path.read_text())
    del record["result"]["status"]
    path.write_text(json.dumps(record) + "\n")
    assert TrialStore(path, "ctx").get(result.candidate) is None


def test_quality_for_a_numerics_key(tmp_path: Path, make_result, make_candidate, make_quality) -> None:
    path = tmp_path / "t.jsonl"
    store = TrialStore(path, "ctx")
    b1 = make_candidate(batch_size=1, precision="bf16")
    quality = make_quality(mean_kl=0.02)
    store.append(make_result(candidate=b1, status=REJECTED, quality=quality))
    store.append(make_result(candidate=make_candidate(batch_size=1), quality=None, status=FAILED))
    resumed = TrialStore(path, "ctx")
    b64 = make_candidate(batch_size=64, threads=1, precision="bf16")
    assert resumed.quality_for(b64.numerics_key()) == quality.to_dict()
    # a failed record carries no quality; unknown numerics have none either
    assert resumed.quality_for(make_candidate().numerics_key()) is None
    assert resumed.quality_for(make_candidate(quantization="int8-weight").numerics_key()) is None
    assert TrialStore(path, "other").quality_for(b64.numerics_key()) is None
