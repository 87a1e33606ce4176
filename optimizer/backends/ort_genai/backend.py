"""onnxruntime-genai backend: the genai model builder turns the HF weights into an ONNX model
(fp32/fp16/bf16/int8/int4), and onnxruntime-genai runs it with the candidate's batch and threads.

Builds run as a subprocess (the builder holds the whole model in memory and prints progress bars)
into the run's cache, keyed by (weights sha256, builder options, the config and tokenizer files it
reads, the versions of genai and the packages its builder runs on), and are reused.
Some option sets exit 0 yet write a model that does not load, so every build is load-checked.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from optimizer.backends.artifacts import artifact_key, cached_artifact
from optimizer.backends.base import Generation, load_check
from optimizer.backends.completions import check_request
from optimizer.backends.installed import ONNX_RUNTIME, distribution_version
from optimizer.backends.ort_genai.serving import GenaiEngineServer
from optimizer.backends.ort_genai.settings import GENERATOR_MAX_BATCH, OrtGenaiSettings
from optimizer.backends.parity import (
    CHECKED_TOKENS,
    TIE_TOLERANCE,
    parity_error,
    random_prompts,
    reference_greedy,
)
from optimizer.measure.serving import Completion
from optimizer.model import ModelSpec
from optimizer.model_files import model_files_sha256
from optimizer.processes import killed_with_parent
from optimizer.target import TargetSpec

if TYPE_CHECKING:
    from optimizer.space import Candidate

log = logging.getLogger(__name__)

BUILD_FORMAT = 1  # bump when the builder command changes: old builds are then not reused
BUILD_TIMEOUT_SECONDS = 1800
PARITY_TIMEOUT_SECONDS = 120.0


class GenaiBuildError(RuntimeError):
    """The model builder failed, or wrote a model that onnxruntime-genai cannot load or run."""


class OrtGenaiBackend:
    def build(
        self, model: ModelSpec, candidate: Candidate, target: TargetSpec, workdir: Path
    ) -> OrtGenaiEngine:
        settings = candidate.settings
        assert isinstance(settings, OrtGenaiSettings)
        build_dir = ensure_build(model, settings, workdir)
        threads = candidate.threads or (0 if target.is_cuda else target.cores)
        engine = OrtGenaiEngine.load(build_dir, settings, threads, candidate.batch_size)
        try:
            load_check(engine, GenaiBuildError)  # closes the engine when it fails
        except Exception as exc:
            raise GenaiBuildError(f"the build in {build_dir} loads but does not run: {_short(exc)}") from exc
        return engine


# What the builder reads beside the weights: the config, and the generation config and tokenizer
# files its genai_config's EOS ids come from (it also copies the tokenizer into the build)
BUILDER_READS = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
)
# The builder runs genai's own code on transformers (the model) and torch, writes with onnx-ir and
# onnx, and quantizes with ONNX Runtime's MatMulNBits quantizer
BUILDER_PACKAGES = (
    ("onnxruntime-genai", "onnxruntime-genai-cuda"),
    ONNX_RUNTIME,
    ("transformers",),
    ("torch",),
    ("onnx",),
    ("onnx-ir",),
)


def build_options(settings: OrtGenaiSettings) -> dict[str, Any]:
    """Everything that decides the builder's output, apart from the model's files."""
    return {
        "format": BUILD_FORMAT,
        "precision": settings.precision,
        "execution_provider": settings.provider,
        "extra_options": settings.builder_extra_options(),
        "packages": [distribution_version(*names) for names in BUILDER_PACKAGES],
    }


def build_identity(model: ModelSpec, settings: OrtGenaiSettings) -> dict[str, Any]:
    """The build's options and the model files it reads besides the weights (in the dir name)."""
    return {**build_options(settings), "model_files": model_files_sha256(model.path, BUILDER_READS)}


def build_dir_for(model: ModelSpec, settings: OrtGenaiSettings, workdir: Path) -> Path:
    key = artifact_key(build_identity(model, settings))
    return workdir / "ort-genai" / f"{model.weight_sha256[:16]}-{key}"


def builder_command(model_dir: Path, out_dir: Path, settings: OrtGenaiSettings) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(model_dir),
        "-o",
        str(out_dir),
        "-p",
        settings.precision,
        "-e",
        settings.provider,
        "-c",
        str(out_dir / "builder-cache"),  # its temporary external-data files
    ]
    extra = settings.builder_extra_options()
    if extra:
        command += ["--extra_options", *(f"{k}={v}" for k, v in extra.items())]
    return command


