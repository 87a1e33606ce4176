"""Recipe YAML: a hand-made recipe round-trips; every malformed one is a UserError about `recipe`."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

from optimizer.config import ModelConfig, QualityConfig, WorkloadConfig
from optimizer.errors import UserError
from optimizer.recipe import (
    check_weights,
    load_recipe,
    model_config_for,
    read_recipe,
    write_recipe,
)
from optimizer.space import Candidate, TorchSettings
from unit.factories import WEIGHT_SHA as SHA
from unit.factories import recipe_data, target_spec


@pytest.fixture
def recipe_dict() -> dict[str, Any]:
    """A recipe in the layout build_recipe writes."""
    return recipe_data()


def _write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_valid_recipe_round_trips(tmp_path: Path, recipe_dict: dict[str, Any]) -> None:
    path = write_recipe(tmp_path / "recipe.yaml", recipe_dict)
    assert path.read_text().startswith("# wattsmith recipe")
    recipe = read_recipe(path)
    assert recipe.path == path
    assert recipe.data == recipe_dict
    assert recipe.candidate == Candidate(
        TorchSettings(precision="bf16", quantization="int8-weight"), batch_size=8, threads=2
    )
    assert recipe.model.source == "/models/tiny" and recipe.model.revision is None
    assert recipe.target_kind == "cpu"
    assert recipe.workload == WorkloadConfig(
        prompt_tokens=32, max_new_tokens=16, min_window_seconds=1.0, repeats=2
    )
    assert recipe.quality == QualityConfig(num_sequences=4, seq_tokens=64, max_kl=0.1)
    assert recipe.evidence["energy"]["source"] == "estimate"
    # written again, it reads back the same
    again = read_recipe(write_recipe(tmp_path / "again.yaml", recipe.data))
    assert again.data == recipe.data and again.candidate == recipe.candidate


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        read_recipe(tmp_path / "nope.yaml")
    assert info.value.field == "recipe"
    assert "does not exist" in info.value.problem


def test_a_directory_or_an_empty_file_is_said_as_such(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        read_recipe(tmp_path)
    assert info.value.field == "recipe" and "is a directory, not a recipe file" in info.value.problem
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(UserError) as info:
        read_recipe(tmp_path / "empty.yaml")
    assert info.value.field == "recipe" and info.value.problem.endswith("is empty")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("model", "weight_sha256"), None),
        (("evidence", "energy"), None),
        (("evidence", "energy", "source"), None),
        (("evidence", "energy", "goodput_tokens_per_joule"), None),
        (("evidence", "energy", "goodput_tokens_per_joule", "mean"), "high"),
        (("evidence", "latency"), None),
        (("evidence", "latency", "tpot_ms"), 12.0),
        (("evidence", "quality"), None),
    ],
)
def test_evidence_verify_compares_with_is_checked_when_read(
    tmp_path: Path, recipe_dict: dict[str, Any], path: tuple[str, ...], value: Any
) -> None:
    """verify reads these after minutes of re-measuring: a recipe without them fails at once."""
    data = copy.deepcopy(recipe_dict)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    with pytest.raises(UserError) as info:
        read_recipe(_write(tmp_path / "recipe.yaml", data))
    assert info.value.field.startswith("recipe." + ".".join(path[:2]))


def test_corrupt_yaml(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("schema: [wattsmith\n  settings: {{{\n")
    with pytest.raises(UserError) as info:
        read_recipe(path)
    assert info.value.field.startswith("recipe")
    assert "YAML" in info.value.problem


@pytest.mark.parametrize(
    "data", [{"schema": "wattsmith.recipe/v99"}, {"no": "schema"}, ["a", "list"], "text"]
)
def test_wrong_schema(tmp_path: Path, data: Any) -> None:
    with pytest.raises(UserError) as info:
        read_recipe(_write(tmp_path / "recipe.yaml", data))
    assert info.value.field == "recipe.schema"


@pytest.mark.parametrize(
    "path",
    [
        ("settings",),
        ("measurement",),
        ("measurement", "workload"),
        ("measurement", "workload", "slo"),
        ("measurement", "quality"),
        ("model",),
        ("model", "source"),
        ("target",),
        ("target", "kind"),
        ("settings", "batch_size"),
    ],
)
def test_missing_fields(tmp_path: Path, recipe_dict: dict[str, Any], path: tuple[str, ...]) -> None:
    data = copy.deepcopy(recipe_dict)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(UserError) as info:
        read_recipe(_write(tmp_path / "recipe.yaml", data))
    assert info.value.field.startswith("recipe")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["settings"].update(backend="tensorflow"), "recipe.settings.backend"),
        (lambda d: d["settings"].update(turbo=True), "recipe.settings"),
        # named by the recipe's own path, not the run config's workload.* / quality.*
        (lambda d: d["measurement"]["workload"].update(repeats=0), "recipe.measurement.workload.repeats"),
        (lambda d: d["measurement"]["workload"].update(kind="online"), "recipe.measurement.workload.kind"),
        (lambda d: d["measurement"]["quality"].update(max_kl=-1), "recipe.measurement.quality.max_kl"),
        (
            lambda d: d["measurement"]["workload"]["slo"].update(tpot_ms=-5),
            "recipe.measurement.workload.slo.tpot_ms",
        ),
        (lambda d: d["measurement"].update(workload=[1]), "recipe.measurement"),
        (lambda d: d["measurement"].update(prompt_pool=0), "recipe.measurement.prompt_pool"),
        (lambda d: d["measurement"].update(prompt_pool="64"), "recipe.measurement.prompt_pool"),
        (lambda d: d["measurement"].update(prompt_pool=True), "recipe.measurement.prompt_pool"),
        (
            lambda d: d["measurement"].update(prompt_tokens_sha256=5),
            "recipe.measurement.prompt_tokens_sha256",
        ),
        (lambda d: d["measurement"]["workload"].update(warp=9), "recipe.measurement.workload.warp"),
        (lambda d: d.update(model="just a string"), "recipe.model"),
        (lambda d: d.update(settings=5), "recipe.settings"),
        (lambda d: d["model"].update(revison="abc123"), "recipe.model.revison"),
        (lambda d: d.update(evidense={}), "recipe.evidense"),
        (lambda d: d["constraints"]["quality"].update(max_kll=0.01), "recipe.constraints.quality.max_kll"),
        (lambda d: d["constraints"]["slo"].update(tpot=50), "recipe.constraints.slo.tpot"),
        (lambda d: d["constraints"]["slo"].update(tpot_ms=-5), "recipe.constraints.slo.tpot_ms"),
        (lambda d: d["constraints"]["quality"].update(max_kl=-1), "recipe.constraints.quality.max_kl"),
        (lambda d: d["constraints"].update(latency={}), "recipe.constraints.latency"),
        (lambda d: d.update(constraints=[1]), "recipe.constraints"),
    ],
)
def test_invalid_values_name_the_recipe_field(
    tmp_path: Path, recipe_dict: dict[str, Any], mutate, field: str
) -> None:
    data = copy.deepcopy(recipe_dict)
    mutate(data)
    with pytest.raises(UserError) as info:
        read_recipe(_write(tmp_path / "recipe.yaml", data))
    assert info.value.field == field


@pytest.mark.parametrize(
    ("part", "key", "value", "fix"),
    [
        ("quality", "max_kl", None, "a number, e.g. 0.05"),
        ("quality", "max_kl", "0.05", "a number, e.g. 0.05"),
        ("quality", "max_kl", True, "a number, e.g. 0.05"),
        ("quality", "min_top1_agreement", "95%", "a number, e.g. 0.95"),
        ("quality", "max_ppl_increase", [0.03], "a number, e.g. 0.03"),
        ("slo", "tpot_ms", "fast", "a number, e.g. 250, or null for no limit"),
        ("slo", "ttft_ms", False, "a number, e.g. 2000, or null for no limit"),
        ("slo", "percentile", None, "a number, e.g. 90"),
    ],
)
def test_a_constraint_of_the_wrong_type_names_its_key(
    tmp_path: Path, recipe_dict: dict[str, Any], part: str, key: str, value: Any, fix: str
) -> None:
    """A hand edit's null or string is refused naming the key it was written under, with the number
    it wants (not as an SLO field misspelt, from a comparison that failed on it)."""
    data = copy.deepcopy(recipe_dict)
    data["constraints"][part][key] = value
    with pytest.raises(UserError) as info:
        read_recipe(write_recipe(tmp_path / "recipe.yaml", data))
    assert info.value.field == f"recipe.constraints.{part}.{key}"
    assert info.value.problem == f"is {value!r}, not a number" and info.value.fix == fix


def test_a_null_latency_limit_is_no_limit(tmp_path: Path, recipe_dict: dict[str, Any]) -> None:
    """Null is no limit, where the search set none either (else it loosens the search's)."""
    data = copy.deepcopy(recipe_dict)
    data["measurement"]["workload"]["slo"]["tpot_ms"] = None
    data["constraints"]["slo"].update(ttft_ms=None, tpot_ms=None)
    data["constraints"]["quality"]["max_kl"] = 0  # an int is a number too
    recipe = read_recipe(write_recipe(tmp_path / "recipe.yaml", data))
    assert (recipe.workload.slo.ttft_ms, recipe.workload.slo.tpot_ms) == (None, None)
    assert recipe.quality.max_kl == 0


def test_the_constraint_examples_cover_every_bound() -> None:
    from dataclasses import fields

    from optimizer.config import SloConfig
    from optimizer.recipe_checks import QUALITY_BOUND_EXAMPLES, SLO_EXAMPLES

    assert set(SLO_EXAMPLES) == {f.name for f in fields(SloConfig)}
    assert set(QUALITY_BOUND_EXAMPLES) <= {f.name for f in fields(QualityConfig)}


def test_verify_enforces_the_constraints_a_reader_tightened(
    tmp_path: Path, recipe_dict: dict[str, Any]
) -> None:
    """`constraints` is what verify enforces: the search's bounds as written, or stricter ones."""
    recipe = read_recipe(write_recipe(tmp_path / "recipe.yaml", recipe_dict))
    assert recipe.quality.max_kl == 0.1 and recipe.workload.slo == WorkloadConfig().slo
    data = copy.deepcopy(recipe_dict)
    data["constraints"]["quality"]["max_kl"] = 0.001
    data["constraints"]["slo"]["tpot_ms"] = 50
    tightened = read_recipe(write_recipe(tmp_path / "tight.yaml", data))
    assert tightened.quality.max_kl == 0.001 and tightened.quality.num_sequences == 4
    assert tightened.workload.slo.tpot_ms == 50 and tightened.workload.prompt_tokens == 32
    del data["constraints"]
    assert read_recipe(write_recipe(tmp_path / "none.yaml", data)).quality.max_kl == 0.1


@pytest.mark.parametrize(
    ("part", "key", "value", "fix"),
    [
        ("quality", "max_kl", 5.0, "at most 0.1"),
        ("quality", "max_ppl_increase", 0.5, "at most 0.03"),
        ("quality", "min_top1_agreement", 0.5, "at least 0.95"),
        ("slo", "tpot_ms", 1000, "at most 250"),
        ("slo", "tpot_ms", None, "at most 250"),
        ("slo", "percentile", 50, "at least 90"),
    ],
)
def test_a_constraint_looser_than_the_search_is_refused(
    tmp_path: Path, recipe_dict: dict[str, Any], part: str, key: str, value: Any, fix: str
) -> None:
    """`constraints` can only tighten the bounds the search selected under (README): a looser
    quality bound or SLO would let verify pass what the search rejected."""
    data = copy.deepcopy(recipe_dict)
    data["constraints"][part][key] = value
    with pytest.raises(UserError) as info:
        read_recipe(write_recipe(tmp_path / "recipe.yaml", data))
    assert info.value.field == f"recipe.constraints.{part}.{key}"
    assert "looser than the search's" in info.value.problem and fix in info.value.fix


@pytest.mark.parametrize("where", ["settings", "workload"])
def test_a_string_where_a_mapping_belongs_is_a_user_error(
    tmp_path: Path, recipe_dict: dict[str, Any], where: str
) -> None:
    data = copy.deepcopy(recipe_dict)
    if where == "settings":
        data["settings"] = "fp32"
    else:
        data["measurement"]["workload"] = "quick"
    path = _write(tmp_path / "recipe.yaml", data)
    try:
        read_recipe(path)
    except UserError as exc:
        assert exc.field.startswith("recipe")
    except ValueError as exc:  # the bug: not a UserError
        pytest.fail(f"plain {type(exc).__name__}: {exc}")
    else:
        pytest.fail("a malformed recipe was accepted")


def test_check_weights(tmp_path: Path, recipe_dict: dict[str, Any]) -> None:
    recipe = read_recipe(write_recipe(tmp_path / "recipe.yaml", recipe_dict))
    check_weights(recipe, SHA)  # no error
    with pytest.raises(UserError) as info:
        check_weights(recipe, "ef" * 32)
    assert info.value.field == "model.weight_sha256"


def test_model_config_for_replaces_the_source(tmp_path: Path, recipe_dict: dict[str, Any]) -> None:
    recipe = read_recipe(write_recipe(tmp_path / "recipe.yaml", recipe_dict))
    assert model_config_for(recipe, None).source == "/models/tiny"
    assert model_config_for(recipe, "/elsewhere").source == "/elsewhere"


def test_a_recipe_can_name_an_ort_candidate(tmp_path: Path, recipe_dict: dict[str, Any]) -> None:
    from optimizer.backends.ort_genai.settings import OrtGenaiSettings

    candidate = Candidate(OrtGenaiSettings(precision="int8", accuracy_level=4), batch_size=8, threads=2)
    data = copy.deepcopy(recipe_dict) | {"settings": candidate.to_dict()}
    recipe = read_recipe(write_recipe(tmp_path / "recipe.yaml", data))
    assert recipe.candidate == candidate
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text())["settings"]["backend"] == "ort-genai"


