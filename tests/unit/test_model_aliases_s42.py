"""read_shape on checkpoints whose config.json spells the shape by other names (GPT-2's n_head,
MPT's d_model, BLOOM's n_embed...) or derives its key-value heads (Falcon, GPT-BigCode, DBRX): the
numbers transformers' own config class reads from the same file. Then a tiny random GPT-2 through
the space, the memory prefilter and a one-candidate optimize with the torch backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from optimizer.config import ModelConfig, SpaceConfig, WorkloadConfig
from optimizer.errors import UserError
from optimizer.model import read_shape, resolve_model
from optimizer.search.prefilter import estimate_memory_bytes, memory_fit_reason
from optimizer.space import enumerate_candidates

CONFIGS = [
    pytest.param(
        {"model_type": "gpt2", "n_head": 4, "n_embd": 64, "n_layer": 3, "n_positions": 256}, id="gpt2"
    ),
    pytest.param(
        {"model_type": "gptj", "n_head": 4, "n_embd": 64, "n_layer": 3, "n_positions": 256}, id="gptj"
    ),
    pytest.param(
        {"model_type": "codegen", "n_head": 4, "n_embd": 64, "n_layer": 3, "n_positions": 256}, id="codegen"
    ),
    pytest.param(
        {
            "model_type": "gpt_neo",
            "num_heads": 4,
            "hidden_size": 64,
            "num_layers": 3,
            "attention_types": [[["global"], 3]],
        },
        id="gpt_neo",
    ),
    pytest.param({"model_type": "bloom", "n_head": 4, "n_embed": 64, "n_layer": 3}, id="bloom-n_embed"),
    pytest.param({"model_type": "mpt", "n_heads": 4, "d_model": 64, "n_layers": 3}, id="mpt"),
    pytest.param({"model_type": "xglm", "attention_heads": 4, "d_model": 64, "num_layers": 3}, id="xglm"),
    # multi-query attention: one K/V head shared by all (Falcon-7B, StarCoder)
    pytest.param(
        {"model_type": "falcon", "num_attention_heads": 8, "hidden_size": 64, "num_hidden_layers": 3},
        id="falcon-mq",
    ),
    pytest.param(
        {"model_type": "falcon", "num_attention_heads": 8, "hidden_size": 64, "num_hidden_layers": 3}
        | {"new_decoder_architecture": True, "num_kv_heads": 2},
        id="falcon-40b-style",
    ),
    pytest.param(
        {
            "model_type": "falcon",
            "num_attention_heads": 8,
            "n_embed": 64,
            "num_hidden_layers": 3,
            "multi_query": False,
        },
        id="falcon-mha-n_embed",
    ),
    pytest.param(
        {"model_type": "gpt_bigcode", "n_head": 8, "n_embd": 64, "n_layer": 3, "n_positions": 256},
        id="bigcode-mq",
    ),
    pytest.param(
        {"model_type": "gpt_bigcode", "n_head": 8, "n_embd": 64, "n_layer": 3, "multi_query": False},
        id="bigcode-mha",
    ),
    pytest.param(
        {"model_type": "dbrx", "n_heads": 8, "d_model": 64, "n_layers": 3, "max_seq_len": 256}
        | {"attn_config": {"kv_n_heads": 2}},
        id="dbrx",
    ),
    pytest.param(
        {
            "model_type": "opt",
            "num_attention_heads": 4,
            "hidden_size": 64,
            "num_hidden_layers": 3,
            "ffn_dim": 256,
        },
        id="opt",
    ),
    pytest.param(
        {"model_type": "gpt_neox", "num_attention_heads": 4, "hidden_size": 64, "num_hidden_layers": 3},
        id="gpt_neox",
    ),
]


def _write(folder: Path, config: dict[str, Any]) -> Path:
    (folder / "config.json").write_text(json.dumps(config | {"vocab_size": 100}))
    return folder


@pytest.mark.parametrize("config", CONFIGS)
def test_read_shape_reads_what_transformers_reads(tmp_path: Path, config: dict[str, Any]) -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    loaded = CONFIG_MAPPING[config["model_type"]].from_dict(config | {"vocab_size": 100})
    shape = read_shape(_write(tmp_path, config))
    assert shape.num_attention_heads == loaded.num_attention_heads
    assert shape.hidden_size == loaded.hidden_size == 64
    assert shape.num_layers == loaded.num_hidden_layers == 3
    assert shape.num_kv_heads == getattr(loaded, "num_key_value_heads", loaded.num_attention_heads)
    assert shape.head_dim == 64 // shape.num_attention_heads
    if "n_positions" in config or "max_seq_len" in config:
        assert shape.context_length == loaded.max_position_embeddings == 256


def test_a_name_the_config_has_itself_wins_over_its_alias(tmp_path: Path) -> None:
    # as in transformers: GPT2Config(hidden_size=32, n_embd=64).hidden_size is 32
    config = {"model_type": "gpt2", "n_head": 4, "n_embd": 64, "hidden_size": 32, "n_layer": 1}
    assert read_shape(_write(tmp_path, config)).hidden_size == 32


def test_a_text_config_is_read_by_its_own_model_types_names(tmp_path: Path) -> None:
    text = {"model_type": "gpt2", "n_head": 4, "n_embd": 64, "n_layer": 2, "vocab_size": 10}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x", "text_config": text}))
    assert (read_shape(tmp_path).num_layers, read_shape(tmp_path).num_attention_heads) == (2, 4)


@pytest.mark.parametrize("model_type", [None, "RefinedWebModel", ["gpt2"]])
def test_an_unknown_model_type_keeps_its_keys_and_still_names_the_missing_one(
    tmp_path: Path, model_type: object
) -> None:
    config = {"n_head": 4, "n_embd": 64, "n_layer": 2} | ({"model_type": model_type} if model_type else {})
    with pytest.raises(UserError) as info:
        read_shape(_write(tmp_path, config))
    assert info.value.field == "model.source"
    assert "lacks 'num_attention_heads'" in info.value.problem


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 (safetensors, tied embeddings) with the tiny Llama's tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    config = GPT2Config(
        n_layer=2,
        n_head=4,
        n_embd=64,
        n_positions=512,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).eval().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def test_a_saved_gpt2_has_its_shape_and_parameter_count(tiny_gpt2: Path) -> None:
    from transformers import AutoModelForCausalLM

    parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(tiny_gpt2)).parameters())
    shape = read_shape(tiny_gpt2)
    assert (shape.num_layers, shape.hidden_size, shape.num_attention_heads) == (2, 64, 4)
    assert (shape.num_kv_heads, shape.head_dim, shape.context_length) == (4, 16, 512)
    assert shape.num_parameters == parameters
    assert shape.tied_embeddings and shape.checkpoint_precision == "fp32"
    assert not shape.tensor_parallel_plan  # transformers has none for GPT-2


def test_a_gpt2_goes_through_the_space_and_the_memory_prefilter(
    tiny_gpt2: Path, tmp_path: Path, make_target
) -> None:
    model = resolve_model(ModelConfig(source=str(tiny_gpt2)), tmp_path)
    target = make_target(cores=2)
    valid, _ = enumerate_candidates(
        SpaceConfig(batch_sizes=[1, 8]), target, shape=model.shape, model_format="hf-dir"
    )
    assert valid
    workload = WorkloadConfig()
    for candidate in valid:
        need = estimate_memory_bytes(candidate, model.shape, workload)
        # the 0.5 GiB runtime overhead and a few MiB of this model: not a 7B model's GiBs
        assert 2**29 < need < 2**29 + 2**28
        assert memory_fit_reason(candidate, model.shape, target, workload) is None
    assert model.shape.kv_bytes_per_token(4) == 2 * 2 * 4 * 16 * 4


def test_a_gpt2_is_optimized_with_the_torch_backend(
    tiny_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optimizer
    from optimizer import target as target_module
    from optimizer.config import compose_run_config
    from optimizer.measure import energy

    detect_cpu = target_module._detect_cpu

    def one_core() -> tuple[str, int, int, bool]:  # as test_pipeline: fastest on a busy machine
        model, _cores, memory, bf16 = detect_cpu()
        return model, 1, memory, bf16

    monkeypatch.setattr(target_module, "_detect_cpu", one_core)
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "no-powercap")
    monkeypatch.setenv("WATTSMITH_CACHE", str(tmp_path / "cache"))
    for name in ("TORCHINDUCTOR_CACHE_DIR", "ORT_DISABLE_TELEMETRY"):  # optimize() sets these
        monkeypatch.delenv(name, raising=False)
    cfg = compose_run_config(
        [
            f"model={tiny_gpt2}",
            "target=cpu",
            "workload=quick",
            "space=cpu-batch",
            "space.batch_sizes=[1]",
            "space.torch.precisions=[fp32]",
            "space.torch.quantizations=[none]",
            "workload.min_window_seconds=0.1",
            "workload.repeats=1",
            "workload.idle_seconds=0.1",
            "workload.warmup_batches=1",
            "quality.num_sequences=2",
            "quality.seq_tokens=32",
            f"output_dir={tmp_path / 'out'}",
            f"store_path={tmp_path / 'trials.db'}",
            f"cache_dir={tmp_path / 'cache'}",
        ]
    )
    result = optimizer.optimize(cfg)
    assert result.best is not None and result.recipe_path is not None
    assert type(result.best.candidate.settings).__name__ == "TorchSettings"
    assert result.best.performance is not None and result.best.performance.tokens_per_joule.mean > 0
    assert "num_parameters: " + str(read_shape(tiny_gpt2).num_parameters) in result.recipe_path.read_text()
