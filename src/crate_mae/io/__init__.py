"""The io layer: model weights on disk and on the Hub, and the one way from weights to a model.

- :mod:`.format`: our format (``config.json`` + ``model.safetensors``), reading weight files as tensors only, strict
  loading with errors that name what does not fit;
- :mod:`.official`: official CRATE-MAE, supervised CRATE and facebookresearch/mae state dicts, recognised and built;
- :mod:`.hub`: the Hugging Face Hub, reading (the local cache) and writing (upload folder, model card, push);
- :mod:`.loading`: :func:`load_checkpoint`, the one loading path, and its thin aliases (:func:`from_pretrained`,
  :func:`create_model`, :func:`load_weights_into`, :func:`load_encoder`, :func:`load_model`).
"""

from .format import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    checkpoint_sha256,
    load_exact,
    read_config,
    read_safetensors,
    read_state_dict,
    resolve_run_dir,
    save_pretrained,
    unwrap_state_dict,
    weights_file,
)
from .hub import (
    CARD_NAME,
    HUB_PREFIX,
    OFFICIAL_SOURCES,
    hub_snapshot,
    is_hub_id,
    model_card,
    parse_hub_id,
    push_to_hub,
    save_for_hub,
)
from .loading import (
    CRATE_CLASSIFIERS,
    build_from_config,
    create_model,
    from_pretrained,
    load_checkpoint,
    load_encoder,
    load_model,
    load_weights_into,
)
from .official import POS_TABLES, detect_format, model_from_official

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "checkpoint_sha256",
    "load_exact",
    "read_config",
    "read_safetensors",
    "read_state_dict",
    "resolve_run_dir",
    "save_pretrained",
    "unwrap_state_dict",
    "weights_file",
    "CARD_NAME",
    "HUB_PREFIX",
    "OFFICIAL_SOURCES",
    "hub_snapshot",
    "is_hub_id",
    "model_card",
    "parse_hub_id",
    "push_to_hub",
    "save_for_hub",
    "CRATE_CLASSIFIERS",
    "build_from_config",
    "create_model",
    "from_pretrained",
    "load_checkpoint",
    "load_encoder",
    "load_model",
    "load_weights_into",
    "POS_TABLES",
    "detect_format",
    "model_from_official",
]
