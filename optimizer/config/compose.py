"""Hydra composition of conf/ into a validated RunConfig, and Hydra's errors translated into
UserErrors that name the field and the fix.

Search path: the user's config directory, when given, is Hydra's main directory and the packaged
conf/ is appended to it through `hydra.searchpath`. Hydra takes a preset from the first
directory that has it, so the user's presets win and the packaged ones stay the fallback.
Hydra looks the primary config up before it reads `hydra.searchpath`, so the packaged
conf/config.yaml is also stored in the ConfigStore (always on the search path) under PRIMARY:
the primary config is wattsmith's own whatever the user's directory holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimizer.config.presets import CONF_DIR, GROUPS, check_config_dir, expand_model_shorthand, group_options
from optimizer.config.run import RunConfig, cache_dir_from
from optimizer.config.workload import warn_overrides_a_trace_ignores
from optimizer.errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig

PRIMARY = "wattsmith"
SPELLING = "check the spelling; `optimize --show-config` prints every setting"
# space.extra's entries are candidates' settings (optimizer/space.py): backend and batch size at least
EXTRA_EXAMPLE = "space.extra=[{backend: torch, batch_size: 8}]"


def register_configs() -> None:
    """Store the schema, so that every conf/ group is validated against it while composing, and
    the packaged primary config (conf/config.yaml: the default preset of each group)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(name=PRIMARY, node=OmegaConf.load(CONF_DIR / "config.yaml"))


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
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    _check_override_syntax(overrides)
    # conf/config.yaml reads WATTSMITH_CACHE: name it when it is empty
    if "cache_dir" not in _given(overrides):
        cache_dir_from(os.environ)
    user_dir = check_config_dir(config_dir) if config_dir is not None else None
    _check_group_values(overrides, user_dir)
    main, search = (CONF_DIR, []) if user_dir is None else (user_dir, [_searchpath(CONF_DIR)])
    GlobalHydra.instance().clear()
    try:
        with _translated(user_dir), initialize_config_dir(config_dir=str(main), version_base=None):
            return compose(PRIMARY, overrides=[*expand_model_shorthand(overrides, user_dir), *search])
    finally:
        GlobalHydra.instance().clear()


def run_config_from(
    settings: DictConfig, overrides: Sequence[str] = (), config_dir: str | Path | None = None
) -> RunConfig:
    """The RunConfig of composed settings: each config class validates its fields here.
    `overrides` and `config_dir`: those the settings were composed with (an output_dir among the
    overrides is kept as given; the directory goes with the target, whose detection reads the
    preset of a detected GPU's name from it)."""
    run = validated(settings)
    assert isinstance(run, RunConfig)
    given = _given(overrides)
    if "output_dir" not in given:
        run.composed_output_dir = run.output_dir
    warn_overrides_a_trace_ignores(run.workload, given)
    if config_dir is not None:
        run.target.config_dir = str(check_config_dir(config_dir))
    return run


def validated(node: DictConfig) -> Any:
    """Composed settings, or one group of them (`settings.target`, validated alone), as their
    config class: validation errors raised as UserErrors naming the field."""
    from omegaconf import OmegaConf

    with _translated(None):
        return OmegaConf.to_object(node)


def _given(overrides: Sequence[str]) -> set[str]:
    return {item.partition("=")[0].lstrip("+~") for item in overrides}


