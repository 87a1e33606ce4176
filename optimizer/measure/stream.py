"""Request streams for serving measurements: generated (seeded) or read from a trace file.

A stream is a tuple of requests, each with its arrival time (seconds from the stream's start),
its prompt token ids (real text, starting the way the model's tokenizer starts a sequence) and how
many tokens it asks for. Generated streams draw inter-arrival times (Poisson, constant or gamma
with a coefficient of variation) and lengths from seeded distributions, so a stream is
reproducible and its hash identifies it in the store and the recipe.

Multi-turn conversations (`agent`) resend the whole history each turn: turn k's prompt is turn
k-1's prompt, a stand-in for the assistant's reply (real text of the reply's length: the reply
itself is only known once generated) and the new message. Most of each prompt is a prefix already
seen, which is what prefix KV reuse saves.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimizer.errors import UserError

ARRIVALS = ("poisson", "constant", "gamma")
LENGTH_KINDS = ("fixed", "uniform", "lognormal")


@dataclass(frozen=True)
class LengthDistribution:
    """Token counts: `fixed` (mean), `uniform` (min..max) or `lognormal` (mean, cv), clamped to
    [min, max]."""

    kind: str = "fixed"
    mean: int = 64
    min: int = 1
    max: int = 4096
    cv: float = 0.5

    def check(self, field: str) -> None:
        if self.kind not in LENGTH_KINDS:
            raise UserError(
                f"{field}.kind", f"unknown distribution {self.kind!r}", f"use one of {list(LENGTH_KINDS)}"
            )
        if not 1 <= self.min <= self.max:
            raise UserError(
                field, f"needs 1 <= min <= max, got min {self.min}, max {self.max}", "e.g. min: 16, max: 512"
            )
        if not self.min <= self.mean <= self.max:
            raise UserError(
                f"{field}.mean", f"{self.mean} is outside [min, max]", "put the mean inside min..max"
            )
        if self.cv < 0:
            raise UserError(
                f"{field}.cv", f"is {self.cv} < 0", "a coefficient of variation is >= 0, e.g. 0.5"
            )

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = float(self.mean)
        elif self.kind == "uniform":
            value = rng.uniform(self.min, self.max + 1 - 1e-9)
        else:  # lognormal with the given mean and coefficient of variation
            sigma = math.sqrt(math.log1p(self.cv**2))
            value = rng.lognormvariate(math.log(self.mean) - sigma**2 / 2, sigma)
        return int(min(max(value, self.min), self.max))


@dataclass(frozen=True)
class StreamRequest:
    """One request of a stream. `arrival_seconds` counts from the stream's start."""

    index: int
    arrival_seconds: float
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    conversation: str | None = None
    turn: int | None = None


@dataclass(frozen=True)
class RequestStream:
    requests: tuple[StreamRequest, ...]
    source: str  # what produced it, for the report: "chat: poisson 2 req/s, seed 0" or "trace <file>"

    @property
    def sha256(self) -> str:
        """Identity of the stream's content: arrivals, prompts and output lengths."""
        digest = hashlib.sha256()
        for r in self.requests:
            row = [round(r.arrival_seconds, 6), list(r.prompt_ids), r.max_new_tokens, r.conversation, r.turn]
            digest.update(json.dumps(row).encode())
        return digest.hexdigest()

    @property
    def duration_seconds(self) -> float:
        return self.requests[-1].arrival_seconds if self.requests else 0.0

    @property
    def offered_rate(self) -> float:
        """Requests per second between the first and last arrival."""
        span = self.duration_seconds - (self.requests[0].arrival_seconds if self.requests else 0.0)
        return (len(self.requests) - 1) / span if span > 0 else float("inf")


