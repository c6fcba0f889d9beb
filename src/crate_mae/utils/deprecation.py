"""Deprecation aliases for names that moved: a module keeps answering to an old name for one release, warning
(DeprecationWarning) and naming the new home, through a module-level ``__getattr__`` (PEP 562)."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Mapping


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``module`` answering each old name in ``moved`` (``{old: "pkg.mod:new"}``) with the
    object now at ``pkg.mod.new``.

    The new module is imported by name when an old name is first asked for, not when ``module`` is imported: an
    alias may point to a layer above (the engine's pretraining config now lives in ``crate_mae.training``), and the
    deprecated path is the only one that goes up."""

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target, _, new = moved[name].partition(":")
        warnings.warn(
            f"{module}.{name} is deprecated and will be removed in the next release; use {target}.{new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(target), new)

    return __getattr__
