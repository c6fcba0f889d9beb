"""Deprecated for one release: this module became the :mod:`crate_mae.io` package (``io.format``, ``io.official``,
``io.hub``, ``io.loading``). Its names are still served from here, each with a DeprecationWarning when it is read;
import them from :mod:`crate_mae.io` (``ARCHITECTURES``: :func:`crate_mae.models.registry.architecture_factory`)."""

from __future__ import annotations

import warnings

from . import io
from .models import registry

# The public names this module had; each now lives in crate_mae.io.
_MOVED = (
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CRATE_CLASSIFIERS",
    "POS_TABLES",
    "HUB_PREFIX",
    "CARD_NAME",
    "CheckpointError",
    "save_pretrained",
    "from_pretrained",
    "read_config",
    "build_from_config",
    "create_model",
    "load_model",
    "load_checkpoint",
    "load_encoder",
    "load_weights_into",
    "is_hub_id",
    "parse_hub_id",
    "hub_snapshot",
    "read_state_dict",
    "checkpoint_sha256",
    "resolve_run_dir",
    "weights_file",
    "unwrap_state_dict",
    "detect_format",
)


def __getattr__(name: str):
    if name in _MOVED:
        value, new = getattr(io, name), f"crate_mae.io.{name}"
    elif name == "_load_exact":
        value, new = io.load_exact, "crate_mae.io.load_exact"
    elif name == "ARCHITECTURES":
        value = {a: registry.architecture_factory(a) for a in registry.list_architectures()}
        new = "crate_mae.models.registry.architecture_factory / list_architectures"
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"crate_mae.checkpoint.{name} is deprecated and goes in the next release: use {new}",
        DeprecationWarning,
        stacklevel=2,
    )
    return value