class TextTokens:
    """Consecutive real-text tokens (the evaluation text's workload split), handed out in order."""

    def __init__(self, token_ids: Sequence[int], start_ids: Sequence[int] = (), seed: int = 0) -> None:
        if not token_ids:
            raise UserError("quality.text", "the text yields no tokens", "use a longer text")
        self.ids = list(token_ids)
        self.start_ids = tuple(start_ids)  # what the tokenizer puts at a sequence start (BOS), if any
        self.position = random.Random(seed).randrange(len(self.ids))

    def take(self, count: int) -> tuple[int, ...]:
        out: list[int] = []
        while len(out) < count:
            piece = self.ids[self.position : self.position + count - len(out)]
            out.extend(piece)
            self.position = (self.position + len(piece)) % len(self.ids)
        return tuple(out)

    def prompt(self, count: int) -> tuple[int, ...]:
        """A sequence start followed by text, `count` tokens in all (at least the start)."""
        return self.start_ids + self.take(max(count - len(self.start_ids), 0))


def inter_arrivals(kind: str, rate: float, cv: float, rng: random.Random) -> Iterator[float]:
    """Seconds between consecutive arrivals at `rate` requests/s."""
    if kind not in ARRIVALS:
        raise UserError(
            "workload.arrivals", f"unknown arrival process {kind!r}", f"use one of {list(ARRIVALS)}"
        )
    if not rate > 0:
        raise UserError(
            "workload.rate", f"is {rate}: a stream needs a rate > 0 requests/s", "e.g. workload.rate=2"
        )
    while True:
        if kind == "constant":
            yield 1.0 / rate
        elif kind == "poisson":
            yield rng.expovariate(rate)
        else:  # gamma: mean 1/rate, coefficient of variation cv (cv 1 is Poisson; > 1 is bursty)
            if cv <= 0:
                raise UserError("workload.arrival_cv", f"is {cv}", "a gamma process needs a cv > 0, e.g. 2")
            shape = 1.0 / cv**2
            yield rng.gammavariate(shape, 1.0 / (rate * shape))


@dataclass(frozen=True)
class StreamSpec:
    """A generated stream: arrivals, lengths and (for agents) conversations. Units: seconds, tokens."""

    requests: int = 64
    rate: float = 2.0
    arrivals: str = "poisson"
    arrival_cv: float = 1.0
    prompt_tokens: LengthDistribution = LengthDistribution("lognormal", 128, 16, 512, 0.6)
    output_tokens: LengthDistribution = LengthDistribution("lognormal", 64, 8, 256, 0.5)
    shared_prefix_tokens: int = 0  # a system prompt every request starts with
    turns: int = 1  # > 1: conversations of this many turns (each request of a conversation is a turn)
    turn_gap_seconds: float = 5.0  # time between a conversation's turns (the user reads and types)
    seed: int = 0

    def check(self) -> None:
        if self.requests < 1:
            raise UserError(
                "workload.requests", f"is {self.requests}", "a stream needs >= 1 request, e.g. 64"
            )
        if self.turns < 1:
            raise UserError(
                "workload.turns", f"is {self.turns}", "use 1 for single requests, > 1 for conversations"
            )
        if self.turn_gap_seconds < 0 or self.shared_prefix_tokens < 0:
            raise UserError("workload.turn_gap_seconds", "is negative", "use seconds >= 0")
        self.prompt_tokens.check("workload.prompt_lengths")
        self.output_tokens.check("workload.output_lengths")


def generate_stream(spec: StreamSpec, text: TextTokens, name: str = "stream") -> RequestStream:
    """The seeded stream `spec` describes, with prompts cut from `text`."""
    spec.check()
    rng = random.Random(spec.seed)
    system = text.prompt(spec.shared_prefix_tokens) if spec.shared_prefix_tokens else text.start_ids
    arrivals = inter_arrivals(spec.arrivals, spec.rate / spec.turns, spec.arrival_cv, rng)
    pending: list[StreamRequest] = []
    clock = 0.0
    conversation = 0
    while len(pending) < spec.requests:
        clock += next(arrivals)
        history = system
        for turn in range(min(spec.turns, spec.requests - len(pending))):
            message = text.take(max(spec.prompt_tokens.draw(rng) - (len(system) if turn == 0 else 0), 1))
            prompt = history + message
            output = spec.output_tokens.draw(rng)
            pending.append(
                StreamRequest(
                    index=-1,
                    arrival_seconds=clock + turn * spec.turn_gap_seconds,
                    prompt_ids=prompt,
                    max_new_tokens=output,
                    conversation=str(conversation) if spec.turns > 1 else None,
                    turn=turn if spec.turns > 1 else None,
                )
            )
            history = prompt + text.take(output)  # the reply the client resends with the next turn
        conversation += 1
    ordered = sorted(pending, key=lambda r: r.arrival_seconds)
    requests = tuple(_reindexed(r, i) for i, r in enumerate(ordered))
    describe = f"{name}: {spec.arrivals} {spec.rate:g} req/s, {spec.requests} requests"
    if spec.turns > 1:
        describe += f" in conversations of {spec.turns} turns"
    return RequestStream(requests, f"{describe}, seed {spec.seed}")