def test_build_recipe_records_the_protocol_and_the_estimates_coefficients(
    make_target, make_result, make_quality, make_performance
) -> None:
    from types import SimpleNamespace

    from optimizer.config import compose_run_config
    from optimizer.measure import PROTOCOL_VERSION
    from optimizer.recipe import build_recipe
    from optimizer.search.plan import measured_inputs, prompt_pool
    from optimizer.search.runner import SearchOutcome
    from optimizer.select import Selection

    best = make_result(quality=make_quality(), performance=make_performance())
    outcome = SearchOutcome(
        baseline=best, baseline_in_space=True, results=[best], not_reached=[], measuring_seconds=1.0
    )
    target = make_target(cpu_active_watts_per_core=7.0, cpu_idle_watts_per_core=0.5)
    model = SimpleNamespace(identity=lambda: {"source": "/m", "weight_sha256": SHA})
    pool = prompt_pool(compose_run_config([]))  # what the search tokenizes: the space's largest batch
    prompts = SimpleNamespace(prompts=torch.arange(pool * 4).reshape(pool, 4))
    setup = SimpleNamespace(model=model, target=target, text_sha256="cd" * 32, streams=None, workload=prompts)
    recipe = build_recipe(compose_run_config([]), setup, best, outcome, [], "ctx", 3.0)
    measurement = recipe["measurement"]
    assert measurement["protocol_version"] == PROTOCOL_VERSION
    # the pool verify tokenizes again, and the token ids hashed as the store's key hashes them
    assert measurement["prompt_pool"] == pool
    inputs_setup: Any = SimpleNamespace(
        model=SimpleNamespace(path=Path("/nonexistent"), trust_remote_code=False),
        quality_tokens=prompts.prompts,
        workload=prompts,
    )
    assert measurement["prompt_tokens_sha256"] == measured_inputs(inputs_setup)["prompt_tokens_sha256"]
    assert measurement["energy_estimate"] == {
        "cpu_active_watts_per_core": 7.0,
        "cpu_idle_watts_per_core": 0.5,
    }
    assert "from" not in recipe["evidence"]["latency"]  # one measurement: nothing to tell apart
    assert measurement["longest_request_tokens"] is None  # offline: no stream
    assert "artifact" not in recipe  # the engine served the model's own weights
    served = {"what": "ONNX int8 dynamic quantization", "files": {"model.onnx": "ef" * 32}}
    built = replace(best, artifact=served)
    assert build_recipe(compose_run_config([]), setup, built, outcome, [], "ctx", 3.0)["artifact"] == served
    selection = Selection([], best.candidate.key(), False, "only one")
    chosen = build_recipe(compose_run_config([]), setup, best, outcome, [], "ctx", 3.0, selection)
    # a finalist's energy pools its rounds, its percentiles are its last round's: the recipe says so
    assert chosen["evidence"]["energy"]["from"] == "every finalist round"
    assert chosen["evidence"]["latency"]["from"] == "the last finalist round"


