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

import codecs
import functools
import hashlib
import json
import logging
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimizer.config import LengthConfig, WorkloadConfig
from optimizer.errors import UserError
from optimizer.measure.text import json_lines, json_problem

log = logging.getLogger(__name__)

# A first arrival later than this is a clock time, not seconds from the trace's start
FIRST_ARRIVAL_LIMIT_SECONDS = 3600.0
# A replay longer than this is most likely arrivals in milliseconds read as seconds
LONG_REPLAY_SECONDS = 3600.0


def draw_length(lengths: LengthConfig, rng: random.Random) -> int:
    """One token count from `lengths` (validated by the config)."""
    if lengths.kind == "fixed":
        value = float(lengths.mean)
    elif lengths.kind == "uniform":
        value = rng.uniform(lengths.min, lengths.max + 1 - 1e-9)
    else:  # lognormal with the given mean and coefficient of variation
        sigma = math.sqrt(math.log1p(lengths.cv**2))
        value = rng.lognormvariate(math.log(lengths.mean) - sigma**2 / 2, sigma)
        if sigma == 0:  # exp(log(mean)) falls just short of many means, which int() made mean - 1
            value = float(lengths.mean)  # drawn all the same: the next draws stay as they were
    return int(min(max(value, lengths.min), lengths.max))


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

    @functools.cached_property
    def sha256(self) -> str:
        """Identity of the stream's content: arrivals, prompts and output lengths. Computed once
        (seconds for a 100k-request trace, read once per measurement): the stream is frozen, its
        requests frozen tuples."""
        digest = hashlib.sha256()
        for r in self.requests:
            row = [round(r.arrival_seconds, 6), list(r.prompt_ids), r.max_new_tokens, r.conversation, r.turn]
            digest.update(json.dumps(row).encode())
        return digest.hexdigest()

    @property
    def duration_seconds(self) -> float:
        return self.requests[-1].arrival_seconds if self.requests else 0.0

    @property
    def longest_request_tokens(self) -> int:
        """Prompt and output tokens of the longest request: what an engine serving it must hold."""
        return max((len(r.prompt_ids) + r.max_new_tokens for r in self.requests), default=0)

    @property
    def offered_rate(self) -> float:
        """Requests per second between the first and last arrival."""
        span = self.duration_seconds - (self.requests[0].arrival_seconds if self.requests else 0.0)
        return (len(self.requests) - 1) / span if span > 0 else float("inf")


def window_bounds(count: int, warmup: int, drain: int) -> tuple[int, int]:
    """Indexes of the requests whose arrivals open and close a run's energy window."""
    first = min(max(warmup, 0), count - 1)
    last = max(count - 1 - max(drain, 0), first)
    return first, last


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


def stream_generators(seed: int) -> tuple[random.Random, random.Random]:
    """The generators of seed `seed`'s arrivals and lengths: 2*seed and 2*seed+1, so no two seeds
    share a draw (seed and seed+1 made seed's lengths seed+1's arrivals) and seed 0 keeps the
    draws its recorded streams were made with. Apart: a gamma draw may take several numbers."""
    return random.Random(2 * seed), random.Random(2 * seed + 1)


def inter_arrivals(kind: str, rate: float, cv: float, rng: random.Random) -> Iterator[float]:
    """Seconds between consecutive arrivals at `rate` requests/s (kind and cv checked by the config)."""
    while True:
        if kind == "constant":
            yield 1.0 / rate
        elif kind == "poisson":
            yield rng.expovariate(rate)
        else:  # gamma: mean 1/rate, coefficient of variation cv (cv 1 is Poisson; > 1 is bursty)
            shape = 1.0 / cv**2
            yield rng.gammavariate(shape, 1.0 / (rate * shape))