def _reindexed(request: StreamRequest, index: int) -> StreamRequest:
    return StreamRequest(
        index,
        request.arrival_seconds,
        request.prompt_ids,
        request.max_new_tokens,
        request.conversation,
        request.turn,
    )


def read_trace(path: Path, tokenizer: Any, text: TextTokens, max_context: int | None = None) -> RequestStream:
    """A stream from a JSONL trace; see `TRACE_FORMAT`. Every problem is a UserError naming the
    line and the field."""
    if not path.is_file():
        raise UserError("workload.trace", f"{path} does not exist", "give the path of a JSONL trace file")
    requests: list[StreamRequest] = []
    previous = 0.0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"workload.trace line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(where, f"is not JSON ({exc.msg})", "one JSON object per line") from None
        if not isinstance(item, dict):
            raise UserError(
                where, "is not a JSON object", 'e.g. {"arrival": 0.5, "prompt": "...", "output_tokens": 64}'
            )
        arrival = _number(item, "arrival", where)
        if arrival < 0 or arrival < previous:
            raise UserError(
                f"{where}: arrival",
                f"{arrival} is negative or earlier than the line before ({previous})",
                "arrival times are seconds from the trace's start, non-decreasing",
            )
        previous = arrival
        output = int(_number(item, "output_tokens", where))
        if output < 1:
            raise UserError(f"{where}: output_tokens", f"is {output}", "ask for >= 1 token")
        prompt = _prompt(item, where, tokenizer, text)
        if max_context is not None and len(prompt) + output > max_context:
            raise UserError(
                f"{where}: prompt",
                f"{len(prompt)} prompt + {output} output tokens exceed the model's context of {max_context}",
                "shorten the prompt or the output",
            )
        conversation = item.get("conversation")
        turn = item.get("turn")
        if turn is not None and not isinstance(turn, int):
            raise UserError(f"{where}: turn", f"is {turn!r}", "a turn number is an integer")
        requests.append(
            StreamRequest(
                len(requests),
                arrival,
                prompt,
                output,
                None if conversation is None else str(conversation),
                turn,
            )
        )
    if not requests:
        raise UserError("workload.trace", f"{path} has no requests", "one JSON object per line")
    return RequestStream(tuple(requests), f"trace {path.name}")


def _number(item: dict[str, Any], key: str, where: str) -> float:
    if key not in item:
        raise UserError(
            f"{where}", f"missing '{key}'", f"every line needs '{key}'; see the trace format in the README"
        )
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {key}", f"is {value!r}, not a number", f"give {key} as a number")
    return float(value)


def _prompt(item: dict[str, Any], where: str, tokenizer: Any, text: TextTokens) -> tuple[int, ...]:
    if isinstance(item.get("prompt"), str):
        ids = tokenizer(item["prompt"], add_special_tokens=False)["input_ids"]
        return text.start_ids + tuple(ids)
    if "prompt_tokens" in item:
        count = int(_number(item, "prompt_tokens", where))
        if count < 1:
            raise UserError(f"{where}: prompt_tokens", f"is {count}", "a prompt has >= 1 token")
        return text.prompt(count)
    raise UserError(where, "has neither 'prompt' (text) nor 'prompt_tokens' (a count)", "give one of them")


TRACE_FORMAT = """One JSON object per line:
  arrival        seconds from the trace's start (number, >= 0, non-decreasing)
  prompt         the prompt text, or
  prompt_tokens  a prompt length in tokens (real text of that length is used)
  output_tokens  tokens to generate (integer >= 1)
  conversation   optional: an id shared by the turns of one conversation
  turn           optional: the turn's number within its conversation
"""
