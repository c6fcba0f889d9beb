"""crate-mae: CRATE-MAE white-box masked autoencoders, trained, evaluated and dissected."""

import warnings

from . import io, timm_models  # noqa: F401  (timm_models registers crate_* with timm)
from ._version import __version__
from .io import create_model, from_pretrained, load_checkpoint, load_encoder, save_pretrained
from .models import list_models

__all__ = [
    "__version__",
    "io",
    "create_model",
    "list_models",
    "from_pretrained",
    "load_checkpoint",
    "load_encoder",
    "save_pretrained",
]


def __getattr__(name: str):
    # Deprecated for one release: crate_mae.hub and crate_mae.checkpoint, the modules that became crate_mae.io.
    # (`import crate_mae.hub` / `crate_mae.checkpoint` load the shim modules of those names, which warn per name.)
    if name in ("hub", "checkpoint"):
        new = "crate_mae.io.hub" if name == "hub" else "crate_mae.io"
        warnings.warn(
            f"crate_mae.{name} is deprecated and goes in the next release: use {new}", DeprecationWarning, stacklevel=2
        )
        return io.hub if name == "hub" else io
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
