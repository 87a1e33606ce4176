"""The `optimize` command: help, --show-config, exit code 2 on bad input (no measuring here)."""

from __future__ import annotations

import logging

import pytest
import yaml

from optimizer import cli
from optimizer.config import RunConfig


@pytest.fixture(autouse=True)
def _restore_logging():
    """cli.main() installs a handler on the `optimizer` logger; put it back afterwards."""
    logger = logging.getLogger("optimizer")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def test_help_lists_groups_and_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "optimize verify RECIPE" in out
    assert "cpu-default" in out and "strict" in out


def test_show_config_prints_the_composed_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--show-config", "quality=strict", "search.budget_minutes=3"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["quality"]["max_kl"] == pytest.approx(0.01)
    assert cfg["search"]["budget_minutes"] == pytest.approx(3)


@pytest.mark.parametrize(
    ("args", "field"), [(["space=nope"], "space"), (["workload.repeats=0"], "workload.repeats")]
)
def test_bad_input_exits_2_naming_the_field(args, field: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}: ")
    assert "fix:" in err


def test_verify_of_a_missing_recipe_exits_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", str(tmp_path / "nope.yaml")]) == 2
    assert "error: recipe:" in capsys.readouterr().err


def test_verify_rejects_a_bad_tolerance(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", str(tmp_path / "r.yaml"), "--tolerance", "1.5"]) == 2
    assert "--tolerance" in capsys.readouterr().err


def test_verify_without_a_recipe_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify"]) == 2
    assert "the following arguments are required: recipe" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["verfy", "recipe.yaml"], "fix: did you mean: optimize verify recipe.yaml"),
        (["recipe.yaml"], "fix: to re-measure a recipe: optimize verify recipe.yaml"),
        (["--show-config", "+search.wokers=4"], "error: search.wokers: is not a setting"),
        (["--show-config", "hydra.run.dir=/tmp/x"], "output_dir=DIR"),
    ],
)
def test_a_misplaced_word_exits_2_with_the_command_meant(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert says in captured.err and not captured.out


@pytest.mark.parametrize("given", [True, False])
def test_verify_names_its_model_flag_when_the_weights_are_not_found(
    tmp_path, given: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from optimizer import verify
    from optimizer.recipe import write_recipe
    from unit.factories import recipe_data, target_spec

    monkeypatch.setattr(verify, "detect_target", lambda cfg: target_spec(cores=2))  # the recipe's CPU
    data = recipe_data()
    data["model"]["source"] = str(tmp_path / "moved-away")
    recipe = write_recipe(tmp_path / "recipe.yaml", data)
    flag = ["--model", str(tmp_path / "nonexistent")] if given else []
    assert cli.main(["verify", str(recipe), *flag]) == 2
    err = capsys.readouterr().err
    err = err[err.index("error: ") :]  # after a warning the recipe's layout logs
    assert err.startswith("error: --model: " if given else "error: model.source: ")
    assert "fix: pass --model <path or packaged name>" in err
    assert "model=" not in err  # optimize's syntax, not verify's


@pytest.fixture
def user_conf(tmp_path):
    """A config directory with a new workload preset and one that replaces the packaged default."""
    conf = tmp_path / "conf"
    (conf / "workload").mkdir(parents=True)
    (conf / "workload" / "mine.yaml").write_text("max_new_tokens: 7\n")
    (conf / "workload" / "chat.yaml").write_text("max_new_tokens: 9\n")
    return conf


@pytest.mark.parametrize("flag", [["--config-dir", "{dir}"], ["--config-dir={dir}"]])
def test_config_dir_presets_compose(user_conf, flag, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.format(dir=user_conf) for a in flag]
    assert cli.main([*args, "workload=mine", "--show-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["workload"]["max_new_tokens"] == 7


def test_config_dir_from_the_environment_and_the_flag_wins(
    user_conf, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WATTSMITH_CONFIG_DIR", str(user_conf))
    assert cli.main(["workload=mine", "--show-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["workload"]["max_new_tokens"] == 7
    other = tmp_path / "other" / "workload"
    other.mkdir(parents=True)
    (other / "mine.yaml").write_text("max_new_tokens: 3\n")
    assert cli.main(["--config-dir", str(other.parent), "workload=mine", "--show-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["workload"]["max_new_tokens"] == 3


def test_help_lists_the_users_presets_beside_the_packaged_ones(
    user_conf, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--config-dir", str(user_conf), "--help"]) == 0
    out = capsys.readouterr().out
    workload = next(line for line in out.splitlines() if line.strip().startswith("workload "))
    assert "mine (yours)" in workload and "quick" in workload
    assert "chat (yours, replaces the packaged one)" in workload
    assert str(user_conf) in out
    assert cli.main(["--help"]) == 0
    assert "(yours" not in capsys.readouterr().out


def test_an_unknown_preset_lists_both_sources_and_exits_2(
    user_conf, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--config-dir", str(user_conf), "workload=nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: workload: no preset named 'nope'")
    assert "'mine'" in err and "'quick'" in err


@pytest.mark.parametrize("kind", ["missing", "file", "no value"])
def test_a_bad_config_dir_exits_2_naming_the_flag(
    tmp_path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    args = {
        "missing": ["--config-dir", str(tmp_path / "nope")],
        "file": ["--config-dir", str(tmp_path / "file")],
        "no value": ["--show-config", "--config-dir"],
    }[kind]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --config-dir: ")
    assert "fix:" in err


def test_a_bad_config_dir_variable_exits_2_naming_it(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WATTSMITH_CONFIG_DIR", str(tmp_path / "nope"))
    assert cli.main(["--show-config"]) == 2
    assert capsys.readouterr().err.startswith("error: WATTSMITH_CONFIG_DIR: ")


def test_sigterm_stops_a_run_as_ctrl_c_does_giving_its_leases_up(tmp_path) -> None:
    import signal
    import subprocess
    import sys

    from optimizer.store import TrialStore

    code = (
        "import sys, time\nfrom optimizer.interrupts import sigterm_interrupts\n"
        "from optimizer.store import TrialStore, leases_kept\n"
        "store = TrialStore(sys.argv[1], 'ctx')\n"
        "try:\n"
        "    with sigterm_interrupts(), leases_kept(store, 600):\n"
        "        assert store.claim('cand', 600)\n"
        "        try:\n"
        "            print('ready', flush=True)\n"
        "            time.sleep(600)\n"
        "        finally:\n"
        "            print('stopping', flush=True)\n"
        "            sys.stdin.readline()  # the test sends its second SIGTERM meanwhile\n"
        "            print('clean-up went on', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    path = tmp_path / "t.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    # A second one (a process-group kill, then another) is ignored. It is sent once the child is
    # inside the clean-up the first one started: sent right after the first, it either merged with
    # it (not tested) or, if this process was descheduled between the two, found the handler
    # already restored and killed the child (-15).
    assert proc.stdout.readline().strip() == "stopping"
    proc.send_signal(signal.SIGTERM)
    proc.stdin.close()
    assert proc.wait(timeout=60) == 130  # interrupted (not killed by the signal: -15)
    assert proc.stdout.read().strip() == "clean-up went on"  # not interrupted a second time
    store = TrialStore(path, "ctx")
    assert store.claim_owner("cand") is None  # a resumed run has no lease to take over, no death
    assert store.claim("cand", 60) and store.deaths_since("cand", 0.0) == 0
    # in-process (an application embedding the CLI), main() leaves the handler as it found it
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["--help"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.fixture
def started_runs(tmp_path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The output_dir of each run `cli.main` starts (pipeline.optimize faked: nothing measured),
    each run started in the same second, in tmp_path."""
    import datetime as dt
    from pathlib import Path

    import hydra.core.utils

    from optimizer import pipeline

    class OneSecond(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> OneSecond:
            return cls(2025, 1, 2, 3, 4, 5, tzinfo=tz)

    started: list[str] = []

    def optimize(cfg: RunConfig) -> pipeline.RunResult:
        started.append(cfg.output_dir)
        return pipeline.RunResult(Path(cfg.output_dir), None, None, None, [], None, dry_run=tmp_path)

    monkeypatch.setattr(hydra.core.utils, "datetime", OneSecond)  # `${now:...}`, the default's name
    monkeypatch.setattr(pipeline, "optimize", optimize)
    monkeypatch.chdir(tmp_path)
    return started


def test_runs_started_in_one_second_get_a_directory_each(tmp_path, started_runs: list[str]) -> None:
    """The default output_dir names the second a run starts: a second run in it would overwrite
    the first's recipe, report and results."""
    assert cli.main(["target=cpu"]) == 0
    assert cli.main(["target=cpu"]) == 0
    assert started_runs == ["outputs/2025-01-02_03-04-05", "outputs/2025-01-02_03-04-05-2"]
    assert all((tmp_path / d).is_dir() for d in started_runs)


def test_an_existing_output_dir_given_is_written_into(tmp_path, started_runs: list[str]) -> None:
    """The user named it: a re-run there replaces its outputs (a stale recipe is removed)."""
    (tmp_path / "mine").mkdir()
    assert cli.main(["target=cpu", "output_dir=mine"]) == 0
    assert cli.main(["target=cpu", "output_dir=mine"]) == 0
    assert started_runs == ["mine", "mine"]
