"""TensorRT optimization profiles for the exported decoder, shared by the TensorRT execution
provider of ONNX Runtime and the native TensorRT engines.

An engine serves the shapes inside its profile only, so the profile bounds a row's context
(prompt + generated tokens) and the rows per forward. Quality scoring runs batches of
`TRT_MIN_PROFILE_BATCH` rows, so even a batch-1 candidate's profile admits that many.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optimizer.backends.onnx.export import DecoderLayout

TRT_MAX_TOKENS = 1024
TRT_MIN_PROFILE_BATCH = 4

Dims = dict[str, tuple[int, ...]]


def profile_batch(batch_size: int) -> int:
    return max(batch_size, TRT_MIN_PROFILE_BATCH)


def profile_dims(layout: DecoderLayout, max_batch: int, max_tokens: int = TRT_MAX_TOKENS) -> dict[str, Dims]:
    """min/opt/max shape of every input; opt is the common case: a one-token decode step at full batch."""
    # here, not above: the specs import this module's bound (row_reason), and export imports torch
    from optimizer.backends.onnx.export import INPUT_IDS, LOGITS_POSITIONS

    kv, hd = layout.kv_heads, layout.head_dim
    dims: dict[str, Dims] = {
        INPUT_IDS: {"min": (1, 1), "opt": (max_batch, 1), "max": (max_batch, max_tokens)},
        LOGITS_POSITIONS: {"min": (1,), "opt": (1,), "max": (max_tokens,)},
    }
    for name in layout.past_names:
        # past length 0 is the prefill; max_tokens - 1 the last decode step
        dims[name] = {
            "min": (1, kv, 0, hd),
            "opt": (max_batch, kv, max_tokens // 2, hd),
            "max": (max_batch, kv, max_tokens - 1, hd),
        }
    return dims


def profile_shapes(layout: DecoderLayout, max_batch: int, max_tokens: int = TRT_MAX_TOKENS) -> dict[str, str]:
    """The TensorRT EP's `trt_profile_{min,opt,max}_shapes` strings: `name:AxB,name:C`."""
    dims = profile_dims(layout, max_batch, max_tokens)
    return {
        level: ",".join(f"{name}:{'x'.join(map(str, d[level]))}" for name, d in dims.items())
        for level in ("min", "opt", "max")
    }


def check_context(past_tokens: int, new_tokens: int, max_tokens: int = TRT_MAX_TOKENS) -> None:
    """Raise before running a shape the engine's profile does not cover."""
    if past_tokens + new_tokens > max_tokens:
        raise ValueError(
            f"{past_tokens + new_tokens} tokens per row exceed the TensorRT profile's {max_tokens} "
            "(optimizer.backends.onnx.trt_profile.TRT_MAX_TOKENS): use shorter prompts or fewer new tokens"
        )


def row_reason(tokens: int, max_tokens: int = TRT_MAX_TOKENS) -> str | None:
    """Why an engine of this profile cannot take rows of `tokens` tokens (prompt + generated), or None."""
    if tokens <= max_tokens:
        return None
    return f"TensorRT engines are built for rows of at most {max_tokens} tokens"
