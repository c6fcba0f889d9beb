"""The one registry of models: the preset table (``build_model("crate_mae_base", **overrides)``, timm-style) and the
architecture table (the ``architecture`` a ``config.json`` names -> the class that builds it). Checkpoint conversion
reads heads and preset names off the presets too (heads cannot be read off square weight matrices).

Weights are not loaded here: :func:`crate_mae.create_model` (``crate_mae.io``) is ``build_model`` plus
``pretrained=``."""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import fields
from typing import Any, Callable

import torch.nn as nn

from .base import Capabilities, ModelClass
from .crate_mae import CrateEncoder, CrateMAE
from .crate_supervised import SupervisedCrate
from .vit_mae import MAEViTClassifier, ViTMAE

_MODELS: dict[str, ModelClass] = {}
_DEFAULTS: dict[str, dict] = {}
# config.json's "architecture" -> what builds it (the constructor keywords are the rest of config.json).
_ARCHITECTURES: dict[str, ModelClass] = {
    cls.config_class.architecture: cls for cls in (CrateMAE, CrateEncoder, ViTMAE, MAEViTClassifier, SupervisedCrate)
}


def register_model(name: str, factory: ModelClass, **defaults) -> None:
    _MODELS[name] = factory
    _DEFAULTS[name] = defaults


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_defaults(name: str) -> dict:
    """The preset's constructor keywords (a copy)."""
    _check_name(name)
    return dict(_DEFAULTS[name])


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered preset."""
    return name in _MODELS


def model_factory(name: str) -> ModelClass:
    """The class (or function) that builds the preset ``name``."""
    _check_name(name)
    return _MODELS[name]


def model_config_fields(name: str) -> dict[str, Any]:
    """The constructor keywords of the preset's architecture (its config dataclass's fields) and their defaults."""
    _check_name(name)
    return {f.name: f.default for f in fields(_MODELS[name].config_class)}


def find_preset(factory: Callable[..., nn.Module], **match) -> str | None:
    """The first preset built by ``factory`` whose keywords include ``match`` (e.g. ``embed_dim=768``), or None."""
    return next((n for n in _MODELS if _MODELS[n] is factory and match.items() <= _DEFAULTS[n].items()), None)


def list_architectures() -> list[str]:
    """The architecture names a ``config.json`` may give (``crate_mae``, ``crate``, ...)."""
    return sorted(_ARCHITECTURES)


def architecture_factory(architecture: str) -> ModelClass:
    """The class that builds ``architecture``; ValueError for an unknown one."""
    if architecture not in _ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {list_architectures()}")
    return _ARCHITECTURES[architecture]


def build_model(name: str, **overrides) -> nn.Module:
    """Build a registered model at random init; keyword arguments override the preset (weights:
    :func:`crate_mae.create_model` with ``pretrained=``)."""
    _check_name(name)
    kwargs = {**_DEFAULTS[name], **overrides}
    try:
        model = _MODELS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad argument for model {name!r}: {e}") from None
    assert isinstance(model, Capabilities)  # every registered class keeps the model contract
    model.model_name = name
    return model


def _check_name(name: str) -> None:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")


def _register_presets() -> None:
    crate_sizes = {  # width, heads, encoder depth = decoder depth (Ma-Lab-Berkeley/CRATE mae_crate_*)
        "tiny": (384, 6, 12),
        "small": (576, 12, 12),
        "base": (768, 12, 12),
        "large": (1024, 16, 24),
    }
    for size, (d, h, depth) in crate_sizes.items():
        register_model(
            f"crate_mae_{size}",
            CrateMAE,
            img_size=224,
            patch_size=16,
            embed_dim=d,
            depth=depth,
            num_heads=h,
            decoder_depth=depth,
        )
        register_model(
            f"crate_{size}", CrateEncoder, img_size=224, patch_size=16, embed_dim=d, depth=depth, num_heads=h
        )
        # Supervised CRATE (Ma-Lab-Berkeley/CRATE model/crate.py CRATE_*): the same widths, heads and depths, an
        # ImageNet-1K classifier; its own name, never crate_* (that is CRATE-MAE's encoder).
        register_model(
            f"crate_supervised_{size}",
            SupervisedCrate,
            img_size=224,
            patch_size=16,
            embed_dim=d,
            depth=depth,
            num_heads=h,
            num_classes=1000,
        )
    vit_sizes = {  # facebookresearch/mae mae_vit_*: 512-wide, 8-layer, 16-head decoder
        "base": (768, 12, 12, 16),
        "large": (1024, 24, 16, 16),
        "huge": (1280, 32, 16, 14),
    }
    for size, (d, depth, h, p) in vit_sizes.items():
        register_model(
            f"vit_mae_{size}",
            ViTMAE,
            img_size=224,
            patch_size=p,
            embed_dim=d,
            depth=depth,
            num_heads=h,
            decoder_embed_dim=512,
            decoder_depth=8,
            decoder_num_heads=16,
            mlp_ratio=4.0,
        )
    # The paper's ViT-MAE baseline, Ma-Lab-Berkeley/CRATE crate_ae.py mae_vit_*: timm blocks without qkv bias in
    # CRATE-MAE's frame (mask tokens in the encoder), an 8-layer 16-head decoder as wide as the encoder.
    # The CRATE repo has no mae_vit_small; "small" is the ViT-S encoder in the same frame (the book's 47.6M
    # ViT-MAE-S has a 512-wide decoder, which this frame cannot hold).
    paper_sizes = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
    for size, (d, depth, h) in paper_sizes.items():
        register_model(
            f"vit_mae_{size}_paper",
            ViTMAE,
            img_size=224,
            patch_size=16,
            embed_dim=d,
            depth=depth,
            num_heads=h,
            decoder_embed_dim=d,
            decoder_depth=8,
            decoder_num_heads=16,
            mlp_ratio=4.0,
            qkv_bias=False,
            mask_tokens_in_encoder=True,
        )


_register_presets()


def __getattr__(name: str):
    # Deprecated for one release: the models-level builder was create_model, a name now kept for crate_mae.create_model.
    if name == "create_model":
        warnings.warn(
            "crate_mae.models.registry.create_model is deprecated: use build_model (or "
            "crate_mae.create_model for weights too)",
            DeprecationWarning,
            stacklevel=2,
        )
        return build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
