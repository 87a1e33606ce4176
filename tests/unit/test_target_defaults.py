"""The space and workload a run takes on its target when the user names neither."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from pathlib import Path

import pytest
import yaml

from optimizer import cli
from optimizer.backends.torch.settings import TorchSettings
from optimizer.backends.torch_cb.settings import ContinuousBatchingSettings
from optimizer.config import RunConfig, compose_run_config
from optimizer.space import enumerate_candidates
from optimizer.target_defaults import chosen_groups, compose_for_target, trace_shares_prefixes


def without_time(cfg: RunConfig) -> RunConfig:
    """output_dir holds the composition's second: two compositions may straddle one."""
    return dataclasses.replace(cfg, output_dir="outputs")


def test_chosen_groups_are_the_preset_overrides() -> None:
    assert chosen_groups(["space=cpu-batch", "+workload=chat", "space.batch_sizes=[4]", "--x"]) == {
        "space",
        "workload",
        "space.batch_sizes",
    }


def test_a_cpu_target_keeps_the_cpu_presets() -> None:
    cfg = compose_for_target(["target=cpu"])
    plain = compose_run_config(["target=cpu"])
    assert without_time(cfg) == without_time(plain)
    assert "llamacpp" in {e["backend"] for e in cfg.space.extra}
    assert cfg.workload.rate == plain.workload.rate == compose_run_config(["workload=chat"]).workload.rate


def test_a_gpu_target_takes_the_gpu_serving_presets() -> None:
    cfg = compose_for_target(["target=h200"])
    assert cfg.space == compose_run_config(["space=gpu-default"]).space
    assert cfg.workload == compose_run_config(["workload=gpu-chat"]).workload
    assert cfg.workload.kind == "serving"
    assert cfg.space.backends == ["torch-cb"]


def test_a_named_preset_wins_over_the_gpu_default() -> None:
    batch = compose_for_target(["target=h200", "space=gpu-batch"])
    assert batch.space == compose_run_config(["space=gpu-batch"]).space
    assert batch.workload == compose_run_config(["workload=gpu-chat"]).workload
    offline = compose_for_target(["target=h200", "workload=gpu"])
    assert offline.workload.kind == "offline"
    assert offline.space == compose_run_config(["space=gpu-default"]).space


def test_field_overrides_apply_on_top_of_the_gpu_preset() -> None:
    cfg = compose_for_target(["target=h200", "space.batch_sizes=[32]", "workload.rate=5"])
    assert cfg.space.batch_sizes == [32]
    assert cfg.space.torch_cb == compose_run_config(["space=gpu-default"]).space.torch_cb
    assert cfg.workload.rate == 5.0
    assert cfg.workload.slo == compose_run_config(["workload=gpu-chat"]).workload.slo


def test_a_stream_sharing_prefixes_takes_cpu_defaults_candidates_with_prefix_reuse(make_target) -> None:
    """workload=agent on a CPU: cpu-agent, the same engines and sizes as cpu-default, each with
    prefix reuse on where it has it; a named space, or a stream sharing nothing, keeps its own."""
    agent = compose_for_target(["target=cpu", "workload=agent"])
    assert agent.space == compose_run_config(["space=cpu-agent"]).space
    default = compose_run_config(["space=cpu-default"]).space
    valid = {
        name: enumerate_candidates(space, make_target(), serving=True)[0]
        for name, space in (("agent", agent.space), ("default", default))
    }

    def without_sharing(candidates: list) -> list:
        return sorted(
            (c.backend, c.batch_size, {**c.to_dict(), "prefix_sharing": False}.__repr__()) for c in candidates
        )

    assert without_sharing(valid["agent"]) == without_sharing(valid["default"])
    # every engine but HF generate behind a queue (which has no prefix reuse) keeps prefixes
    kept = {c.label(): c.settings.prefix_sharing for c in valid["agent"]}  # type: ignore[union-attr]
    assert [label for label, on in kept.items() if not on] == [
        c.label() for c in valid["agent"] if getattr(c.settings, "loop", None) == "hf"
    ], kept
    named = compose_for_target(["target=cpu", "workload=agent", "space=cpu-default"])
    assert named.space == default
    # field overrides apply on top; a stream of single turns with no system prompt shares nothing
    assert compose_for_target(
        ["target=cpu", "workload=agent", "space.batch_sizes=[4]"]
    ).space.batch_sizes == [4]
    single = ["target=cpu", "workload=agent", "workload.turns=1", "workload.shared_prefix_tokens=0"]
    assert compose_for_target(single).space == default
    assert compose_for_target(["target=cpu"]).space == default


