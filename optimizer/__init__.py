"""wattsmith: find the deployment settings with the most useful tokens per joule, and prove it.

Public API: `optimize(cfg) -> RunResult`, `load_recipe(path) -> Engine`, `Engine`.
Imports are lazy so that `import optimizer` stays light and never initializes CUDA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optimizer.backends.base import Engine
    from optimizer.pipeline import optimize
    from optimizer.recipe import load_recipe

__all__ = ["Engine", "load_recipe", "optimize"]


def __getattr__(name: str) -> Any:
    if name == "optimize":
        from optimizer.pipeline import optimize

        return optimize
    if name == "load_recipe":
        from optimizer.recipe import load_recipe

        return load_recipe
    if name == "Engine":
        from optimizer.backends.base import Engine

        return Engine
    raise AttributeError(f"module 'optimizer' has no attribute {name!r}")
