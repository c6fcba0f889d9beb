"""CRATE-MAE, supervised CRATE and ViT-MAE networks, each with its frozen config dataclass."""

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
from .registry import create_model, list_models, model_defaults, register_model
from .vit_mae import MAEViTClassifier, ViTConfig, ViTMAE, ViTMAEConfig, vit_classifier

__all__ = [
    "CrateBlock", "CrateDecoder", "CrateDecoderBlock", "CrateEncoder", "CrateMAE", "ISTA", "MSSA", "InverseISTA",
    "sincos_pos_embed", "patchify", "random_masking", "unpatchify", "Intermediates", "LayerTrace", "MAEOutput",
    "create_model", "list_models", "model_defaults", "register_model", "SupervisedCrate", "ViTMAE",
    "Capabilities", "ModelConfig", "CrateEncoderConfig", "CrateMAEConfig", "SupervisedCrateConfig", "ViTMAEConfig",
    "ViTConfig", "MAEViTClassifier", "vit_classifier",
]