def generate_stream(cfg: WorkloadConfig, text: TextTokens, rate: float | None = None) -> RequestStream:
    """The seeded stream `cfg` describes at `rate` (default `cfg.rate`), prompts cut from `text`.

    The same seed at another rate gives the same prompts and lengths, with arrivals scaled.
    """
    rate = cfg.rate if rate is None else rate
    if not rate > 0:
        raise UserError("workload.rates", f"has {rate}", "offered loads are requests/s > 0")
    rng, lengths = stream_generators(cfg.seed)
    system = text.prompt(cfg.shared_prefix_tokens) if cfg.shared_prefix_tokens else text.start_ids
    arrivals = inter_arrivals(cfg.arrivals, rate / cfg.turns, cfg.arrival_cv, rng)
    pending: list[StreamRequest] = []
    clock = 0.0
    conversation = 0
    while len(pending) < cfg.requests:
        clock += next(arrivals)
        history = system
        for turn in range(min(cfg.turns, cfg.requests - len(pending))):
            # each turn's new message; the first turn's after the system prompt, its length counting
            # the sequence start as a prompt without one does (a length within the system prompt
            # left the agent preset's first turns 1 token past it)
            drawn = draw_length(cfg.prompt_lengths, lengths)
            prompt = history + text.take(max(drawn - (len(text.start_ids) if turn == 0 else 0), 1))
            output = draw_length(cfg.output_lengths, lengths)
            pending.append(
                StreamRequest(
                    index=-1,
                    arrival_seconds=clock + turn * cfg.turn_gap_seconds,
                    prompt_ids=prompt,
                    max_new_tokens=output,
                    conversation=str(conversation) if cfg.turns > 1 else None,
                    turn=turn if cfg.turns > 1 else None,
                )
            )
            history = prompt + text.take(output)  # the reply the client resends with the next turn
        conversation += 1
    ordered = sorted(pending, key=lambda r: r.arrival_seconds)
    requests = tuple(_reindexed(r, i) for i, r in enumerate(ordered))
    describe = f"{cfg.arrivals} {rate:g} req/s, {cfg.requests} requests"
    if cfg.turns > 1:
        describe += f" in conversations of {cfg.turns} turns"
    return RequestStream(requests, f"{describe}, seed {cfg.seed}")


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
    requests: list[StreamRequest] = []
    previous = 0.0
    for number, line in enumerate(_trace_lines(path), start=1):
        if not line.strip():
            continue
        where = f"workload.trace line {number}"
        try:
            item = json.loads(line)
        except ValueError as exc:  # a JSONDecodeError, or a number past Python's digit limit
            raise UserError(where, f"is not JSON ({json_problem(exc)})", "one JSON object per line") from None
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
        if not requests and arrival > FIRST_ARRIVAL_LIMIT_SECONDS:
            # a clock time (epoch seconds), most likely: the replay would wait that long before
            # request 0. Refused rather than shifted, so every trace read before keeps its hash.
            raise UserError(
                f"{where}: arrival",
                f"is {arrival} s: the replay would wait that long before the first request",
                f"give seconds from the trace's start: subtract {arrival} from every arrival",
            )
        previous = arrival
        output = _count(item, "output_tokens", where)
        if output < 1:
            raise UserError(f"{where}: output_tokens", f"is {output}", "ask for >= 1 token")
        prompt = _prompt(item, where, tokenizer, text, output, max_context)
        _check_context(where, len(prompt), output, max_context)
        conversation = item.get("conversation")
        # kept as str(): a list, a dict or 1.0 (not the id 1) would become an id no one wrote
        if conversation is not None and (
            isinstance(conversation, bool) or not isinstance(conversation, (str, int))
        ):
            raise UserError(
                f"{where}: conversation",
                f"is {conversation!r}",
                'a conversation id is a string or an integer, e.g. "c1"',
            )
        turn = item.get("turn")
        if turn is not None and (isinstance(turn, bool) or not isinstance(turn, int) or turn < 0):
            raise UserError(f"{where}: turn", f"is {turn!r}", "a turn number is an integer >= 0")
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
    if requests[-1].arrival_seconds > LONG_REPLAY_SECONDS:
        warn_of_a_long_replay(str(path), requests[-1].arrival_seconds)
    return RequestStream(tuple(requests), f"trace {path.name}")