def test_read_recipe_gives_the_recorded_coefficients(tmp_path: Path, recipe_dict: dict[str, Any]) -> None:
    data = copy.deepcopy(recipe_dict)
    data["measurement"]["energy_estimate"] = {
        "cpu_active_watts_per_core": 7.0,
        "cpu_idle_watts_per_core": 0.5,
    }
    target = read_recipe(write_recipe(tmp_path / "r.yaml", data)).target
    assert (target.kind, target.cpu_active_watts_per_core, target.cpu_idle_watts_per_core) == (
        "cpu",
        7.0,
        0.5,
    )
    # a recipe written before they were recorded: the defaults it was measured with
    assert (
        read_recipe(write_recipe(tmp_path / "old.yaml", recipe_dict)).target.cpu_active_watts_per_core == 5.0
    )
    data["measurement"]["energy_estimate"] = {"cpu_active_watts_per_core": 7.0}
    with pytest.raises(UserError) as info:
        read_recipe(write_recipe(tmp_path / "bad.yaml", data))
    assert info.value.field == "recipe.measurement.energy_estimate"


def test_a_recipe_names_its_layout_and_rebuilds_it(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from optimizer.backends.registry import build_engine
    from optimizer.backends.torch_parallel import engine as parallel

    candidate = Candidate(TorchSettings(precision="bf16"), batch_size=8, threads=1, replicas=2)
    data = copy.deepcopy(recipe_dict) | {"settings": candidate.to_dict()}
    recipe = read_recipe(write_recipe(tmp_path / "recipe.yaml", data))
    assert recipe.candidate == candidate
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text())["settings"]["replicas"] == 2
    built: list[Candidate] = []
    monkeypatch.setattr(
        parallel, "build_parallel_engine", lambda model, cand, target, workdir: built.append(cand)
    )
    build_engine(None, recipe.candidate, None, tmp_path)
    assert built == [candidate]  # load_recipe and verify build through here: the layout is rebuilt