def ensure_build(model: ModelSpec, settings: OrtGenaiSettings, workdir: Path) -> Path:
    """The cached build for these weights and options, built now if missing."""
    out = build_dir_for(model, settings, workdir)
    log_path = out.with_name(f"{out.name}.builder.log")  # kept beside the build, also when it fails

    def run_builder(tmp: Path) -> dict[str, Any]:
        command = builder_command(model.path, tmp, settings)
        try:
            with log_path.open("w", encoding="utf-8") as handle:
                proc = subprocess.run(
                    command,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    cwd=tmp,  # whatever it writes relative to its working directory stays in the build
                    timeout=BUILD_TIMEOUT_SECONDS,
                    env=os.environ | {"PYTHONUNBUFFERED": "1"},
                    check=False,
                    # a run killed outright must not leave it building on (up to the timeout)
                    preexec_fn=killed_with_parent(),
                )
        except subprocess.TimeoutExpired:
            raise GenaiBuildError(
                f"the model builder ran past {BUILD_TIMEOUT_SECONDS} s (log: {log_path})"
            ) from None
        if proc.returncode != 0 or not (tmp / "genai_config.json").is_file():
            raise GenaiBuildError(
                f"the onnxruntime-genai model builder exited {proc.returncode}: "
                f"{log_tail(log_path.read_text(errors='replace'))} (log: {log_path})"
            )
        shutil.rmtree(tmp / "builder-cache", ignore_errors=True)
        return {"command": command[1:], "options": build_identity(model, settings)}

    out.parent.mkdir(parents=True, exist_ok=True)
    return cached_artifact(out, run_builder, f"onnxruntime-genai {settings.label()} model")


