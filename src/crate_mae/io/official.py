"""Official weights: recognising a state dict's layout and building the model it holds.

- official CRATE-MAE (github Ma-Lab-Berkeley/CRATE ``model/crate_ae``): keys ``blocks.i.layers.0.0.fn.qkv.weight`` ...;
- official supervised CRATE (the same repository's ``model/crate.py``): ``transformer.layers.i.0.fn.qkv.weight`` ...;
- facebookresearch/mae (``models_mae.py``) and the CRATE repository's ``mae_vit_*``, with or without the decoder.

Architecture is inferred from tensor shapes; heads cannot be, so they come from the official preset for the width
unless ``num_heads=`` is given. ISTA's eta / lambda are not stored in official weights: 0.1 / 0.5 unless overridden
(supervised CRATE: 0.1 / 0.1, its code's fixed values). Reading the files is :mod:`crate_mae.io.format`.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..models.crate_mae import CrateMAE
from ..models.crate_supervised import SupervisedCrate
from ..models.crate_supervised import from_official as crate_supervised_from_official
from ..models.crate_supervised import is_official as is_crate_supervised_official
from ..models.crate_supervised import kwargs_from_official as crate_supervised_kwargs_from_official
from ..models.layers import sincos_pos_embed
from ..models.official import from_official
from ..models.official import kwargs_from_official as crate_kwargs_from_official
from ..models.registry import find_preset, model_defaults
from ..models.vit_mae import ViTMAE
from ..models.vit_mae import kwargs_from_official as vit_kwargs_from_official
from .format import CONFIG_NAME, CheckpointError, load_exact

POS_TABLES = ("pos_embed", "decoder_pos_embed")


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    """The layout of a state dict: ``crate_mae_official``, ``crate_supervised_official``, ``vit_mae_official``,
    ``ours`` (our key names) or ``unknown``."""
    if any(re.match(r"blocks\.\d+\.layers\.0\.0\.fn\.qkv\.weight$", k) for k in state):
        return "crate_mae_official"
    if is_crate_supervised_official(state):
        return "crate_supervised_official"
    if any(k.startswith("encoder.blocks.") or re.match(r"blocks\.\d+\.ista\.", k) for k in state):
        return "ours"
    if any(re.match(r"blocks\.\d+\.mlp\.fc1\.weight$", k) for k in state):
        return "vit_mae_official"
    return "unknown"


def model_from_official(state: Mapping[str, torch.Tensor], overrides: Mapping[str, Any], where: str) -> nn.Module:
    """The model an official state dict (unwrapped, ``module.`` stripped) holds, with its weights, in the mode it was
    built in; ``overrides`` are constructor keywords that win over what the shapes say. A state dict in our key
    names (which needs its ``config.json``) or in no known layout is a CheckpointError naming ``where``. Warnings
    point at the caller of the function that called this one (:func:`crate_mae.io.load_checkpoint`)."""
    overrides = dict(overrides)
    fmt = detect_format(state)
    model: CrateMAE | SupervisedCrate | ViTMAE
    if fmt == "crate_mae_official":
        model = _build_crate_official(state, overrides)
        load_exact(model, from_official(state), where)
    elif fmt == "crate_supervised_official":
        model = _build_crate_supervised_official(state, overrides, where)
        load_exact(model, crate_supervised_from_official(state), where)
    elif fmt == "vit_mae_official":
        model = _build_vit_official(state, overrides, where)
        has_decoder = any(k.startswith("decoder_blocks.") for k in state)
        unused = POS_TABLES + (("decoder_embed.weight", "decoder_embed.bias") if model.mask_tokens_in_encoder else ())
        load_exact(
            model,
            {k: v for k, v in state.items() if k not in unused},
            where,
            allow_missing_prefixes=() if has_decoder else ("decoder_", "mask_token"),
        )
        if not has_decoder:
            warnings.warn(
                f"{where} has no decoder: encoder weights loaded, decoder randomly initialised "
                "(fine for features, probing and fine-tuning; not for reconstruction)",
                stacklevel=3,
            )
        model.provenance["decoder_loaded"] = has_decoder
    elif fmt == "ours":
        raise CheckpointError(
            f"{where} uses our key names but comes without {CONFIG_NAME}; load the directory "
            "written by save_pretrained instead"
        )
    else:
        raise CheckpointError(f"cannot recognise the checkpoint format of {where}: first keys {list(state)[:6]}")
    _check_pos_tables(state, model, where)
    return model


# -- official CRATE-MAE ----------------------------------------------------------------------------------------------
def _build_crate_official(state: Mapping[str, torch.Tensor], overrides: dict) -> CrateMAE:
    cfg = crate_kwargs_from_official(state)
    d = cfg["embed_dim"]
    if "num_heads" not in overrides:
        cfg["num_heads"] = _preset_heads(CrateMAE, d)
    cfg = {**cfg, **overrides}
    model = CrateMAE(**cfg)
    model.model_name = find_preset(CrateMAE, embed_dim=d, patch_size=cfg["patch_size"])
    return model


# -- official supervised CRATE ------------------------------------------------------------------------------------
def _build_crate_supervised_official(state: Mapping[str, torch.Tensor], overrides: dict, where: str) -> SupervisedCrate:
    """Shapes give width, patch, depth, classes and image size (``in_chans`` / ``patch_size`` / ``img_size`` may be
    given where the shapes are ambiguous); heads come from the preset of that width unless ``num_heads=``."""
    shape_keys = {k: overrides[k] for k in ("in_chans", "patch_size", "img_size") if k in overrides}
    try:
        cfg = crate_supervised_kwargs_from_official(state, **shape_keys)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    d = cfg["embed_dim"]
    if "num_heads" not in overrides:
        cfg["num_heads"] = _preset_heads(SupervisedCrate, d)
    cfg = {**cfg, **overrides}
    try:
        model = SupervisedCrate(**cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    model.model_name = find_preset(SupervisedCrate, embed_dim=d, patch_size=cfg["patch_size"])
    return model


def _preset_heads(factory: type, width: int) -> int:
    name = find_preset(factory, embed_dim=width)
    if name is None:
        raise CheckpointError(f"cannot infer num_heads for width {width} (not an official preset); pass num_heads=")
    return model_defaults(name)["num_heads"]


# -- facebookresearch/mae and the CRATE repository's ViT-MAE ------------------------------------------------------
def _build_vit_official(state: Mapping[str, torch.Tensor], overrides: dict, where: str) -> ViTMAE:
    """facebookresearch/mae and the CRATE repo's ``mae_vit_*`` share key names; ``mask_tokens_in_encoder`` says which
    frame the weights were trained in (default: facebookresearch/mae's visible-only encoder)."""
    cfg = vit_kwargs_from_official(state)
    d = cfg["embed_dim"]
    if "num_heads" not in overrides:
        cfg["num_heads"] = _preset_heads(ViTMAE, d)
    dd = cfg.get("decoder_embed_dim", 512)
    if "decoder_num_heads" not in overrides:
        if dd % 16:
            raise CheckpointError(f"cannot infer decoder_num_heads for decoder width {dd}; pass decoder_num_heads=")
        cfg["decoder_num_heads"] = 16  # every official MAE / CRATE-repo ViT-MAE decoder
    if (
        "mask_tokens_in_encoder" not in overrides
        and not cfg["qkv_bias"]
        and dd == d
        and "decoder_blocks.0.attn.qkv.weight" in state
    ):
        warnings.warn(
            f"{where} looks like the CRATE repo's ViT-MAE baseline (no qkv bias, decoder as wide as the "
            "encoder); it is loaded in facebookresearch/mae's visible-only frame. If it was trained by the "
            "CRATE repo, pass mask_tokens_in_encoder=True",
            stacklevel=4,
        )
    return ViTMAE(**{**cfg, **overrides})


def _check_pos_tables(state: Mapping[str, torch.Tensor], model: nn.Module, where: str) -> None:
    """Official checkpoints store frozen sin-cos tables; we recompute them. Say so if a stored one differs."""
    for key in POS_TABLES:
        if key not in state:
            continue
        table = state[key].float()
        h = w = int(round((table.shape[1] - 1) ** 0.5))
        expected = sincos_pos_embed(table.shape[-1], (h, w)).unsqueeze(0)
        if table.shape != expected.shape or not torch.allclose(table, expected, atol=1e-4):
            warnings.warn(
                f"{where}: stored {key} is not the fixed 2-D sin-cos table (learned?); it is ignored and "
                "the sin-cos table is used",
                stacklevel=4,
            )
