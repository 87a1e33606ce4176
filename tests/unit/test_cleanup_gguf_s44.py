"""A bare MODEL.GGUF word on `optimize`'s command line is read as a model in any case of its suffix,
as the model loader reads `.gguf` files."""

from __future__ import annotations

import pytest

from optimizer.config.compose import compose_run_config
from optimizer.errors import UserError


@pytest.mark.parametrize("word", ["model.gguf", "model.GGUF", "Model.Gguf", "models/q4.GgUf"])
def test_a_bare_gguf_word_in_any_case_is_offered_as_the_model(word: str) -> None:
    """Before: `model.GGUF: has no value`, fix `give one: model.GGUF=VALUE`."""
    with pytest.raises(UserError) as info:
        compose_run_config([word])
    assert info.value.problem == "is not a key=value setting"
    assert info.value.fix == f"to optimize that model: model={word}"


def test_a_bare_word_that_is_no_gguf_still_asks_for_its_value() -> None:
    with pytest.raises(UserError, match="has no value"):
        compose_run_config(["model.ggufx"])
