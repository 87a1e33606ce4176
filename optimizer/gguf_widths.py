"""What a GGUF holds as shipped: its tensors' bytes, read from the metadata (no tensor data is loaded). An engine that loads the file as it is (llama.cpp)
holds these bytes, where a quantization's own width would over- or understate them."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from optimizer.files import write_atomically

if TYPE_CHECKING:
    from gguf import ReaderTensor

# llama.cpp's name for the token embedding: a decode step gathers rows of it, not reads it whole
TOKEN_EMBEDDING = "token_embd.weight"
# in the names of a mixture of experts' stacked expert tensors (ffn_up_exps...): a decode step
# reads only the experts its tokens are routed to
EXPERTS = "_exps"
WIDTHS_FILE = "gguf-widths.json"


@dataclass(frozen=True)
class GgufWidths:
    """The tensors of every file of a GGUF (a split one's too), as shipped."""

    tensor_bytes: int  # all of them
    tensor_elements: int
    embedding_bytes: int  # the token embedding's (0: the file has none)
    expert_bytes: int  # a mixture of experts' expert tensors' (0: a dense model)

    @property
    def bits_per_weight(self) -> float:
        """The average over every tensor: what a build holds per parameter."""
        return 8 * self.tensor_bytes / max(self.tensor_elements, 1)

    @property
    def read_bytes(self) -> int:
        """The least a decode step reads of them: all but the embedding's rows it gathers and the
        experts it is not routed to (none, at the least)."""
        return self.tensor_bytes - self.embedding_bytes - self.expert_bytes


def gguf_widths(tensors: Sequence[ReaderTensor]) -> GgufWidths:
    """The widths of a GGUF of these tensors (a split one's: those of all its files)."""
    embedding = sum(int(t.n_bytes) for t in tensors if t.name == TOKEN_EMBEDDING)
    return GgufWidths(
        tensor_bytes=sum(int(t.n_bytes) for t in tensors),
        tensor_elements=sum(int(t.n_elements) for t in tensors),
        embedding_bytes=embedding,
        expert_bytes=sum(int(t.n_bytes) for t in tensors if EXPERTS in t.name),
    )


def cached_gguf_widths(folder: Path, read: Callable[[], GgufWidths]) -> GgufWidths:
    """The GGUF's widths, kept in `folder` (its de-quantized copy's): reading the file's metadata
    again takes seconds (SmolLM2's tokenizer alone), on every resolve of a cached conversion."""
    path = folder / WIDTHS_FILE
    try:
        return GgufWidths(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):  # none yet (a conversion made before), or damaged
        widths = read()
    with contextlib.suppress(OSError):  # a read-only cache: read again next time
        write_atomically(path, json.dumps(asdict(widths)))
    return widths
