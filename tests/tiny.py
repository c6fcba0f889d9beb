"""The one tiny model size of the test suite, for tests that need it at import time (parametrize, module
constants); tests that take it as a fixture use ``tiny_model_kwargs`` / ``tiny_encoder`` (tests/conftest.py).

32 px images in 8 px patches (16 patches), width 32, 4 heads, 2 layers: small enough for CPU tests on 2 cores,
large enough that every code path (multi-head attention, several layers, masking) runs. A test that needs another
size derives it from these (``{**TINY, "depth": 3}``) so that the variant is visible at a glance. Plain data and
no crate_mae import: tests/conftest.py loads this module for every session.
"""

from __future__ import annotations

TINY_ENCODER = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)
"""The encoder keywords every architecture shares."""

TINY = {**TINY_ENCODER, "decoder_depth": 2}
"""A tiny CRATE-MAE (``crate_mae_*``): the encoder and a two-layer decoder."""

FAMILY_TINY = {
    "crate_mae": TINY,
    "crate": {**TINY_ENCODER, "num_classes": 5},  # CRATE-MAE's encoder as a classifier
    "crate_supervised": {**TINY_ENCODER, "num_classes": 5},
    "vit_mae": {**TINY, "decoder_embed_dim": 16, "decoder_num_heads": 2},  # a decoder narrower than the encoder
    # the paper's frame (mask tokens in the encoder) feeds the encoder output to the decoder: as wide as it
    "vit_mae_paper": {**TINY, "decoder_embed_dim": 32, "decoder_num_heads": 2},
}
"""The tiny size of each architecture family (see :func:`family`)."""


def family(name: str) -> str:
    """The architecture family of the registered model ``name`` (read off its name, as the registry names them): a
    key of :data:`FAMILY_TINY`."""
    for prefix in ("crate_mae_", "crate_supervised_", "crate_"):
        if name.startswith(prefix):
            return prefix[:-1]
    if name.startswith("vit_mae_"):
        return "vit_mae_paper" if name.endswith("_paper") else "vit_mae"
    raise ValueError(f"no tiny size for {name!r}: add its family to tests/tiny.py")


def tiny_kwargs(name: str) -> dict:
    """Overrides that make the registered preset ``name`` tiny (a fresh dict)."""
    return dict(FAMILY_TINY[family(name)])


def cli_words(kwargs: dict) -> list[str]:
    """``kwargs`` as the command line's positional KEY=VALUE model overrides."""
    return [f"{k}={v}" for k, v in kwargs.items()]


def model_overrides(kwargs: dict) -> str:
    """``kwargs`` without ``img_size`` as the YAML mapping of a run's ``model.overrides=`` (a run takes its image
    size from ``data.img_size``), e.g. ``{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4, decoder_depth: 2}``."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in kwargs.items() if k != "img_size") + "}"
