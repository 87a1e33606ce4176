"""Hydra composition of conf/ into a validated RunConfig; the overrides Hydra would misread are
refused here, naming the field and the fix, and Hydra's own errors in config/hydra_errors.py.

Search path: the user's config directory, when given, is Hydra's main directory and the packaged
conf/ is appended to it through `hydra.searchpath`. Hydra takes a preset from the first
directory that has it, so the user's presets win and the packaged ones stay the fallback.
Hydra looks the primary config up before it reads `hydra.searchpath`, so the packaged
conf/config.yaml is also stored in the ConfigStore (always on the search path) under PRIMARY:
the primary config is wattsmith's own whatever the user's directory holds.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimizer.config.hydra_errors import (
    SPELLING,
    first_line,
    literal,
    schema_entry,
    translated,
    use_a_preset,
)
from optimizer.config.presets import CONF_DIR, GROUPS, check_config_dir, expand_model_shorthand
from optimizer.config.run import RunConfig, cache_dir_from
from optimizer.config.target import keep_packaged_identity
from optimizer.config.workload import warn_overrides_a_trace_ignores
from optimizer.errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig

PRIMARY = "wattsmith"
SCHEMA_ALONE = "wattsmith_schema"  # the primary of compose_preset: the schema, no group's preset


def register_configs() -> None:
    """Store the schema, so that every conf/ group is validated against it while composing, and
    the packaged primary config (conf/config.yaml: the default preset of each group)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(name=PRIMARY, node=OmegaConf.load(CONF_DIR / "config.yaml"))
    store.store(name=SCHEMA_ALONE, node={"defaults": ["run_schema", "_self_"]})


