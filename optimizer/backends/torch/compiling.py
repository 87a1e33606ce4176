"""How the decoders compile: the whole model as one graph, or its layers through one shared graph.

`compiled_with_room` compiles a function with inductor, allowed more graphs than dynamo's default.

`LayerwiseForward` is regional compilation. Compiling the whole model traces every layer into one
graph, so its compile time grows with depth: on the H200 the 8B row's two compiles (step and
prefill) left no time for its fp8 row (evals/results/2026-12-04-h200-compiled-prefill/). Here the
base model's embedding, rotary embedding and final norm run as they are, and each decoder layer
runs through one compiled function whose inputs are the layer (dynamo inlines nn modules: their
weights are graph inputs, not constants), the hidden states, mask, cos/sin, positions and the
layer's own view of the KV cache. The view's `update` ignores the layer index the attention passes
it, so nothing in the graph depends on which layer runs: one graph serves every layer.
(transformers' caches select a layer's tensors by that index, and dynamo guards on it: a graph per
layer, then eager past the recompile limit.) Given up: fusion across the layers' boundaries, and
the model's own forward. A model whose forward does more than embedding, layers, norm and output
embedding (Granite's embedding multiplier, soft-capped logits) is refused when built: both must
give the same logits. (Gemma passes: its embedding module scales itself.)
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# Every decoder shape adds its graphs to the same code objects (here a step and a prefill per batch
# shape; the slot loop's step and two or four prefills per slot shape; in HF generate, every torch
# candidate's dtype, quantization, attention and thread count a graph of transformers' one wrapped
# forward). At dynamo's default limit of 8 per code object, a search process's later shapes and
# candidates would silently run eager.
RECOMPILE_LIMIT = 64


def place_inductor_cache(folder: Path) -> None:
    """Compiled kernels in `folder` (the run's cache), not in torch's default in /tmp, unless the
    user chose TORCHINDUCTOR_CACHE_DIR. Importing torch._dynamo (transformers, torchao and hqq do)
    writes that default into the variable, so a value equal to it is torch's, not the user's."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


def compiled_with_room(function: Any) -> Any:
    """`function` compiled (static shapes unless marked dynamic), allowed RECOMPILE_LIMIT graphs."""
    compiled = torch.compile(function, dynamic=False)

    @functools.wraps(function)
    def run(*args: Any) -> torch.Tensor:
        with room_to_recompile():
            return compiled(*args)

    return run


@contextmanager
def room_to_recompile() -> Iterator[None]:
    """Dynamo allowed RECOMPILE_LIMIT graphs per code object inside."""
    limit = max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)
    with torch._dynamo.config.patch(recompile_limit=limit):
        yield


def cache_argument(module: Any) -> str:
    """The forward() keyword for the KV cache: transformers 5.x renames `past_key_values` to `cache`."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def run_layer(
    layer: torch.nn.Module,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
    cache_keyword: str,
) -> torch.Tensor:
    """One decoder layer, called as the model's own forward calls it."""
    out = layer(
        hidden,
        attention_mask=mask,
        position_embeddings=(cos, sin),
        position_ids=positions,
        use_cache=cache is not None,
        **{cache_keyword: cache},
    )
    return out[0] if isinstance(out, tuple) else out


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where a key may be seen, the dtype's lowest value elsewhere: eager attention adds the
    mask to its scores (a boolean one would be added as 0/1), SDPA takes either."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def _mark(tensor: torch.Tensor, dims: Sequence[int]) -> None:
    if dims:
        torch._dynamo.mark_dynamic(tensor, list(dims))


# what LayerwiseForward calls on the base model itself
PARTS = ("embed_tokens", "rotary_emb", "layers", "norm")


class LayerwiseForward:
    """A causal LM's decoder (to its final norm), its layers through one shared compiled graph."""

    def __init__(self, model: Any, compiled: bool) -> None:
        base = model.base_model
        missing = [part for part in PARTS if not hasattr(base, part)]
        if missing:
            raise ValueError(
                f"compile_layers: {type(base).__name__} has no {', '.join(missing)}; "
                "set compile_layers=false to compile the whole model"
            )
        self.base = base
        self.head = model.get_output_embeddings()
        self.layers = list(base.layers[: base.config.num_hidden_layers])
        self._cache_keyword = cache_argument(self.layers[0])
        self._compiled = compiled
        self._run_layer = compiled_with_room(run_layer) if compiled else run_layer
        self._check_matches(model)

    def __call__(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        caches: Sequence[Any],
        varying: Sequence[int] = (),
        mask_varying: Sequence[int] = (),
        eager: bool = False,
    ) -> torch.Tensor:
        """The final hidden states [rows, width, hidden] of `ids` at `positions` [rows or 1,
        width]; `caches[i]`: layer i's cache view. Compiled, the dims `varying` of `ids` (and
        `mask_varying` of the mask) are marked dynamic on the layers' inputs, so that one graph
        serves the shapes that differ only there. `eager`: the layers uncompiled."""
        run = run_layer if eager else self._run_layer
        hidden = self.base.embed_tokens(ids)
        cos, sin = self.base.rotary_emb(hidden, position_ids=positions)
        if self._compiled and not eager:
            for tensor in (hidden, cos, sin, positions):
                _mark(tensor, varying)
            _mark(mask, mask_varying)
        for layer, cache in zip(self.layers, caches, strict=True):
            hidden = run(layer, hidden, mask, cos, sin, positions, cache, self._cache_keyword)
        return self.base.norm(hidden)

    def _check_matches(self, model: Any) -> None:
        """Three tokens through the model's forward and through its layers one by one (eagerly,
        without a cache) must give the same logits."""
        weight = self.base.embed_tokens.weight
        ids = torch.tensor([[1, 2, 3]], device=weight.device)
        positions = torch.arange(3, device=weight.device)[None]
        causal = torch.ones(3, 3, dtype=torch.bool, device=weight.device).tril()
        mask = additive_mask(causal[None, None], weight.dtype)
        with torch.inference_mode():
            own = model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=False).logits
            hidden = self(ids, positions, mask, [None] * len(self.layers), eager=True)
            logits = self.head(hidden)
        if not torch.equal(own.to(logits.dtype), logits):
            raise ValueError(
                f"compile_layers: {type(model).__name__}'s forward is more than its embedding, "
                "layers, norm and output embedding (its logits differ from running its layers one "
                "by one); set compile_layers=false to compile the whole model"
            )
