"""Deprecated for one release: the Hub (reading and writing) is :mod:`crate_mae.io.hub`. Its names are still served
from here, each with a DeprecationWarning when it is read."""

from __future__ import annotations

import warnings

from .io import hub

# The public names this module had (its own and the ones it imported from crate_mae.checkpoint).
_MOVED = (
    "OFFICIAL_SOURCES",
    "save_for_hub",
    "push_to_hub",
    "model_card",
    "CARD_NAME",
    "WEIGHTS_NAME",
    "parse_hub_id",
    "save_pretrained",
)


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"crate_mae.hub.{name} is deprecated and goes in the next release: use crate_mae.io.{name}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(hub, name)
