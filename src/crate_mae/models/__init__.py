"""CRATE-MAE, supervised CRATE and ViT-MAE networks."""

from .crate_mae import CrateBlock, CrateDecoder, CrateDecoderBlock, CrateEncoder, CrateMAE
from .crate_supervised import SupervisedCrate
from .layers import ISTA, MSSA, InverseISTA, sincos_pos_embed
from .masking import patchify, random_masking, unpatchify
from .outputs import Intermediates, LayerTrace, MAEOutput
from .registry import create_model, list_models, model_defaults, register_model
from .vit_mae import ViTMAE

__all__ = [
    "CrateBlock", "CrateDecoder", "CrateDecoderBlock", "CrateEncoder", "CrateMAE", "ISTA", "MSSA", "InverseISTA",
    "sincos_pos_embed", "patchify", "random_masking", "unpatchify", "Intermediates", "LayerTrace", "MAEOutput",
    "create_model", "list_models", "model_defaults", "register_model", "SupervisedCrate", "ViTMAE",
]
