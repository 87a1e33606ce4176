"""What the search knows of the continuous-batching backend. Imports no torch: `build` loads it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.backends.base import PRECISION_BYTES, Engine, Footprint, MovedBytes
from optimizer.backends.prefixes import OFFLINE_REASON
from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch.spec import SPEC as TORCH
from optimizer.backends.torch.spec import WEIGHT_BYTES, torch_rule
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings

if TYPE_CHECKING:
    from optimizer.config import SpaceConfig
    from optimizer.model import ModelSpec
    from optimizer.space import Candidate
    from optimizer.target import TargetSpec


class ContinuousBatchingSpec:
    name = ContinuousBatchingSettings.BACKEND
    settings_type = ContinuousBatchingSettings

    def settings_for(self, space: SpaceConfig) -> Iterator[ContinuousBatchingSettings]:
        a = space.torch_cb
        for values in itertools.product(
            a.precisions,
            a.quantizations,
            a.attention,
            a.compile,
            a.max_batch_tokens,
            a.kv_cache_tokens,
            a.prefix_sharing,
            a.page_sizes,
            a.kv_offload_gib,
        ):
            yield ContinuousBatchingSettings(*values)

    def exclusion_reason(self, settings: ContinuousBatchingSettings, target: TargetSpec) -> str | None:
        # the numerics and kernels are the torch backend's: its rules apply
        numerics = TorchSettings(
            precision=settings.precision, quantization=settings.quantization, attention=settings.attention
        )
        if (reason := torch_rule(numerics, target)) is not None:
            return reason
        if settings.kv_offload_gib and not target.is_cuda:
            return "offloading KV to host memory needs a GPU target (on a CPU the cache is in host memory)"
        return None

    def workload_reason(
        self, settings: ContinuousBatchingSettings, batch_size: int, serving: bool
    ) -> str | None:
        if settings.prefix_sharing and not serving:
            return OFFLINE_REASON
        return None

    def footprint(self, settings: ContinuousBatchingSettings, num_layers: int) -> Footprint:
        act = PRECISION_BYTES[settings.precision]
        return Footprint(
            WEIGHT_BYTES.get(settings.quantization, act),
            act,
            act,
            kv_cache_tokens=settings.kv_cache_tokens,
            # the torch backend's quantize_weights keeps the embedding and lm_head 16-bit
            embedding_bytes=act,
            output_bytes=act,
            # build() loads the whole model on the device before quantize_weights, as torch does
            load_weight_bytes=act if settings.quantization != "none" else None,
        )

    def moved_bytes(self, settings: ContinuousBatchingSettings, num_layers: int) -> MovedBytes:
        fp = self.footprint(settings, num_layers)
        # offloaded pages come back over a link we have no rate for: count no KV bytes for them
        return MovedBytes(fp.weight_bytes, fp.kv_bytes, 0.0 if settings.kv_offload_gib > 0 else 1.0)

    def matmul_kind(self, settings: ContinuousBatchingSettings) -> str:
        return TORCH.matmul_kind(
            TorchSettings(precision=settings.precision, quantization=settings.quantization)
        )

    def build(self, model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path) -> Engine:
        from optimizer.backends.torch_cb.backend import build  # torch and transformers load here

        return build(model, candidate, target, workdir)


SPEC = ContinuousBatchingSpec()
