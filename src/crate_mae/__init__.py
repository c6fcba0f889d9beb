"""crate-mae: CRATE-MAE white-box masked autoencoders, trained, evaluated and dissected."""

__version__ = "0.1.0"

from .models import create_model, list_models  # noqa: E402
from .checkpoint import from_pretrained, load_checkpoint, load_encoder, save_pretrained  # noqa: E402
from . import timm_models  # noqa: E402,F401  (registers the crate_* encoders with timm)

__all__ = ["__version__", "create_model", "list_models", "from_pretrained", "load_checkpoint", "load_encoder",
           "save_pretrained"]
