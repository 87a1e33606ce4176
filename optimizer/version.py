"""The tool's own version: what a recipe and a report say made them."""

from __future__ import annotations

from importlib import metadata


def tool_version() -> str:
    """The installed `wattsmith` distribution's version; "0+unknown" when it is not installed."""
    try:
        return metadata.version("wattsmith")
    except metadata.PackageNotFoundError:
        return "0+unknown"
