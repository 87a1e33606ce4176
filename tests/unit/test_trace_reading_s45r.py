"""Trace and JSONL text files as users' tools write them: encodings, line separators inside a
prompt, numbers past a float's range, and counts too large to build."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from optimizer.errors import UserError
from optimizer.measure.stream import TextTokens, read_trace
from optimizer.measure.text import load_text


class WordTokenizer:
    """Each word is one token id (its length + 100)."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [100 + len(word) for word in text.split()]}


def text() -> TextTokens:
    return TextTokens(list(range(1000, 1997)), start_ids=(1,), seed=3)


def line(arrival: float, prompt: str = "hi there") -> str:
    return json.dumps({"arrival": arrival, "prompt": prompt, "output_tokens": 4}, ensure_ascii=False)


def read(path: Path, max_context: int | None = 2048) -> list[tuple[int, ...]]:
    return [r.prompt_ids for r in read_trace(path, WordTokenizer(), text(), max_context).requests]


def test_a_trace_saved_with_a_byte_order_mark_reads_like_one_without(tmp_path: Path) -> None:
    """Notepad and PowerShell save UTF-8 with a BOM: line 1 was refused as "not JSON"."""
    plain = tmp_path / "plain.jsonl"
    plain.write_text(f"{line(0)}\n{line(1)}\n", encoding="utf-8")
    marked = tmp_path / "marked.jsonl"
    marked.write_text(f"{line(0)}\n{line(1)}\n", encoding="utf-8-sig")
    assert (
        read_trace(marked, WordTokenizer(), text()).sha256
        == read_trace(plain, WordTokenizer(), text()).sha256
    )


def test_a_trace_that_is_not_utf8_names_the_line_instead_of_crashing(tmp_path: Path) -> None:
    """A Latin-1 file was a UnicodeDecodeError: optimize's exit 3, "a bug"."""
    trace = tmp_path / "latin1.jsonl"
    trace.write_bytes(f"{line(0)}\n{line(1, 'café au lait')}\n".encode("latin-1"))
    with pytest.raises(UserError) as error:
        read(trace)
    assert error.value.field == "workload.trace line 2"
    assert "UTF-8" in error.value.problem and "UTF-8" in error.value.fix


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_a_prompt_holding_a_unicode_line_separator_stays_one_line(tmp_path: Path, separator: str) -> None:
    """JSON allows these raw inside a string (json.dumps(ensure_ascii=False) writes them so), and
    JSONL ends lines at newlines only: str.splitlines() cut the line in two, "not JSON"."""
    trace = tmp_path / "t.jsonl"
    trace.write_text(f"{line(0, f'one{separator}two three')}\n{line(1)}\r\n\n", encoding="utf-8")
    assert len(read(trace)) == 2
    old_mac = tmp_path / "cr.jsonl"  # lone carriage returns still end lines, as before
    old_mac.write_text(f"{line(0)}\r{line(1)}\r", encoding="utf-8")
    assert len(read(old_mac)) == 2


@pytest.mark.parametrize(
    "raw,key",
    [
        ('{"arrival": 1' + "0" * 400 + ', "prompt": "x", "output_tokens": 4}', "arrival"),
        ('{"arrival": 0, "prompt": "x", "output_tokens": 1' + "0" * 400 + "}", "output_tokens"),
        ('{"arrival": 0, "prompt_tokens": 1' + "0" * 400 + ', "output_tokens": 4}', "prompt_tokens"),
    ],
)
def test_an_integer_past_a_floats_range_is_refused_naming_the_field(
    tmp_path: Path, raw: str, key: str
) -> None:
    """An integer past a float's range was an OverflowError (exit 3, "a bug")."""
    trace = tmp_path / "t.jsonl"
    trace.write_text(f"{line(0)}\n{raw}\n", encoding="utf-8")
    with pytest.raises(UserError) as error:
        read(trace)
    assert error.value.field == f"workload.trace line 2: {key}" and "too large" in error.value.problem


def test_an_integer_past_pythons_digit_limit_is_not_json_on_its_line(tmp_path: Path) -> None:
    """json.loads raises a plain ValueError (not a JSONDecodeError) past 4300 digits: a crash."""
    trace = tmp_path / "t.jsonl"
    trace.write_text(f"{line(0)}\n" + '{"arrival": 1' + "0" * 5000 + "}\n", encoding="utf-8")
    with pytest.raises(UserError) as error:
        read(trace)
    assert error.value.field == "workload.trace line 2" and "is not JSON" in error.value.problem


def test_a_counted_prompt_over_the_context_is_refused_before_it_is_built(tmp_path: Path) -> None:
    """`prompt_tokens: 30000000` (a typo's extra zeros) built 30M token ids, ~500 MB, before the
    context check refused it; 300M would exhaust the memory."""
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"arrival": 0, "prompt_tokens": 30000000, "output_tokens": 4}\n', encoding="utf-8")
    tracemalloc.start()
    try:
        with pytest.raises(UserError) as error:
            read(trace, max_context=2048)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error.value.field == "workload.trace line 1: prompt"
    assert "30000000 prompt + 4 output tokens exceed the model's context of 2048" in error.value.problem
    assert peak < 50_000_000


def test_a_trace_path_that_is_a_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        read(tmp_path)
    assert error.value.field == "workload.trace" and "is a folder" in error.value.problem


def quality_rows(count: int, separator: str = " ") -> list[str]:
    return [
        json.dumps({"text": f"paragraph {i} one{separator}two"}, ensure_ascii=False) for i in range(count)
    ]


def test_a_jsonl_quality_text_keeps_line_separators_inside_its_entries(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(quality_rows(12, "\u2028")) + "\n", encoding="utf-8")
    splits = load_text(str(path))
    assert len(splits.quality) + len(splits.workload) == 12


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_a_json_quality_text_with_a_byte_order_mark_reads_like_one_without(
    tmp_path: Path, suffix: str
) -> None:
    rows = [f"paragraph {i}" for i in range(12)]
    body = json.dumps(rows) if suffix == ".json" else "\n".join(json.dumps(r) for r in rows)
    plain, marked = tmp_path / f"plain{suffix}", tmp_path / f"marked{suffix}"
    plain.write_text(body, encoding="utf-8")
    marked.write_text(body, encoding="utf-8-sig")
    assert load_text(str(marked)).sha256 == load_text(str(plain)).sha256


def test_a_quality_text_number_past_pythons_digit_limit_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join([*quality_rows(11), "1" + "0" * 5000]) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as error:
        load_text(str(path))
    assert error.value.field == "quality.text" and "line 12 is not JSON" in error.value.problem


def test_a_bad_byte_after_a_byte_order_mark_names_its_own_line(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(b"\xef\xbb\xbf" + f"{line(0)}\n{line(1)}\n{line(2, 'café')}\n".encode("latin-1"))
    with pytest.raises(UserError) as error:
        read(trace)
    assert error.value.field == "workload.trace line 3" and "byte 0xe9" in error.value.problem