@functools.cache
def warn_of_a_long_replay(path: str, seconds: float) -> None:
    """Once per trace: a run reads it more than once. A warning, not a refusal: a day-long trace
    may be meant, but arrivals in milliseconds (0, 350, 700...) pass every other check."""
    log.warning(
        "workload.trace %s spans %.0f s (%.1f h): every run of every candidate replays it at its own "
        "times (a candidate past search.candidate_timeout_minutes is ended as hung). Arrivals in "
        "milliseconds? They are seconds from the trace's start: divide them by 1000",
        path,
        seconds,
        seconds / 3600,
    )


def _trace_lines(path: Path) -> list[str]:
    """The trace file's lines: UTF-8, with or without a BOM (Notepad's and PowerShell's)."""
    if path.is_dir():  # it exists: "does not exist" sends users looking for a typo
        raise UserError("workload.trace", f"{path} is a folder", "give the path of a JSONL trace file")
    if not path.is_file():
        raise UserError("workload.trace", f"{path} does not exist", "give the path of a JSONL trace file")
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return json_lines(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = len(json_lines(data[: exc.start].decode("utf-8")))
        raise UserError(
            f"workload.trace line {line}",
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x}: the file was saved in another encoding)",
            "save the trace as UTF-8 (JSON files are UTF-8)",
        ) from None


def _number(item: dict[str, Any], key: str, where: str) -> float:
    if key not in item:
        raise UserError(
            f"{where}", f"missing '{key}'", f"every line needs '{key}'; see the trace format in the README"
        )
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: {key}", f"is {value!r}, not a number", f"give {key} as a number")
    try:
        number = float(value)
    except OverflowError:  # an integer past a float's range
        raise UserError(
            f"{where}: {key}",
            "is an integer past a float's range (1.8e308), too large",
            f"give {key} as a smaller number",
        ) from None
    if not math.isfinite(number):
        raise UserError(f"{where}: {key}", f"is {value!r}, not a number", f"give {key} as a number")
    return number


def _check_context(where: str, prompt_tokens: int, output: int, max_context: int | None) -> None:
    if max_context is not None and prompt_tokens + output > max_context:
        raise UserError(
            f"{where}: prompt",
            f"{prompt_tokens} prompt + {output} output tokens exceed the model's context of {max_context}",
            "shorten the prompt or the output",
        )


def _count(item: dict[str, Any], key: str, where: str) -> int:
    """A token count: a whole number (64.0 is 64), never silently truncated."""
    value = _number(item, key, where)
    if not value.is_integer():
        raise UserError(f"{where}: {key}", f"is {value}, not a whole number", f"give {key} as an integer")
    return int(value)


def _prompt(
    item: dict[str, Any], where: str, tokenizer: Any, text: TextTokens, output: int, max_context: int | None
) -> tuple[int, ...]:
    """The line's prompt ids; a counted one checked against the context before it is built (a
    typo's extra zeros built hundreds of MB of ids first)."""
    if isinstance(item.get("prompt"), str):
        body = tuple(tokenizer(item["prompt"], add_special_tokens=False)["input_ids"])
        # a prompt rendered by a chat template may start with the BOS text itself (Llama 2's
        # "<s>[INST]"), which the tokenizer reads as the start: a second one would precede it
        start = () if body[: len(text.start_ids)] == text.start_ids else text.start_ids
        ids = start + body
        if not ids:  # an engine cannot start a request from no token: found here, not mid-run
            raise UserError(f"{where}: prompt", "is empty (no tokens)", "give a prompt with some text")
        return ids
    if "prompt_tokens" in item:
        count = _count(item, "prompt_tokens", where)
        if count < 1:
            raise UserError(f"{where}: prompt_tokens", f"is {count}", "a prompt has >= 1 token")
        _check_context(where, count, output, max_context)
        return text.prompt(count)
    raise UserError(where, "has neither 'prompt' (text) nor 'prompt_tokens' (a count)", "give one of them")


TRACE_FORMAT = """One JSON object per line, UTF-8 (a byte order mark is fine):
  arrival        seconds from the trace's start (number, >= 0, non-decreasing; the first <= 3600)
  prompt         the prompt text, or
  prompt_tokens  a prompt length in tokens, an integer (real text of that length is used)
  output_tokens  tokens to generate (integer >= 1)
  conversation   optional: an id (a string or an integer) shared by the turns of one conversation
  turn           optional: the turn's number (an integer >= 0) within its conversation
"""