def test_a_serving_engine_is_sized_for_the_recipes_longest_request(
    tmp_path: Path, recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A llama.cpp context or a paged cache cannot grow while requests run: sized at load, as the
    measurement sized it, a deployment's first long request does not fail."""
    import optimizer.backends.registry as registry
    import optimizer.model as model_module
    import optimizer.target as target_module

    class Served:
        reserved: list[int] = []

        def reserve(self, tokens: int) -> None:
            self.reserved.append(tokens)

        def submit(self, prompt_ids: Any, max_new_tokens: int) -> str:
            return "0"

    monkeypatch.setattr(
        model_module, "resolve_model", lambda cfg, cache, **_: SimpleNamespace(weight_sha256=SHA)
    )
    monkeypatch.setattr(target_module, "detect_target", lambda cfg: target_spec())
    monkeypatch.setattr(registry, "build_engine", lambda *a: Served())
    offline = write_recipe(tmp_path / "offline.yaml", recipe_dict)
    load_recipe(offline, cache_dir=tmp_path)  # an offline recipe's engine is left as built
    load_recipe(offline, cache_dir=tmp_path, request_tokens=600)
    assert Served.reserved == [600]
    serving = copy.deepcopy(recipe_dict)
    serving["measurement"]["workload"] |= {"kind": "serving", "requests": 32}
    load_recipe(write_recipe(tmp_path / "bound.yaml", serving), cache_dir=tmp_path)
    assert Served.reserved[-1] == WorkloadConfig(kind="serving").longest_request_tokens()
    serving["measurement"]["longest_request_tokens"] = 1000  # a trace's longest line, recorded
    load_recipe(write_recipe(tmp_path / "trace.yaml", serving), cache_dir=tmp_path)
    assert Served.reserved[-1] == 1000


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "recipes").glob("*/recipe.yaml")))
def test_checked_in_recipes_keep_their_settings_and_keys(path: Path) -> None:
    recipe = read_recipe(path)
    settings = yaml.safe_load(path.read_text())["settings"]
    assert recipe.candidate.to_dict() == settings  # no layout field appears in a one-process recipe
    assert recipe.candidate.replicas == recipe.candidate.tensor_parallel == 1


