"""Optional dependencies (``pip install 'crate-mae[EXTRA]'``), imported only by the features that need them."""

from __future__ import annotations

import importlib
from types import ModuleType

# extra -> what pip installs for it (kept in step with pyproject.toml's [project.optional-dependencies])
EXTRAS = {"shards": ("webdataset", "wids"), "hub": ("huggingface_hub",)}


class MissingExtraError(ImportError, RuntimeError):
    """An optional package is not installed. An ImportError for Python callers; a RuntimeError so that the
    command line prints it as one line instead of a traceback."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{purpose} needs the optional package {module.split('.')[0]!r}, which is not "
            f"installed: pip install 'crate-mae[{extra}]'"
        ) from e
