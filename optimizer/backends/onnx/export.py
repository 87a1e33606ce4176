"""ONNX export of a causal LM's decoder with its KV cache as flat inputs and outputs.

`torch.onnx.export(dynamo=True)` of a wrapper whose forward takes
`input_ids [batch, sequence]`, `logits_positions [kept]` and `past.<layer>.key|value
[batch, kv_heads, past_sequence, head_dim]`, and returns `logits [batch, kept, vocab]` (float32),
`next_token [batch]` (argmax at the last position, so a GPU loop copies back B ids, not logits)
and `present.<layer>.key|value`. `logits_positions` picks the positions whose logits are computed:
the last one while generating, all of them when scoring.

Named dimensions shared by every layer keep the exporter's symbolic shape work small (SmolLM2:
~40 s on 2 cores instead of ~100 s with one free symbol per tensor). The export is then saved
through ONNX Runtime's basic optimizations (constant folding). Exports are cached by
(weights sha256, config.json sha256, the model's own code when trusted to run, versions of the
exporter's packages and ONNX Runtime).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optimizer.backends.artifacts import artifact_key, cached_artifact
from optimizer.backends.installed import ONNX_RUNTIME, distribution_version
from optimizer.backends.torch.compiling import cache_argument
from optimizer.model import ModelSpec
from optimizer.model_files import model_files_sha256, remote_code_sha256

log = logging.getLogger(__name__)

# bump when the wrapper or its inputs/outputs change; 2: the model's own (post-processed) logits;
# 3: sliding-window layers keep their whole past (the cropped one decoded wrong past the window)
EXPORT_FORMAT = 3
MODEL_FILE = "model.onnx"
MAX_DIM = 1 << 16  # upper bound of the dynamic dimensions: batch, sequence, past sequence
INPUT_IDS, LOGITS_POSITIONS, LOGITS, NEXT_TOKEN = "input_ids", "logits_positions", "logits", "next_token"


def past_name(layer: int, kind: str) -> str:
    return f"past.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


@dataclass(frozen=True)
class DecoderLayout:
    """Names and KV shapes of an exported decoder, read back from its inputs."""

    num_layers: int
    kv_heads: int
    head_dim: int

    @property
    def past_names(self) -> list[str]:
        return [past_name(i, kind) for i in range(self.num_layers) for kind in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        return [present_name(i, kind) for i in range(self.num_layers) for kind in ("key", "value")]

    @property
    def output_names(self) -> list[str]:
        return [LOGITS, NEXT_TOKEN, *self.present_names]

    def empty_past_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        """Shape of one past key or value before the first step: no cached tokens."""
        return (batch_size, self.kv_heads, 0, self.head_dim)


def layout_of(inputs: list[tuple[str, list[Any]]]) -> DecoderLayout:
    """The layout from (name, shape) pairs of a model's inputs; shapes may hold symbolic names."""
    pasts = {name: shape for name, shape in inputs if name.startswith("past.")}
    if not pasts or "past.0.key" not in pasts:
        raise ValueError(f"not a wattsmith decoder export: inputs {[n for n, _ in inputs]}")
    shape = pasts["past.0.key"]
    return DecoderLayout(num_layers=len(pasts) // 2, kv_heads=int(shape[1]), head_dim=int(shape[3]))


# What the export reads beside the weights: config.json decides the graph (RoPE, scaling, ...)
EXPORT_READS = ("config.json",)
# torch.onnx and onnxscript write the graph, transformers the model; fold_constants saves
# ONNX Runtime's optimized graph
EXPORT_PACKAGES = (("torch",), ("transformers",), ("onnxscript",), ("onnx",), ONNX_RUNTIME)


def export_dir(model: ModelSpec, workdir: Path) -> Path:
    key = f"{model.weight_sha256[:16]}-{artifact_key(export_identity(model))}"
    return workdir / "onnx" / key / "fp32"


def export_identity(model: ModelSpec) -> dict[str, Any]:
    """Everything but the weights that decides the export (the variants beside it inherit it)."""
    identity: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "model_files": model_files_sha256(model.path, EXPORT_READS),
        **{names[0]: distribution_version(*names) for names in EXPORT_PACKAGES},
    }
    # only code that runs: other models, and trusted ones without code, keep their keys
    if model.trust_remote_code and (code := remote_code_sha256(model.path)):
        identity["remote_code"] = code
    return identity


def exported_decoder(model: ModelSpec, workdir: Path) -> Path:
    """The cached fp32 export of the model's decoder (a directory holding model.onnx)."""

    def export(tmp: Path) -> dict[str, Any]:
        raw = tmp / "raw"
        raw.mkdir()
        export_decoder(model.path, raw / MODEL_FILE, trust_remote_code=model.trust_remote_code)
        fold_constants(raw / MODEL_FILE, tmp / MODEL_FILE)
        shutil.rmtree(raw)
        return {"model_sha256": model.weight_sha256, **export_identity(model)}

    return cached_artifact(export_dir(model, workdir), export, "ONNX decoder export (fp32)")