def test_a_recipe_is_rebuilt_with_its_energy_source_and_remote_code_setting(
    tmp_path: Path, recipe_dict: dict[str, Any]
) -> None:
    """An estimated recipe checked on a host with RAPL is estimated again (else its source check
    fails forever); a model that needs its own code gets it again."""
    assert read_recipe(_write(tmp_path / "a.yaml", recipe_dict)).target.energy_source == "estimate"
    polled = copy.deepcopy(recipe_dict)
    polled["evidence"]["energy"]["source"] = "nvml-power-poll"  # a fallback, not a source to ask for
    assert read_recipe(_write(tmp_path / "b.yaml", polled)).target.energy_source == "auto"
    custom = copy.deepcopy(recipe_dict)
    custom["model"]["trust_remote_code"] = True
    recipe = read_recipe(_write(tmp_path / "c.yaml", custom))
    assert recipe.model.trust_remote_code is True
    assert model_config_for(recipe, "/elsewhere") == ModelConfig(source="/elsewhere", trust_remote_code=True)
    assert read_recipe(_write(tmp_path / "d.yaml", recipe_dict)).model.trust_remote_code is False


def test_a_recipes_artifact_is_read_checked_and_compared_with_the_rebuild(
    tmp_path: Path,
    recipe_dict: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import hashlib

    import optimizer.backends.registry as registry
    import optimizer.model as model_module
    import optimizer.target as target_module
    from optimizer.backends.artifacts import cached_artifact

    content = {"bytes": b"Q4_K_M"}

    def build_engine(model: Any, candidate: Any, target: Any, workdir: Path) -> object:
        def quantize(tmp: Path) -> dict[str, Any]:
            (tmp / "model.gguf").write_bytes(content["bytes"])
            return {}

        cached_artifact(workdir / content["bytes"].decode(), quantize, "llama.cpp Q4_K_M weights")
        return object()

    monkeypatch.setattr(
        model_module, "resolve_model", lambda cfg, cache, **_: SimpleNamespace(weight_sha256=SHA)
    )
    monkeypatch.setattr(target_module, "detect_target", lambda cfg: target_spec())
    monkeypatch.setattr(registry, "build_engine", build_engine)
    measured = {"model.gguf": hashlib.sha256(b"Q4_K_M").hexdigest()}
    data = copy.deepcopy(recipe_dict) | {"artifact": {"what": "llama.cpp Q4_K_M weights", "files": measured}}
    path = write_recipe(tmp_path / "recipe.yaml", data)
    assert read_recipe(path).data["artifact"]["files"] == measured
    with caplog.at_level("WARNING", logger="optimizer.recipe"):
        load_recipe(path, cache_dir=tmp_path)
        assert not caplog.records  # rebuilt byte for byte
        content["bytes"] = b"Q4_K_M from another llama.cpp"
        load_recipe(path, cache_dir=tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        "the build artifact made here (llama.cpp Q4_K_M weights) is not the one the recipe measured, "
        "model.gguf differing: another version of the package that builds it, or a builder that is not "
        "deterministic: `optimize verify` re-measures it here"
    ]
    for artifact, field in (
        ({"what": "x"}, "recipe.artifact"),
        ("model.gguf", "recipe.artifact"),
        ({"files": measured, "sha": "x"}, "recipe.artifact.sha"),
    ):
        data["artifact"] = artifact
        with pytest.raises(UserError) as info:
            read_recipe(write_recipe(tmp_path / "bad.yaml", data))
        assert info.value.field == field


def test_the_selection_evidence_has_no_interval_without_two_windows() -> None:
    """One window bounds nothing and a failed finalist has no figure: the recipe says so (null),
    not [-.inf, .inf] or a mean of 0."""
    import math

    from optimizer.recipe import _selection_evidence
    from optimizer.select import Finalist, Selection

    def finalist(samples: list[float], low: float, high: float) -> Finalist:
        mean = sum(samples) / len(samples) if samples else 0.0
        return Finalist("x", "k", samples, mean, low, high, None, bool(samples))

    rows = _selection_evidence(
        Selection(
            [
                finalist([9.0, 11.0], 8.0, 12.0),
                finalist([7.0], -math.inf, math.inf),
                finalist([], -math.inf, math.inf),
            ],
            "k",
            False,
            "r",
        )
    )["finalists"]
    assert [r["goodput_tokens_per_joule"] for r in rows] == [
        {"mean": 10.0, "ci95": [8.0, 12.0]},
        {"mean": 7.0, "ci95": None},
        {"mean": None, "ci95": None},
    ]
    assert yaml.safe_load(yaml.safe_dump(rows)) == rows
