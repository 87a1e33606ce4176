"""What every layout engine shares, however its ranks are started: the batch split between the
replicas and the answers merged, and the failure a rank's error or death becomes."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any

import torch

from optimizer.backends.base import Generation
from optimizer.backends.torch_parallel.ranks import GroupPlan

START_TIMEOUT_SECONDS = 600.0


class RankFailed(RuntimeError):
    """A rank raised or died: the candidate fails with this reason, its other ranks are ended."""


class RankTraceback(Exception):
    """A rank's own traceback, as text, chained to the RankFailed it caused (`raise ... from`):
    the reason keeps its last line, and the rank's process (with torch's copy) is gone, so the
    traceback the evaluator logs is the only place that says where in the rank it failed."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text.rstrip()


def free_port() -> int:
    """A port free now, for a group's rendezvous. It is released before the group's rank 0 binds
    it (seconds later), so another process may take it meanwhile: `port_taken` tells that failure,
    and build_parallel_engine starts the ranks again on new ports."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_taken(failure: RankFailed) -> bool:
    """Whether a rank failed because its group's rendezvous port was taken (torch's
    DistNetworkError names the errno: `code: -98, name: EADDRINUSE`), local or Ray rank alike."""
    return "EADDRINUSE" in str(failure)


class LayoutEngine:
    """`replicas` groups of `degree` ranks behind the Engine protocol. A batch is split into
    near-equal row chunks, one per replica; every rank of a group gets its group's chunk. How the
    ranks are started and reached (spawned processes here, Ray actors in ray_ranks.py) is the
    subclass's `_run`."""

    plans: list[GroupPlan]
    pids: list[int]  # every rank's process, for the CPU estimate
    pci_bus_ids: list[str]  # every rank's GPU board, for the NVML meter

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        chunks = [c for c in torch.tensor_split(prompt_ids.cpu(), len(self.plans)) if c.shape[0]]
        return self._generations([("generate", (chunk, max_new_tokens)) for chunk in chunks])

    def generate_padded(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> Generation:
        per = -(-len(prompts) // len(self.plans))
        chunks = [list(prompts[i : i + per]) for i in range(0, len(prompts), per)]
        return self._generations([("generate_padded", (chunk, max_new_tokens)) for chunk in chunks])

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        chunks = [c for c in torch.tensor_split(token_ids.cpu(), len(self.plans)) if c.shape[0]]
        outputs = self._run([("score", (chunk,)) for chunk in chunks])
        return torch.cat(outputs, dim=0)

    def _generations(self, calls: list[tuple[str, tuple[Any, ...]]]) -> Generation:
        start = time.perf_counter()
        parts: list[Generation] = self._run(calls)
        total = time.perf_counter() - start
        tokens = [g.token_ids for g in parts]
        stamps = [g.token_times for g in parts if g.token_times is not None]
        trips = [_trip(g, start) for g in parts]
        backs = [_trip_back(g, trip, total) for g, trip in zip(parts, trips, strict=True)]
        return Generation(
            batch_size=sum(g.batch_size for g in parts),
            new_tokens=parts[0].new_tokens,
            ttft_seconds=max(g.ttft_seconds + trip for g, trip in zip(parts, trips, strict=True)),
            total_seconds=total,
            token_ids=torch.cat([t for t in tokens if t is not None])
            if all(t is not None for t in tokens)
            else None,
            # a request's last token reaches the caller with the results: after their trip back
            request_latencies=tuple(
                (ttft + trip, tpot + back / max(g.new_tokens - 1, 1))
                for g, trip, back in zip(parts, trips, backs, strict=True)
                for ttft, tpot in g.latencies()
            ),
            # the ranks stamp their steps on this host's monotonic clock (Ray's too: _check_node):
            # a step's tokens are ready once the slowest replica's are. Without them a served
            # stream spread the tokens evenly from the ranks' TTFT instead (queued.step_times).
            token_times=tuple(map(max, zip(*stamps, strict=True)))
            if len(stamps) == len(parts) and len({len(s) for s in stamps}) == 1
            else None,
        )

    def _run(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Send call i to every rank of replica i; the replicas' answers in replica order."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _trip(part: Generation, start: float) -> float:
    """Seconds from this call (`start`) until the part's rank began generating: the commands'
    trip, which a request waits for as a one-process engine's never does. Read from its step
    stamps (this host's clock: the first step came `ttft_seconds` after it began); 0 where it
    stamped none (loop=graph), as before."""
    if not part.token_times:
        return 0.0
    return max(part.token_times[0] - part.ttft_seconds - start, 0.0)


def _trip_back(part: Generation, trip: float, total: float) -> float:
    """Seconds from the part's rank returning (`trip` + its own total after this call began)
    until this call returned (`total`): the results' trip back, which a request's last token
    waits for, as a one-process engine's TPOT runs to its call's return. 0 where it stamped none,
    as `_trip` (only the two trips' sum is known then)."""
    if not part.token_times:
        return 0.0
    return max(total - trip - part.total_seconds, 0.0)
