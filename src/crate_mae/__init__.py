"""crate-mae: CRATE-MAE white-box masked autoencoders, trained, evaluated and dissected."""

from . import hub, timm_models  # noqa: F401  (hub: crate_mae.hub.push_to_hub; timm_models registers crate_* with timm)
from ._version import __version__
from .checkpoint import create_model, from_pretrained, load_checkpoint, load_encoder, save_pretrained
from .models import list_models

__all__ = ["__version__", "hub", "create_model", "list_models", "from_pretrained", "load_checkpoint", "load_encoder",
           "save_pretrained"]
