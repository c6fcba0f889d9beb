"""The CRATE classifiers in timm's registry: ``timm.create_model("crate_base", num_classes=10)`` after
``import crate_mae``.

Every ``crate_{tiny,small,base,large}`` (CRATE-MAE's encoder) and ``crate_supervised_{tiny,small,base,large}``
(supervised CRATE) preset of :mod:`crate_mae.models.registry` becomes a timm entry point built with timm's
``build_model_with_cfg``, so timm's own machinery works on it: ``features_only=True`` (through
``forward_intermediates``), ``pretrained_cfg`` (input size, normalisation, first conv, classifier), layer-wise lr
decay through ``group_matcher``, gradient checkpointing.

crate-mae publishes no weights. ``pretrained=True`` therefore needs a local file,
``pretrained_cfg_overlay=dict(file=PATH)``: one of our ``model.safetensors`` (CRATE-MAE, encoder or supervised CRATE),
or an official CRATE-MAE / supervised CRATE state dict; the encoder's weights are taken from it (the classifier head
stays fresh unless the file has one of the same shape).
"""

from __future__ import annotations

import re
from typing import Any

import timm
import torch
from timm.models import build_model_with_cfg

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .io import detect_format
from .models.crate_mae import CrateClassifierBase
from .models.crate_supervised import SupervisedCrate
from .models.crate_supervised import from_official as crate_supervised_from_official
from .models.official import from_official
from .models.registry import list_models, model_defaults, model_factory

NO_WEIGHTS = (
    "crate-mae publishes no pretrained weights for {name}; the CRATE authors' checkpoints (CRATE-MAE-Base, "
    "supervised CRATE) are downloads linked from the Ma-Lab-Berkeley/CRATE README "
    "(https://github.com/Ma-Lab-Berkeley/CRATE; crate-mae README, 'Official weights'). Load a local file "
    "instead: timm.create_model('{name}', pretrained=True, pretrained_cfg_overlay=dict(file='PATH')) with "
    "our model.safetensors or an official CRATE .pth, or crate_mae.load_encoder(PATH)"
)


def pretrained_cfg(name: str) -> dict[str, Any]:
    d = model_defaults(name)
    size = d["img_size"]
    if model_factory(name) is SupervisedCrate:  # its patch embedding is a Linear, not a conv timm could adapt
        return dict(
            url="",
            num_classes=d["num_classes"],
            input_size=(3, size, size),
            pool_size=None,
            crop_pct=0.875,
            interpolation="bicubic",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            first_conv=None,
            classifier="head",
            license="mit",
            source="crate-mae; supervised CRATE of Ma-Lab-Berkeley/CRATE model/crate.py (Yu et al., NeurIPS 2023)",
        )
    return dict(
        url="",
        num_classes=0,
        input_size=(3, size, size),
        pool_size=None,
        crop_pct=0.875,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        first_conv="patch_embed.proj",
        classifier="head",
        license="mit",
        source="crate-mae; architecture of Ma-Lab-Berkeley/CRATE (Pai et al., ICLR 2024)",
    )


def encoder_weights(state_dict: dict[str, torch.Tensor], model: CrateClassifierBase) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: the encoder tensors of a CRATE-MAE (ours or official), CRATE-encoder or
    supervised-CRATE (ours or official) state dict, in ``model``'s key names; a head of another shape is replaced by
    ``model``'s own."""
    state = {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}
    fmt = detect_format(state)
    if fmt == "crate_mae_official":
        state = from_official(state)
    elif fmt == "crate_supervised_official":
        state = crate_supervised_from_official(state)
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    own = model.state_dict()
    for k in [k for k in state if k.startswith("head.")]:
        if k not in own or own[k].shape != state[k].shape:
            del state[k]
    state.update({k: v for k, v in own.items() if k.startswith("head.") and k not in state})
    return state


def _entrypoint(name: str):
    def create(pretrained: bool = False, pretrained_cfg_overlay: dict | None = None, **kwargs) -> CrateClassifierBase:
        if pretrained and not (pretrained_cfg_overlay or {}).get("file"):
            raise ValueError(NO_WEIGHTS.format(name=name))
        kwargs.pop("pretrained_cfg", None)  # ours is authoritative: there is no published weight to describe
        kwargs = {**model_defaults(name), **kwargs}
        cfg = pretrained_cfg(name)
        if pretrained:  # a local file: encoder_weights decides about its head, timm must not drop it first
            cfg["num_classes"] = kwargs.get("num_classes", 0)
        return build_model_with_cfg(
            model_factory(name),
            name,
            pretrained,
            pretrained_cfg=cfg,
            pretrained_cfg_overlay=pretrained_cfg_overlay,
            feature_cfg=dict(feature_cls="getter"),
            pretrained_filter_fn=encoder_weights,
            **kwargs,
        )

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    what = "supervised CRATE" if model_factory(name) is SupervisedCrate else "a CRATE encoder"
    create.__doc__ = f"timm entry point for crate-mae's {name} ({what}, {model_defaults(name)})."
    return create


def register_with_timm() -> list[str]:
    """Register every ``crate_*`` classifier preset (``crate_mae_*`` autoencoders excepted) with timm (once); returns
    their names."""
    names = [n for n in list_models("crate_*") if not n.startswith("crate_mae_")]
    for name in names:
        if name not in timm.list_models(name):
            timm.models.register_model(_entrypoint(name))
    return names


register_with_timm()