def session_options(settings: OrtGenaiSettings, threads: int) -> dict[str, Any]:
    """The decoder's session_options overlaid on the build's genai_config.json."""
    options: dict[str, Any] = {}
    if threads:  # genai runs ONE intra-op thread unless told otherwise
        options |= {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    if not settings.spinning:
        # genai (0.18) hands a string-valued session option it does not know to AddConfigEntry
        options["session.intra_op.allow_spinning"] = "0"
    return options


def log_tail(text: str, lines: int = 3) -> str:
    """The builder's error, or else its last lines, with progress-bar redraws dropped."""
    kept = []
    for line in text.replace("\r", "\n").splitlines():
        line = line.strip()
        if line and "it/s]" not in line and not line.startswith(("Saving ", "Loading ")):
            kept.append(line[:300])
    errors = [line for line in kept if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    return errors[-1] if errors else " | ".join(kept[-lines:]) or "(no output)"


class OrtGenaiEngine:
    """Greedy generation through onnxruntime-genai's Generator: exactly max_new_tokens per row.
    A request stream (`submit`/`collect`) goes to genai's own scheduler, its Engine API
    (`serving.py`), with up to `max_requests` requests together."""

    def __init__(
        self,
        og: Any,
        model: Any,
        settings: OrtGenaiSettings,
        build_dir: Path,
        max_requests: int = 1,
        vocab_size: int | None = None,
    ) -> None:
        self._og = og
        self.model: Any = model
        self.settings = settings
        self.build_dir = build_dir
        self.max_requests = max_requests
        self.vocab_size = vocab_size  # prompt tokens outside it are refused; None: not checked
        self._server: GenaiEngineServer | None = None  # started by the first submit()

    @classmethod
    def load(
        cls, build_dir: Path, settings: OrtGenaiSettings, threads: int, max_requests: int = 1
    ) -> OrtGenaiEngine:
        import onnxruntime_genai as og

        config = og.Config(str(build_dir))
        config.clear_providers()
        if settings.provider == "cuda":
            config.append_provider("cuda")
        options = session_options(settings, threads)
        if options:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        try:
            model = og.Model(config)
        except Exception as exc:
            raise GenaiBuildError(
                f"onnxruntime-genai cannot load the {settings.label()} build: {_short(exc)} ({build_dir})"
            ) from exc
        vocab_size = int(json.loads((build_dir / "genai_config.json").read_text())["model"]["vocab_size"])
        return cls(og, model, settings, build_dir, max_requests, vocab_size)

    def _generator(self, batch_size: int, max_length: int, min_length: int) -> Any:
        if self.model is None:  # closed: genai would refuse the None model with a TypeError
            raise RuntimeError("the engine is closed")
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(
            batch_size=batch_size, max_length=max_length, min_length=min_length, do_sample=False
        )
        return self._og.Generator(self.model, params)

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        batch, prompt = prompt_ids.shape
        # (its loop would still return the first token, and real genai fails opaquely)
        for row in prompt_ids.tolist():
            check_request(row, max_new_tokens, self.vocab_size)
        ids = prompt_ids.numpy().astype(np.int32)
        total = prompt + max_new_tokens
        # the batch waits for its Generator (KV buffers, search state: 12-15 ms on a tiny Llama,
        # more than its prefill), so its TTFT does too, as the ORT backend's decoder state setup
        start = time.perf_counter()
        # min_length = max_length suppresses EOS: every request does the same work
        generator = self._generator(batch, total, total)
        generator.append_tokens(ids)  # prefill
        generator.generate_next_token()
        tokens = [generator.get_next_tokens().copy()]
        first = time.perf_counter()
        for _ in range(max_new_tokens - 1):
            generator.generate_next_token()
            tokens.append(generator.get_next_tokens().copy())
        end = time.perf_counter()
        del generator  # frees its KV buffers now, not at the next collection
        token_ids = torch.from_numpy(np.stack(tokens, axis=1).astype(np.int64))
        return Generation(batch, max_new_tokens, first - start, end - start, token_ids=token_ids)

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.vocab_size is not None:
            # as generate: genai's Gather would read a negative id as another token, silently
            outside = token_ids[(token_ids < 0) | (token_ids >= self.vocab_size)]
            if outside.numel():
                bad = int(outside[0])
                raise ValueError(f"token id {bad} is outside the model's vocabulary of {self.vocab_size}")
        ids = token_ids.numpy().astype(np.int32)
        chunks = [
            self._score(ids[i : i + GENERATOR_MAX_BATCH]) for i in range(0, len(ids), GENERATOR_MAX_BATCH)
        ]
        return torch.from_numpy(np.concatenate(chunks))

    def _score(self, ids: np.ndarray) -> np.ndarray:
        batch, length = ids.shape
        # max_length = the window: no token is generated, and a window of the model's whole
        # context (which the quality check allows) must fit its context_length
        generator = self._generator(batch, length, 0)
        generator.append_tokens(ids)
        logits = np.asarray(generator.get_output("logits"), dtype=np.float32)
        del generator
        return logits.reshape(batch, length, -1)

    # -- ServingEngine: requests of a stream, scheduled by genai's Engine --------------------

    def server(self) -> GenaiEngineServer:
        if self.model is None:
            raise RuntimeError("the engine is closed")
        if self._server is None:
            server = GenaiEngineServer(self._og, self.model, self.max_requests, self.vocab_size)
            try:
                self._check_engine_parity(server)
            except BaseException:
                server.close()
                raise
            self._server = server
        return self._server

    def _activations(self) -> str:
        """The builder keeps fp32 activations on the CPU, fp16 (bf16 for bf16) on CUDA."""
        s = self.settings
        if s.provider == "cpu" or s.precision == "fp32":
            return "fp32"
        return "bf16" if s.precision == "bf16" else "fp16"

    def _check_engine_parity(self, server: GenaiEngineServer) -> None:
        """The Engine's scheduler, batching and padding act only on streams: its greedy tokens for
        two prompts of different lengths, batched together, must be what plain forwards decode
        with the build's EOS ids masked, as the Engine masks them. genai 0.18 cannot be made to
        take the raw argmax and go on past EOS: its eos_token_id must be a vocabulary id, and
        an EOS ends the sequence unless masked (min_length / set_min_generated_tokens)."""
        config = json.loads((self.build_dir / "genai_config.json").read_text())["model"]
        rows = random_prompts(int(config["vocab_size"]), rows=2, tokens=16)
        # the Engine masks these (exactly CHECKED_TOKENS each): the reference must mask them too
        eos = config.get("eos_token_id", [])
        eos_ids = [int(i) for i in eos] if isinstance(eos, list) else [int(eos)]
        prompts = [rows[0].tolist(), rows[1, :11].tolist()]
        ids = [server.submit(prompt, CHECKED_TOKENS) for prompt in prompts]
        done: dict[str, Completion] = {}
        deadline = time.monotonic() + PARITY_TIMEOUT_SECONDS
        while len(done) < len(ids) and time.monotonic() < deadline:
            done.update((c.request_id, c) for c in server.collect(0.5))
        for request_id, prompt in zip(ids, prompts, strict=True):
            completion = done.get(request_id)
            if completion is None or completion.error is not None:
                why = "no result" if completion is None else completion.error
                raise RuntimeError(f"the onnxruntime-genai Engine did not serve its parity check: {why}")
            tokens, logits = reference_greedy(self, torch.tensor([prompt]), CHECKED_TOKENS, eos_ids)
            got = torch.tensor([completion.token_ids])
            error = parity_error(got, tokens, logits, TIE_TOLERANCE[self._activations()])
            if error is not None:
                raise RuntimeError(f"the onnxruntime-genai Engine's {error}")

    def reserve(self, sequence_tokens: int) -> GenaiEngineServer:
        """Start the Engine (and check its parity) before a stream, not at its first request; every
        request's cache is sized by its own prompt and output (`max_session_tokens`)."""
        return self.server()

    def submit(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        return self.server().submit(prompt_ids, max_new_tokens)

    def collect(self, timeout_seconds: float) -> list[Completion]:
        if self.model is None:  # closed: nothing will ever finish, so waiting would only stall
            raise RuntimeError("the engine is closed")
        if self._server is None:
            time.sleep(max(timeout_seconds, 0.0))
            return []
        return self._server.collect(timeout_seconds)

    def first_token_times(self) -> dict[str, float | None]:
        return self._server.first_token_times() if self._server is not None else {}

    def cancel_all(self) -> None:
        if self._server is not None:
            self._server.cancel_all()

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.model = None
        gc.collect()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:400] or type(exc).__name__