def write_trace(path: Path, prompts: list[str], conversations: list[str | None] | None = None) -> str:
    ids = conversations or [None] * len(prompts)
    lines = [
        json.dumps({"arrival": i * 0.5, "prompt": text, "output_tokens": 8, "conversation": conversation})
        for i, (text, conversation) in enumerate(zip(prompts, ids, strict=True))
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_a_trace_whose_requests_share_prefixes_takes_cpu_agent(tmp_path: Path) -> None:
    """Read as text while composing: turns of one conversation, or a quarter of the prompts
    beginning with the same 256 characters as another, take cpu-agent; distinct prompts, or a
    trace that cannot be read yet (reading it for the run names the problem), keep cpu-default."""
    system = "You are a careful assistant. " * 10  # 290 characters
    questions = [f"Question {i}: what is {i} squared?" for i in range(8)]
    agent = compose_run_config(["space=cpu-agent"]).space
    default = compose_run_config(["space=cpu-default"]).space

    def space_for(trace: str) -> object:
        return compose_for_target(["target=cpu", "workload=chat", f"workload.trace={trace}"]).space

    behind_a_system_prompt = write_trace(tmp_path / "system.jsonl", [system + q for q in questions])
    assert space_for(behind_a_system_prompt) == agent
    turns = write_trace(tmp_path / "turns.jsonl", questions[:3], ["a", "b", "a"])
    assert space_for(turns) == agent
    assert space_for(write_trace(tmp_path / "distinct.jsonl", questions)) == default
    assert space_for(str(tmp_path / "missing.jsonl")) == default
    # 2 of 8 prompts (each shares with the other) is a quarter; 2 of 10 is not
    two_alike = [system + "x", system + "y"]
    assert trace_shares_prefixes(Path(write_trace(tmp_path / "8.jsonl", two_alike + questions[:6])))
    assert not trace_shares_prefixes(Path(write_trace(tmp_path / "10.jsonl", two_alike + questions)))
    # the shared part must reach 256 characters: these share 209
    short = [system[:200] + q for q in questions]
    assert not trace_shares_prefixes(Path(write_trace(tmp_path / "short.jsonl", short)))


def test_target_auto_is_detected(monkeypatch: pytest.MonkeyPatch, make_target) -> None:
    monkeypatch.setattr("optimizer.target.detect_target", lambda cfg: make_target(kind="cuda"))
    assert compose_for_target().space == compose_run_config(["space=gpu-default"]).space
    monkeypatch.setattr("optimizer.target.detect_target", lambda cfg: make_target())
    assert without_time(compose_for_target()) == without_time(compose_run_config())


def test_show_config_prints_the_gpu_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--show-config", "target=h200"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["space"]["backends"] == ["torch-cb"]
    assert shown["workload"]["rate"] == compose_run_config(["workload=gpu-chat"]).workload.rate


def test_the_gpu_default_space_on_a_gpu(make_target) -> None:
    """The slot loop first, then continuous batching at 2 concurrency limits x 2 chunk sizes,
    static batches behind a queue; FlashAttention 2 / 3 only where installed."""
    space = compose_run_config(["space=gpu-default"]).space
    valid, excluded = enumerate_candidates(space, make_target(kind="cuda"), serving=True)
    cb = [c for c in valid if isinstance(c.settings, ContinuousBatchingSettings)]
    flash = importlib.util.find_spec("flash_attn") is not None
    flash3 = importlib.util.find_spec("flash_attn_interface") is not None
    assert len(cb) == 4 * (1 + flash + flash3)
    assert {(c.batch_size, c.settings.max_batch_tokens) for c in cb} == {
        (64, 1024),
        (64, 4096),
        (256, 1024),
        (256, 4096),
    }
    slots = TorchSettings(
        precision="bf16", kv_cache="static", compile=True, attention="sdpa_gqa", loop="slots"
    )
    paced = dataclasses.replace(slots, step_interval_ms=20.0)
    assert [(c.settings, c.batch_size) for c in valid if isinstance(c.settings, TorchSettings)] == [
        (slots, 64),
        (paced, 256),
        (TorchSettings(precision="bf16"), 64),
    ]
    assert valid[0].settings == slots  # extra candidates are measured first
    if not (flash or flash3):
        assert len(excluded) == 8
        assert all("flash-attn" in reason for _, reason in excluded)


def test_an_axis_of_a_backend_the_space_does_not_search_is_named(caplog: pytest.LogCaptureFixture) -> None:
    """cpu-agent serves llama.cpp only from space.extra, whose entries carry their own settings: the
    axis changed nothing without a word, and the README's comparison measured one variant."""
    args = ["target=cpu", "workload=agent", "space.llamacpp.prefix_sharing=[true,false]"]
    with caplog.at_level(logging.WARNING, logger="optimizer.target_defaults"):
        compose_for_target(args)
    assert "space.llamacpp.prefix_sharing changes nothing: llamacpp is not searched" in caplog.text
    assert "space.backends=[torch-cb,llamacpp]" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="optimizer.target_defaults"):
        searched = compose_for_target([*args, "space.backends=[torch-cb,llamacpp]"]).space
    assert searched.llamacpp.prefix_sharing == [True, False] and "changes nothing" not in caplog.text