@contextlib.contextmanager
def _translated(user_dir: Path | None) -> Iterator[None]:
    """Hydra's, YAML's and OmegaConf's errors as UserErrors naming the field."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except UserError:
        raise
    except HydraException as exc:
        raise _hydra_error(exc, user_dir) from None
    except yaml.YAMLError as exc:  # a preset file that is not YAML
        raise _yaml_error(exc) from None
    except ValueError as exc:  # Hydra raises some override errors outside HydraException
        raise UserError(
            "overrides", _first_line(exc), "overrides look like group=preset or a.b=value"
        ) from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "overrides"
        raise UserError(str(key), _first_line(exc), "check the value's type and spelling") from None


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
                key, f"cannot parse '{item}': {_first_line(exc)}", "check brackets and quotes"
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
    quietly measures the schema's bare defaults: one name is what a group takes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for item in overrides:
        group, _, text = item.partition("=")
        if group not in GROUPS:
            continue
        value = parser.parse_overrides([item])[0].value()
        path = " or a path: model=/path/to/hf-dir" if group == "model" else ""
        if value is None:
            raise UserError(group, "is null: it needs a preset name", _use_a_preset(group, user_dir) + path)
        if isinstance(value, list):
            raise UserError(
                group,
                f"'{text}' is a list: it takes one preset name",
                f"{_use_a_preset(group, user_dir)}{path} (one name, no brackets)",
            )


def _use_a_preset(group: str, config_dir: Path | None) -> str:
    where = f" (packaged, and yours in {config_dir})" if config_dir is not None else ""
    return f"use one of {group_options(group, config_dir)}{where}"


def _bare_word(word: str, overrides: Sequence[str]) -> UserError:
    """The error for a word without `=`: a key without its value, or a misspelt `verify`, a recipe
    or a model path given as `optimize` reads only key=value."""
    not_setting = "is not a key=value setting"
    if word.endswith((".yaml", ".yml")):
        return UserError(word, not_setting, f"to re-measure a recipe: optimize verify {word}")
    if difflib.get_close_matches(word.lower(), ["verify"], n=1, cutoff=0.7):
        recipe = next((o for o in overrides if o.endswith((".yaml", ".yml"))), "RECIPE")
        return UserError(word, "is not a command", f"did you mean: optimize verify {recipe}")
    if word.endswith(".gguf") or Path(word).expanduser().is_dir():
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
    entry = _schema_entry(name)
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


def _schema_entry(key: str) -> tuple[Any, Any] | None:
    """The type and the default of a dotted setting (or group) of RunConfig; None when there is none."""
    kind: Any = RunConfig
    default: Any = None
    for name in key.split("."):
        fields = {
            f.name: f
            for f in (dataclasses.fields(kind) if dataclasses.is_dataclass(kind) else ())
            if not f.metadata.get("omegaconf_ignore")  # Hydra's schema leaves it out: no setting
        }
        if name not in fields:
            return None
        found = fields[name]
        kind = typing.get_type_hints(kind)[name]
        factory = found.default_factory
        default = factory() if factory is not dataclasses.MISSING else found.default
    return kind, default


def _list_entries(key: str) -> Any:
    """The entry type of a list setting, else None."""
    entry = _schema_entry(key)
    if entry is None or typing.get_origin(entry[0]) is not list:
        return None
    return typing.get_args(entry[0])[0]


def _list_example(key: str) -> str:
    """An override giving the list setting `key` valid entries: its default's first two, else
    sample values of its entry type."""
    kind = _list_entries(key)
    if typing.get_origin(kind) is dict:
        return EXTRA_EXAMPLE
    entry = _schema_entry(key)
    default: list[Any] = entry[1] if entry and entry[1] else []
    samples: dict[Any, list[Any]] = {int: [1, 2], float: [1.0, 2.0]}
    values = default[:2] or samples.get(kind, ["a", "b"])
    return f"{key}=[{','.join(_literal(v) for v in values)}]"


def _literal(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _hydra_error(exc: Exception, config_dir: Path | None = None) -> UserError:
    causes = []
    current: BaseException | None = exc
    while current is not None:
        causes.append(str(current).strip())
        current = current.__cause__
    text = " ".join(c for c in causes if c)
    missing = re.search(r"Could not find '([^/']+)/([^']*)'", text)  # `group=`: an empty name
    if missing:
        group, name = missing.groups()
        problem = f"no preset named '{name}'" if name.strip() else "needs a preset name"
        return UserError(group, problem, _use_a_preset(group, config_dir))
    override = re.search(r"Could not (?:override|append to) '([^']+)'", text)
    key = re.search(r"full_key: (\S+)", text) or override
    preset = re.search(r"^In '([^']+)': ConfigKeyError", text)
    named = override or (key if preset else None)
    if named and "not in" in text:
        return UserError(
            named.group(1),
            "is not a setting" + (f" (set by the preset {preset.group(1)})" if preset else ""),
            SPELLING,
        )
    field = key.group(1) if key else "overrides"
    merging = re.search(r"Error merging override ([^=\s]+)=", text)
    if merging and _schema_entry(field) is None:  # full_key can be a list index (`0`, `a.b[0]`)
        field = merging.group(1).lstrip("+~")
    not_bool = re.search(r"Value '(.*)' is not a valid bool", text)
    if not_bool:
        example = "[true,false]" if _list_entries(field) is bool else "true"
        return UserError(
            field, f"'{not_bool.group(1)}' is not a valid bool", f"use true or false, e.g. {field}={example}"
        )
    converted = re.search(r"(Value '.*' of type '\w+' could not be converted to \w+)", text)
    if converted:
        return UserError(
            field,
            converted.group(1),
            "give a value of that type; `optimize --show-config` shows the current one",
        )
    if typing.get_origin(_list_entries(field)) is dict:
        return UserError(
            field,
            "is a list of mappings, each one candidate's settings",
            f"e.g. '{EXTRA_EXAMPLE}' (quoted in a shell)",
        )
    if re.search(r"Invalid value assigned: \w+ is not a ListConfig", text):
        return UserError(
            field, "is a list", f"give one in brackets, e.g. {_list_example(field)} (quote it in a shell)"
        )
    mapping = re.search(r"(?:Invalid type assigned|Merge error): (\w+) is not a subclass of (\w+)", text)
    in_preset = re.search(r"^In '([^'/]+)/([^']+)'", text)
    if mapping and in_preset:
        group, name = in_preset.groups()
        return UserError(
            group,
            f"the preset {group}/{name} is a {mapping.group(1)}, not a mapping of settings",
            "write it as `field: value` lines, like the packaged presets in optimizer/conf/",
        )
    if mapping:
        return UserError(
            field,
            f"is a group of settings ({mapping.group(2)}), not a single value",
            f"set its fields, e.g. {field}.<field>=value; `optimize --show-config` lists them",
        )
    return UserError(
        field,
        " ".join(text.split())[:300],
        "overrides look like group=preset or a.b=value; `optimize --help` lists the groups",
    )


def _yaml_error(exc: Exception) -> UserError:
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return UserError("config_dir", f"a preset is not valid YAML: {_first_line(exc)}", "fix its syntax")
    file = Path(mark.name)
    problem = getattr(exc, "problem", None) or _first_line(exc)
    return UserError(
        file.parent.name,
        f"the preset {file} is not valid YAML: {problem} (line {mark.line + 1})",
        "fix the YAML syntax of that file",
    )
