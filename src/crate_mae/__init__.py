"""crate-mae: CRATE-MAE white-box masked autoencoders, trained, evaluated and dissected."""

from . import timm_models  # noqa: F401  (registers the crate_* encoders with timm)
from ._version import __version__
from .checkpoint import create_model, from_pretrained, load_checkpoint, load_encoder, save_pretrained
from .models import list_models

__all__ = ["__version__", "create_model", "list_models", "from_pretrained", "load_checkpoint", "load_encoder",
           "save_pretrained"]