def compose_run_config(overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> RunConfig:
    """Compose conf/ with Hydra overrides into a validated RunConfig.

    `config_dir`: a directory of preset groups searched before the packaged conf/ (a user preset
    replaces a packaged one of the same name). Every composition or validation problem is raised
    as a UserError naming the field.
    """
    return run_config_from(compose_settings(overrides, config_dir), overrides, config_dir)


def compose_settings(overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> DictConfig:
    """Hydra's composition of conf/ with `overrides`, not yet validated: typed by the schema, but
    no config class has checked (or warned about) its values. A caller that composes again after
    reading it (optimizer/target_defaults.py) validates only the last composition, so each
    warning is said once; `run_config_from` validates it."""
    _check_override_syntax(overrides)
    # conf/config.yaml reads WATTSMITH_CACHE: name it when it is empty
    if "cache_dir" not in _given(overrides):
        cache_dir_from(os.environ)
    user_dir = check_config_dir(config_dir) if config_dir is not None else None
    _check_group_values(overrides, user_dir)
    return _compose(PRIMARY, expand_model_shorthand(overrides, user_dir), user_dir)


def compose_preset(group: str, name: str, config_dir: str | Path | None = None) -> DictConfig:
    """The preset `name` of `group` composed alone over the schema (the user's first, as for a
    run), not yet validated. No other group's default preset, nor cache_dir's WATTSMITH_CACHE, is
    read: a preset read during detection (optimizer/target.py user_preset) does not depend on
    them, nor on the run's overrides, which a worker detecting its target does not have."""
    user_dir = check_config_dir(config_dir) if config_dir is not None else None
    return _compose(SCHEMA_ALONE, [f"+{group}={name}"], user_dir)


def _compose(primary: str, overrides: Sequence[str], user_dir: Path | None) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    main, search = (CONF_DIR, []) if user_dir is None else (user_dir, [_searchpath(CONF_DIR)])
    GlobalHydra.instance().clear()
    try:
        with translated(user_dir), initialize_config_dir(config_dir=str(main), version_base=None):
            return compose(primary, overrides=[*overrides, *search])
    finally:
        GlobalHydra.instance().clear()


def run_config_from(
    settings: DictConfig, overrides: Sequence[str] = (), config_dir: str | Path | None = None
) -> RunConfig:
    """The RunConfig of composed settings: each config class validates its fields here.
    `overrides` and `config_dir`: those the settings were composed with (an output_dir among the
    overrides is kept as given; the directory goes with the target, whose detection reads the
    preset of a detected GPU's name from it)."""
    keep_packaged_identity(settings.target, overrides)  # a user's h100.yaml is still the H100 preset
    run = validated(settings)
    assert isinstance(run, RunConfig)
    given = _given(overrides)
    if "output_dir" not in given:
        run.composed_output_dir = run.output_dir
    run.search.patience_chosen = bool({"search", "search.patience"} & given)
    warn_overrides_a_trace_ignores(run.workload, given)
    if config_dir is not None:
        run.target.config_dir = str(check_config_dir(config_dir))
    return run


def validated(node: DictConfig) -> Any:
    """Composed settings, or one group of them (`settings.target`, validated alone), as their
    config class: validation errors raised as UserErrors naming the field."""
    from omegaconf import OmegaConf

    with translated(None):
        return OmegaConf.to_object(node)


def _given(overrides: Sequence[str]) -> set[str]:
    return {item.partition("=")[0].lstrip("+~") for item in overrides}


def _searchpath(folder: Path) -> str:
    """The override appending `folder` to Hydra's search path, quoted for any path."""
    quoted = str(folder).replace("\\", "\\\\").replace("'", "\\'")
    return f"hydra.searchpath=['file://{quoted}']"


def _check_override_syntax(overrides: Sequence[str]) -> None:
    """Parse each override alone, so that a syntax error names the key it was setting."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for item in overrides:
        if item.startswith("-"):
            raise UserError(
                item,
                "is not an option",
                "options are --config-dir DIR, --show-config and --help; settings are key=value",
            )
        if "=" not in item and not item.startswith("~"):  # `~key` is Hydra's deletion: its error
            raise _bare_word(item, overrides)
        key, _, value = item.partition("=")
        key = key.lstrip("+~") or "overrides"
        try:
            (parsed,) = parser.parse_overrides([item])
        except (HydraException, ValueError) as exc:
            raise UserError(
                key, f"cannot parse '{item}': {first_line(exc)}", "check brackets and quotes"
            ) from None
        if parsed.is_sweep_override():  # Hydra reads `a,b` as a sweep; optimize runs no sweeps
            preset = key in GROUPS and key != "model"  # (a model path may hold a comma)
            raise UserError(
                key,
                f"'{value}' is read as several values (a comma outside quotes or brackets)",
                f"one preset per run: {key}={value.split(',')[0]}"
                if preset
                else f"quote it: \"{key}='{value}'\" (a list is [a,b])",
            )
        _check_key(item)


def _check_group_values(overrides: Sequence[str], user_dir: Path | None) -> None:
    """`space=null` names no preset: Hydra's own error names neither the group nor its presets.
    `space=[]` or `space=[a]` Hydra accepts as selecting no or several presets, and the run
    quietly measures the schema's bare defaults: one name is what a group takes. `space={...}`
    Hydra merges into the default preset, which is then no longer chosen for the target (a GPU's
    gpu-default): refused, with the fields it sets as the overrides that set them over a preset."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for item in overrides:
        group, _, text = item.partition("=")
        if group not in GROUPS:
            continue
        value = parser.parse_overrides([item])[0].value()
        path = " or a path: model=/path/to/hf-dir" if group == "model" else ""
        if value is None:
            raise UserError(group, "is null: it needs a preset name", use_a_preset(group, user_dir) + path)
        if isinstance(value, list):
            raise UserError(
                group,
                f"'{text}' is a list: it takes one preset name",
                f"{use_a_preset(group, user_dir)}{path} (one name, no brackets)",
            )
        if isinstance(value, dict):
            fields = " ".join(_dotted(group, value)) or f"{group}.<field>=value"
            raise UserError(
                group,
                f"'{text}' is a mapping: a group takes one preset name, and its fields are set one by one",
                f"set them over the group's preset: {fields} (`optimize --show-config` lists the fields), "
                f"or a preset instead: {use_a_preset(group, user_dir)}{path}",
            )


def _dotted(key: str, value: Any) -> list[str]:
    """`key={a: 1, b: {c: x}}` as the overrides setting each field: key.a=1 key.b.c=x."""
    if isinstance(value, dict):
        return [item for name, inner in value.items() for item in _dotted(f"{key}.{name}", inner)]
    return [f"{key}={_override_value(value)}"]


def _override_value(value: Any) -> str:
    """A parsed override value written back in Hydra's syntax."""
    if isinstance(value, list):
        return f"[{','.join(_override_value(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_override_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    if isinstance(value, str) and not re.fullmatch(r"[\w./:~+-]+", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return literal(value)


def _bare_word(word: str, overrides: Sequence[str]) -> UserError:
    """The error for a word without `=`: a key without its value, or a misspelt `verify`, a recipe
    or a model path given as `optimize` reads only key=value."""
    not_setting = "is not a key=value setting"
    if word.endswith((".yaml", ".yml")):
        return UserError(word, not_setting, f"to re-measure a recipe: optimize verify {word}")
    if difflib.get_close_matches(word.lower(), ["verify"], n=1, cutoff=0.7):
        recipe = next((o for o in overrides if o.lower().endswith((".yaml", ".yml"))), "RECIPE")
        return UserError(word, "is not a command", f"did you mean: optimize verify {recipe}")
    if word.lower().endswith(".gguf") or Path(word).expanduser().is_dir():  # MODEL.GGUF is one too
        return UserError(word, not_setting, f"to optimize that model: model={word}")
    return UserError(word, "has no value", f"give one: {word}=VALUE (`optimize --help` lists the groups)")


def _check_key(item: str) -> None:
    """Refuse what Hydra would accept and wattsmith ignore: its own `hydra.*` settings (wattsmith
    writes to output_dir), `+`/`++` additions (the schema is closed: a `+` can only add a
    misspelt key, which nothing reads, or fail on an existing one) and `~group` deletions."""
    key, _, value = item.partition("=")
    name = key.lstrip("+~")
    if name == "hydra" or name.startswith("hydra."):
        raise UserError(
            name,
            "is Hydra's own setting, which wattsmith does not use",
            "outputs go to output_dir: set output_dir=DIR (and --config-dir DIR for your presets)",
        )
    entry = schema_entry(name)
    if key.startswith("~") and entry is not None and dataclasses.is_dataclass(entry[0]):
        # Hydra accepts it, and the run quietly measures the schema's defaults (e.g. offline batches
        # for `~workload`, where the default is a serving stream): no preset says what they are
        raise UserError(
            name,
            f"'~{name}' drops the group's preset, leaving the schema's bare defaults",
            f"name a preset: {name}=PRESET (`optimize --help` lists them)",
        )
    plus = key[: len(key) - len(key.lstrip("+"))]
    if not plus:
        return
    if entry is None:
        raise UserError(name, f"is not a setting ('{plus}' cannot add one: the settings are fixed)", SPELLING)
    raise UserError(
        name,
        f"exists already: '{plus}' (Hydra's add) has nothing to add",
        f"drop the '{plus}': {name}={value}",
    )