def fold_constants(raw_file: Path, out_file: Path) -> None:
    """ONNX Runtime's basic (provider-independent) optimizations, saved: constant folding turns
    `MatMul(x, Transpose(W))` into `MatMul(x, W')` so that quantizers see the weights."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out_file)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", f"{out_file.name}.data"
    )
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )
    ort.InferenceSession(str(raw_file), options, providers=["CPUExecutionProvider"])


def export_decoder(model_dir: Path, out_file: Path, trust_remote_code: bool = False) -> None:
    """Export the decoder of the HF model in `model_dir` to `out_file` (+ external data)."""
    from torch.export import Dim
    from transformers import AutoModelForCausalLM

    hf_model: Any = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    hf_model.eval()
    wrapper = FlatCacheDecoder(hf_model)
    config = hf_model.config.get_text_config(decoder=True)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    layers = int(config.num_hidden_layers)
    # example shapes: every dimension > 1 and distinct so that none is specialized
    batch, sequence, past = 2, 3, 4
    example = (
        torch.randint(0, int(config.vocab_size), (batch, sequence)),
        torch.arange(sequence),
        [torch.zeros(batch, kv_heads, past, head_dim) for _ in range(2 * layers)],
    )
    b = Dim("batch", min=1, max=MAX_DIM)
    s = Dim("sequence", min=1, max=MAX_DIM)
    p = Dim("past_sequence", min=0, max=MAX_DIM)
    k = Dim("kept", min=1, max=MAX_DIM)
    dynamic_shapes = {
        "input_ids": {0: b, 1: s},
        "logits_positions": {0: k},
        "past": [{0: b, 2: p} for _ in range(2 * layers)],
    }
    layout = DecoderLayout(layers, kv_heads, head_dim)
    with exporter_chatter_logged(), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            example,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=[INPUT_IDS, LOGITS_POSITIONS, *layout.past_names],
            output_names=layout.output_names,
            optimize=False,  # ONNX Runtime optimizes at load; the onnxscript pass doubles export time
            verbose=False,
        )
    assert program is not None
    program.save(str(out_file), external_data=True)


@contextlib.contextmanager
def exporter_chatter_logged() -> Iterator[None]:
    """The exporter's chatter into our debug log, not between a search's progress lines: its
    progress (printed to stdout, the CLI's), Python warnings (deprecations from it and transformers,
    TracerWarnings) and torch.onnx's log records below ERROR (a warning per torchvision op it skips
    where torchvision is absent). Its errors still reach stderr, through our log."""
    onnx_log = logging.getLogger("torch.onnx")  # torch gives it its own stderr handler
    handlers, propagate = onnx_log.handlers[:], onnx_log.propagate
    onnx_log.handlers[:], onnx_log.propagate = [ToOurLog()], False
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        onnx_log.handlers[:], onnx_log.propagate = handlers, propagate
    for message in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):
        log.debug("exporter warning: %s", message)


class ToOurLog(logging.Handler):
    """Another library's log records in ours: below ERROR at debug level, the rest as they are."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelno if record.levelno >= logging.ERROR else logging.DEBUG
        log.log(level, "%s: %s", record.name, record.getMessage())


class FlatCacheDecoder(torch.nn.Module):
    """forward(input_ids, logits_positions, past) -> (logits, next_token, *present).

    The logits come from the model's own causal-LM forward, not lm_head(hidden): some families
    post-process them (Granite divides by `logits_scaling`, Cohere multiplies by `logit_scale`,
    Gemma2 soft-caps them), and their formulas differ (HyperCLOVA X multiplies by a
    `logits_scaling` of the same name). `logits_to_keep` (a 1-D tensor of positions) keeps the
    lm_head to the kept positions; a forward without it computes all and keeps them after."""

    def __init__(self, hf_model: Any) -> None:
        super().__init__()
        self.model = hf_model
        self.cache_argument = cache_argument(hf_model)
        self.keeps_logits = "logits_to_keep" in inspect.signature(hf_model.forward).parameters

    def forward(self, input_ids: Any, logits_positions: Any, past: list[Any]) -> tuple[Any, ...]:
        from transformers import DynamicCache

        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        # Full layers, not the config's sliding ones: those crop the present to the window, and a
        # cropped past fed back loses the count of tokens before it (RoPE positions and the mask
        # shift). The model's sliding mask still keeps attention inside the window.
        cache = DynamicCache(ddp_cache_data=pairs)
        kwargs = {self.cache_argument: cache}
        if self.keeps_logits:
            kwargs["logits_to_keep"] = logits_positions
        out = self.model(input_ids=input_ids, use_cache=True, **kwargs)
        logits = out.logits if self.keeps_logits else out.logits.index_select(1, logits_positions)
        logits = logits.float()
        next_token = logits[:, -1].argmax(-1)
        presents = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (logits, next_token, *presents)
