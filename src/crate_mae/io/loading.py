"""Building and loading models: the one loading path and its thin aliases.

:func:`load_checkpoint` is the one path from weights to a model; every other entry point goes through it:

- :func:`from_pretrained`: :func:`load_checkpoint` for our format only (a directory or ``"hf-hub:ORG/NAME"``), in
  training mode as built;
- :func:`create_model`: ``build_model`` at random init, and with ``pretrained=`` :func:`load_weights_into`;
- :func:`load_weights_into`: :func:`load_checkpoint`, then the weights copied into a model you built;
- :func:`load_encoder`: :func:`load_checkpoint`, then a masked autoencoder's encoder as a classifier;
- :func:`load_model`: what a command line names, a registered name at random init or :func:`load_checkpoint`,
  with a fingerprint.

Formats :func:`load_checkpoint` reads: ours (a directory, or its ``model.safetensors``, with ``config.json``:
:mod:`crate_mae.io.format`), a run directory (its ``model/`` or ``best/``), a Hub model from the local cache
(:mod:`crate_mae.io.hub`), and official CRATE-MAE, supervised CRATE and facebookresearch/mae weights
(:mod:`crate_mae.io.official`), each as ``.safetensors`` or ``.pth`` (``torch.load(weights_only=True)``), raw or
wrapped in ``{'model': ...}`` / ``{'state_dict': ...}``, keys with or without a ``module.`` prefix, or an in-memory
state dict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..models.base import Capabilities
from ..models.crate_mae import CrateEncoder, CrateEncoderConfig, CrateMAE
from ..models.crate_supervised import SupervisedCrate
from ..models.registry import architecture_factory, build_model, is_registered, list_architectures
from ..models.vit_mae import MAEViTClassifier, ViTConfig, ViTMAE
from ..utils import state_sha256
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
    unwrap_state_dict,
)
from .hub import hub_snapshot, is_hub_id
from .official import model_from_official

CRATE_CLASSIFIERS = (CrateEncoder, SupervisedCrate)  # timm-style classifiers built of CRATE layers


# -- the one loading path ----------------------------------------------------------------------------------------------
def load_checkpoint(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    **overrides,
) -> nn.Module:
    """Return a ready model (eval mode) from a checkpoint in any supported format (module docstring); keyword
    arguments override the inferred configuration (``num_heads``, ``ista_lambda``, ``ista_step_size``,
    ``norm_pix_loss``, ...).

    ``"hf-hub:ORG/NAME[@REV]"`` reads that Hub repository from the local Hugging Face cache, or fetches it into the
    cache only with ``download=True`` (``revision``, ``cache_dir``: see :func:`crate_mae.io.hub_snapshot`; needs
    ``crate-mae[hub]``); these three options apply to Hub ids only.

    This is the one loading path, and the one place on it that sets eval mode: on the way out, here, and nowhere
    below (the aliases that promise another mode say so).
    """
    if is_hub_id(source):
        folder = hub_snapshot(source, revision=revision, cache_dir=cache_dir, download=download)
        model = _from_our_folder(folder, overrides)
    elif revision is not None or cache_dir is not None or download:
        raise ValueError(f"revision / cache_dir / download apply to 'hf-hub:ORG/NAME' sources, not to {source}")
    elif isinstance(source, (str, os.PathLike)):
        path = resolve_run_dir(source)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        ours_file = path.is_file() and path.suffix == ".safetensors" and (path.parent / CONFIG_NAME).is_file()
        if (path.is_dir() and (path / CONFIG_NAME).is_file()) or ours_file:
            model = _from_our_folder(path.parent if ours_file else path, overrides)
        else:
            model = model_from_official(read_state_dict(path), overrides, str(path))
    else:
        model = model_from_official(unwrap_state_dict(source), overrides, "in-memory state dict")
    return model.eval()


def _from_our_folder(directory: Path, overrides: Mapping[str, Any]) -> nn.Module:
    """The model a folder in our format holds (``config.json`` + ``model.safetensors``), as built (training mode)."""
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
    config = read_config(cfg_path)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")
    model = build_from_config({**config, **overrides}, where=str(cfg_path))
    load_exact(model, read_safetensors(weights), str(weights))
    return model


def build_from_config(config: Mapping[str, Any], where: str = "config") -> nn.Module:
    """Instantiate the architecture named in ``config`` (at random init, training mode): its config class's fields
    become ``model.config`` (``ModelConfig.from_dict``), ``model`` its ``model_name``, ``data`` its ``data_config``,
    the rest (what a run recorded) its ``provenance``. A wrongly typed or impossible value is one
    :class:`CheckpointError` naming ``where``."""
    arch = config.get("architecture")
    if arch not in list_architectures():
        raise CheckpointError(f"{where}: unknown architecture {arch!r}; expected one of {list_architectures()}")
    cls = architecture_factory(arch)
    try:
        model_config = cls.config_class.from_dict(config, where)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    try:
        model = cls(model_config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    assert isinstance(model, Capabilities)  # every architecture class keeps the model contract
    model.model_name = config.get("model") or None
    model.data_config = dict(config.get("data") or {})
    own = model_config.to_dict()
    model.provenance = {
        k: v for k, v in config.items() if k not in own and k not in ("data", "crate_mae_version", "model")
    }
    return model


# -- thin aliases of the one path --------------------------------------------------------------------------------------
def from_pretrained(
    directory: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    **overrides,
) -> nn.Module:
    """Thin alias of :func:`load_checkpoint` for our format only: a directory written by
    :func:`crate_mae.save_pretrained` (or a file in it), or ``"hf-hub:ORG/NAME[@REV]"`` with the Hub options
    (``revision``, ``cache_dir``, ``download``). A folder without ``config.json`` is a FileNotFoundError rather than
    read as a run directory or an official checkpoint. Unlike :func:`load_checkpoint`, the model comes back in
    training mode, as built (as it always has): call ``.eval()`` for inference."""
    if not is_hub_id(directory) and revision is None and cache_dir is None and not download:
        folder = Path(directory)
        folder = folder.parent if folder.is_file() else folder
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}")
        directory = folder
    model = load_checkpoint(directory, revision=revision, cache_dir=cache_dir, download=download, **overrides)
    return model.train()


def load_weights_into(
    model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor] | nn.Module
) -> nn.Module:
    """Thin alias of :func:`load_checkpoint` that copies the weights into ``model``, an existing model of the same
    architecture (strict), and returns it, its mode untouched. A CRATE classifier keeps its own head; a CRATE-MAE
    checkpoint loaded into a :class:`CrateEncoder` gives its encoder (:func:`load_encoder`)."""
    loaded = load_checkpoint(source) if not isinstance(source, nn.Module) else source
    if isinstance(model, CrateEncoder) and isinstance(loaded, CrateMAE):
        loaded = load_encoder(loaded, num_classes=model.num_classes, global_pool=model.global_pool)
    state = {k: v for k, v in loaded.state_dict().items()}
    if isinstance(model, CRATE_CLASSIFIERS):  # the classifier head is the user's, not the checkpoint's
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    load_exact(model, state, str(source) if not isinstance(source, Mapping) else "state dict")
    return model


def create_model(name: str, pretrained: str | os.PathLike | None = None, **overrides) -> nn.Module:
    """The one ``create_model``, a thin alias: :func:`crate_mae.models.build_model` (a registered preset at random
    init, keyword arguments override it), then, with ``pretrained`` (a checkpoint in any format
    :func:`load_checkpoint` reads), :func:`load_weights_into`, which reads it through :func:`load_checkpoint`.
    Training mode, as built."""
    model = build_model(name, **overrides)
    return load_weights_into(model, pretrained) if pretrained is not None else model


def load_encoder(
    source: str | os.PathLike | Mapping[str, torch.Tensor] | nn.Module,
    num_classes: int = 0,
    global_pool: str = "token",
    **overrides,
) -> nn.Module:
    """Thin alias of :func:`load_checkpoint` (skipped when ``source`` is already a model) followed by the conversion
    of a masked autoencoder's encoder into a timm-style classifier (``forward_features``, ``forward_head``,
    ``reset_classifier``): a :class:`CrateEncoder` for CRATE-MAE, a timm ``VisionTransformer`` for ViT-MAE; a
    classifier (``crate_*``, supervised CRATE) gets a new head. ``overrides`` may set ``drop_path_rate`` and anything
    :func:`load_checkpoint` accepts. Mode: a classifier comes back as it was loaded (eval mode from a checkpoint);
    a converted encoder is a new module (training mode)."""
    drop_path_rate = overrides.pop("drop_path_rate", 0.0)
    model = source if isinstance(source, nn.Module) else load_checkpoint(source, **overrides)
    if isinstance(model, (*CRATE_CLASSIFIERS, MAEViTClassifier)):
        model.reset_classifier(num_classes, global_pool)  # config follows
        if isinstance(model, CRATE_CLASSIFIERS):
            model.set_drop_path(drop_path_rate)
        return model
    if isinstance(model, CrateMAE):
        enc = CrateEncoder(
            CrateEncoderConfig.from_mae(
                model.config, num_classes=num_classes, global_pool=global_pool, drop_path_rate=drop_path_rate
            )
        )
        state = {k: v for k, v in model.encoder.state_dict().items() if not k.startswith("head.")}
        missing, unexpected = enc.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith("head.") for k in missing), (missing, unexpected)
        enc.model_name = model.model_name
        enc.data_config, enc.provenance = dict(model.data_config), dict(model.provenance)
        return enc
    if isinstance(model, ViTMAE):
        return _vit_classifier(model, num_classes, global_pool, drop_path_rate)
    raise CheckpointError(f"cannot make an encoder classifier from {type(model).__name__}")


def load_model(
    source: str | os.PathLike, *, seed: int = 0, device: torch.device | str | None = None, **overrides
) -> tuple[nn.Module, str]:
    """The one way a command line names a model: ``(model in eval mode, fingerprint)`` from

    - a checkpoint in any format :func:`load_checkpoint` reads, or a run directory (:func:`resolve_run_dir`);
      fingerprint = sha256 of the weights file;
    - ``"hf-hub:ORG/NAME"`` from the local cache; fingerprint = sha256 of the state dict;
    - a registered model name at random init with ``seed`` (fingerprint = sha256 of its state dict, so the same
      name + seed + overrides always gives the same fingerprint).

    Thin alias: a name at random init, else :func:`load_checkpoint` (which sets eval mode); the random init loads
    nothing, so it is set to eval mode here.
    """
    path = Path(source)
    if is_registered(str(source)) and not path.exists():
        torch.manual_seed(seed)
        model = build_model(str(source), **overrides).eval()
        assert isinstance(model, Capabilities)  # as every registered model
        model.provenance.update(random_init=True, seed=seed)
        sha = state_sha256(model)
    elif is_hub_id(source):
        model = load_checkpoint(source, **overrides)
        sha = state_sha256(model)
    else:
        if not path.exists():
            raise FileNotFoundError(
                f"checkpoint not found: {source} (nor is it a registered model name; see `crate-mae models`)"
            )
        model, sha = load_checkpoint(path, **overrides), checkpoint_sha256(path)
    assert isinstance(model, Capabilities)  # as every model a checkpoint builds
    model.provenance["checkpoint"] = str(source)
    return (model.to(device) if device is not None else model), sha


def _vit_classifier(mae: ViTMAE, num_classes: int, global_pool: str, drop_path_rate: float) -> MAEViTClassifier:
    vit = MAEViTClassifier(
        ViTConfig.from_mae(mae.config, num_classes=num_classes, global_pool=global_pool, drop_path_rate=drop_path_rate)
    )
    state = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    state["pos_embed"] = mae.pos_embed.table.clone()
    state.update({k: v for k, v in vit.state_dict().items() if k.startswith("head.")})
    vit.load_state_dict(state, strict=True)
    vit.model_name = mae.model_name
    vit.data_config, vit.provenance = dict(mae.data_config), dict(mae.provenance)
    return vit
