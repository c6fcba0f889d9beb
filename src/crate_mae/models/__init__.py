"""CRATE-MAE, supervised CRATE and ViT-MAE networks, each with its frozen config dataclass."""

import warnings

from .base import Capabilities, ModelConfig
from .crate_mae import (
    CrateBlock,
    CrateDecoder,
    CrateDecoderBlock,
    CrateEncoder,
    CrateEncoderConfig,
    CrateMAE,
    CrateMAEConfig,
)
from .crate_supervised import SupervisedCrate, SupervisedCrateConfig
from .layers import ISTA, MSSA, InverseISTA, sincos_pos_embed
from .masking import patchify, random_masking, unpatchify
from .outputs import Intermediates, LayerTrace, MAEOutput
from .registry import (
    architecture_factory,
    build_model,
    is_registered,
    list_architectures,
    list_models,
    model_defaults,
    register_model,
)
from .vit_mae import MAEViTClassifier, ViTConfig, ViTMAE, ViTMAEConfig, vit_classifier

__all__ = [
    "CrateBlock",
    "CrateDecoder",
    "CrateDecoderBlock",
    "CrateEncoder",
    "CrateMAE",
    "ISTA",
    "MSSA",
    "InverseISTA",
    "sincos_pos_embed",
    "patchify",
    "random_masking",
    "unpatchify",
    "Intermediates",
    "LayerTrace",
    "MAEOutput",
    "architecture_factory",
    "build_model",
    "is_registered",
    "list_architectures",
    "list_models",
    "model_defaults",
    "register_model",
    "SupervisedCrate",
    "ViTMAE",
    "Capabilities",
    "ModelConfig",
    "CrateEncoderConfig",
    "CrateMAEConfig",
    "SupervisedCrateConfig",
    "ViTMAEConfig",
    "ViTConfig",
    "MAEViTClassifier",
    "vit_classifier",
]


def __getattr__(name: str):
    # Deprecated for one release: crate_mae.models.create_model is now build_model; crate_mae.create_model is the one
    # create_model (build_model, plus weights with pretrained=).
    if name == "create_model":
        warnings.warn(
            "crate_mae.models.create_model is deprecated: use crate_mae.models.build_model (or "
            "crate_mae.create_model, which also loads weights with pretrained=)",
            DeprecationWarning,
            stacklevel=2,
        )
        return build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
