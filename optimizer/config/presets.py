"""Where presets come from: the packaged conf/ and, searched first, the user's config directory.

The user's directory (`optimize --config-dir DIR`, or WATTSMITH_CONFIG_DIR) holds group folders
like the packaged ones (`model/`, `space/`, `workload/` ...). A user preset with the name of a
packaged one replaces it; the packaged presets stay the fallback. The primary config
(`conf/config.yaml`, which names the default preset of each group) is always the packaged one:
only the group folders of the user's directory are read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from optimizer.errors import UserError

# Packaged presets: inside the package, so that a wheel carries them (pyproject package-data).
CONF_DIR = Path(__file__).parent.parent / "conf"
CONFIG_DIR_ENV = "WATTSMITH_CONFIG_DIR"
GROUPS = ("model", "target", "space", "search", "workload", "quality", "accounting", "launcher")


@dataclass(frozen=True)
class Preset:
    """One preset of a group. `user`: from the user's config directory; `replaces_packaged`: a
    packaged preset of the same name exists and is hidden by it."""

    name: str
    user: bool = False
    replaces_packaged: bool = False


def check_config_dir(path: str | Path, field: str = "config_dir") -> Path:
    """The user's config directory as an absolute path, or a UserError naming `field` (the flag,
    the environment variable or the API argument it came from) and the fix."""
    text = str(path).strip()
    unset = f" or unset {CONFIG_DIR_ENV}" if field == CONFIG_DIR_ENV else ""
    fix = f"point {field} at a folder of preset groups (e.g. conf/ holding conf/workload/chat.yaml){unset}"
    if not text:
        raise UserError(field, "is empty", fix)
    folder = Path(text).expanduser().resolve()
    if not folder.exists():
        raise UserError(field, f"{folder} does not exist", fix)
    if not folder.is_dir():
        raise UserError(field, f"{folder} is not a directory", fix)
    return folder


def config_dir_from(flag: str | None, environ: Mapping[str, str]) -> Path | None:
    """The user's config directory of a command: the flag wins over the environment variable; an
    empty variable counts as unset."""
    if flag is not None:
        return check_config_dir(flag, "--config-dir")
    value = environ.get(CONFIG_DIR_ENV, "")
    return check_config_dir(value, CONFIG_DIR_ENV) if value.strip() else None


def presets(group: str, config_dir: Path | None = None) -> list[Preset]:
    """The presets of conf/<group>/, the user's included (marked), sorted by name."""
    packaged = _names(CONF_DIR / group)
    user = _names(config_dir / group) if config_dir is not None else set()
    return [
        Preset(name, user=name in user, replaces_packaged=name in user and name in packaged)
        for name in sorted(packaged | user)
    ]


def group_options(group: str, config_dir: Path | None = None) -> list[str]:
    """Names of the presets of a group, packaged and the user's."""
    return [p.name for p in presets(group, config_dir)]


def expand_model_shorthand(overrides: Sequence[str], config_dir: Path | None = None) -> list[str]:
    """`model=/some/dir` (not a preset name, packaged or the user's) means `model.source=/some/dir`."""
    known = set(group_options("model", config_dir))
    expanded = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key == "model" and value not in known:
            expanded.append(f"model.source={value}")
        else:
            expanded.append(item)
    return expanded


def _names(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.yaml") if p.is_file()}
