"""Hydra's, YAML's and OmegaConf's errors translated into UserErrors that name the field and the
fix, for optimizer/config/compose.py; and the schema's view of a dotted setting they need."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optimizer.config.presets import group_options
from optimizer.config.run import RunConfig
from optimizer.errors import UserError

SPELLING = "check the spelling; `optimize --show-config` prints every setting"
# space.extra's entries are candidates' settings (optimizer/space.py): backend and batch size at least
EXTRA_EXAMPLE = "space.extra=[{backend: torch, batch_size: 8}]"
# what a null entry of a list setting should have been: the setting's own words, else its type's
ENTRY_MEANINGS = {"space.batch_sizes": "a batch size is a positive integer"}
ENTRY_TYPES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}
# what a setting that cannot be null needs: its own words, else its type's
NULL_NEEDS = {"workload.seed": "a whole number >= 0", "space.batch_sizes": "a list of positive batch sizes"}


@contextlib.contextmanager
def translated(user_dir: Path | None) -> Iterator[None]:
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
    except UnicodeDecodeError:  # a preset file that is not text (a ValueError: not the overrides')
        where = f" in {user_dir}" if user_dir is not None else ""
        raise UserError(
            "--config-dir",
            f"a preset file{where} is not UTF-8 text",
            "presets are YAML files (DIR/<group>/<name>.yaml): replace or remove the binary one",
        ) from None
    except ValueError as exc:  # Hydra raises some override errors outside HydraException
        raise UserError(
            "overrides", first_line(exc), "overrides look like group=preset or a.b=value"
        ) from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "overrides"
        raise UserError(str(key), first_line(exc), "check the value's type and spelling") from None


def use_a_preset(group: str, config_dir: Path | None) -> str:
    where = f" (packaged, and yours in {config_dir})" if config_dir is not None else ""
    return f"use one of {group_options(group, config_dir)}{where}"


def schema_entry(key: str) -> tuple[Any, Any] | None:
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
    entry = schema_entry(key)
    if entry is None or typing.get_origin(entry[0]) is not list:
        return None
    return typing.get_args(entry[0])[0]


def _list_example(key: str) -> str:
    """An override giving the list setting `key` valid entries: its default's first two, else
    sample values of its entry type."""
    kind = _list_entries(key)
    if typing.get_origin(kind) is dict:
        return EXTRA_EXAMPLE
    entry = schema_entry(key)
    default: list[Any] = entry[1] if entry and entry[1] else []
    samples: dict[Any, list[Any]] = {int: [1, 2], float: [1.0, 2.0]}
    values = default[:2] or samples.get(kind, ["a", "b"])
    return f"{key}=[{','.join(literal(v) for v in values)}]"


def literal(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def first_line(exc: BaseException) -> str:
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
        return UserError(group, problem, use_a_preset(group, config_dir))
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
    if merging and schema_entry(field) is None:  # full_key can be a list index (`0`, `a.b[0]`)
        field = merging.group(1).lstrip("+~")
    not_bool = re.search(r"Value '(.*)' is not a valid bool", text)
    if not_bool:
        example = "[true,false]" if _list_entries(field) is bool else "true"
        return UserError(
            field, f"'{not_bool.group(1)}' is not a valid bool", f"use true or false, e.g. {field}={example}"
        )
    null = re.search(r"Invalid type assigned: NoneType is not a subclass of (\w+)", text)
    listed = re.sub(r"\[\d+\]$", "", field)  # a preset's entry is named by its index
    if null and _list_entries(listed) is not None:  # `[null]`: not a group, as `mapping` below says
        kind = null.group(1)
        meaning = ENTRY_MEANINGS.get(listed, f"each entry is {ENTRY_TYPES.get(kind, kind)}")
        where = re.search(r"^In '([^']+)'", text)
        source = f" (in the preset {where.group(1)})" if where else ""
        return UserError(listed, f"has a null entry{source}: {meaning}", f"e.g. {_list_example(listed)}")
    if re.search(r"is not Optional|Incompatible value 'None' for field", text):  # a preset's words
        where = re.search(r"^In '([^']+)'", text)
        return _null_error(field, where.group(1) if where else None)
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


def _null_error(field: str, preset: str | None) -> UserError:
    """A setting given null that has no null: what it needs and a value that would do."""
    kind, default = schema_entry(field) or (None, None)
    if dataclasses.is_dataclass(kind):
        needs, example = "a group of settings", f"{field}.<field>=value"
    elif typing.get_origin(kind) is list:
        entries = _list_entries(field)
        mapping = typing.get_origin(entries) is dict
        each = (
            "a mapping of settings"
            if mapping
            else ENTRY_TYPES.get(getattr(entries, "__name__", ""), "a value")
        )
        needs, example = f"a list, each entry {each}", _list_example(field)
    else:
        needs = ENTRY_TYPES.get(getattr(kind, "__name__", ""), "a value")
        example = f"{field}={'<value>' if default is None else literal(default)}"
    needs = NULL_NEEDS.get(field, needs)
    if preset is None:
        return UserError(
            field,
            f"cannot be null: it needs {needs}",
            f"e.g. {example}, or drop the override to keep its default",
        )
    return UserError(
        field,
        f"is null in the preset {preset}: it needs {needs}",
        f"give it a value there (as {example} would), or delete that line for its default",
    )


def _yaml_error(exc: Exception) -> UserError:
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return UserError("config_dir", f"a preset is not valid YAML: {first_line(exc)}", "fix its syntax")
    file = Path(mark.name)
    problem = getattr(exc, "problem", None) or first_line(exc)
    return UserError(
        file.parent.name,
        f"the preset {file} is not valid YAML: {problem} (line {mark.line + 1})",
        "fix the YAML syntax of that file",
    )
