"""No two seeds share a draw: seed s drew its lengths from the generator seed s+1 drew its
arrivals from, so "independent" streams of seeds 0, 1, 2... were tied to one another."""

from __future__ import annotations

import math

from optimizer.config import LengthConfig, WorkloadConfig
from optimizer.measure.stream import TextTokens, generate_stream

TEXT = list(range(1000, 1997))  # stand-in token ids of a text
TOP = 20_000
DRAWS = 4


def uniforms(seed: int) -> dict[str, list[float]]:
    """The uniform numbers behind a stream's first arrivals and lengths, recovered from them."""
    lengths = LengthConfig("uniform", 2, 1, TOP)
    cfg = WorkloadConfig(
        kind="serving",
        requests=DRAWS,
        rate=1.0,
        prompt_lengths=lengths,
        output_lengths=lengths,
        seed=seed,
        warmup_requests=0,
        drain_requests=0,
    )
    requests = generate_stream(cfg, TextTokens(TEXT, seed=seed)).requests
    times = [0.0] + [r.arrival_seconds for r in requests]
    drawn = [n for r in requests for n in (len(r.prompt_ids), r.max_new_tokens)]  # in draw order
    return {
        "arrivals": [1 - math.exp(-(b - a)) for a, b in zip(times, times[1:], strict=False)],
        "lengths": [(n - 1) / TOP for n in drawn][:DRAWS],
    }


def test_no_two_seeds_share_their_arrival_or_length_draws() -> None:
    sequences = [((seed, role), us) for seed in range(12) for role, us in uniforms(seed).items()]
    shared = [
        (a, b)
        for i, (a, us) in enumerate(sequences)
        for b, vs in sequences[i + 1 :]
        if all(abs(u - v) < 1e-3 for u, v in zip(us, vs, strict=True))
    ]
    # before: [((0, 'lengths'), (1, 'arrivals')), ((1, 'lengths'), (2, 'arrivals')), ...]
    assert shared == []
