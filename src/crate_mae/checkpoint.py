"""Reading and writing model weights, without ever unpickling code.

Formats read by :func:`load_checkpoint`:
- ours: a directory (or its ``model.safetensors``) with ``config.json`` (architecture, kwargs, version);
- official CRATE-MAE (github Ma-Lab-Berkeley/CRATE ``model/crate_ae``): keys ``blocks.i.layers.0.0.fn.qkv.weight`` ...;
- official supervised CRATE (the same repository's ``model/crate.py``): ``transformer.layers.i.0.fn.qkv.weight`` ...;
- facebookresearch/mae (``models_mae.py``), with or without the decoder;
each as ``.safetensors`` or ``.pth`` (``torch.load(weights_only=True)``), raw or wrapped in ``{'model': ...}`` /
``{'state_dict': ...}``, keys with or without a ``module.`` prefix, or an in-memory state dict.
Architecture is inferred from tensor shapes; heads cannot be, so they come from the official preset for the width
unless ``num_heads=`` is given. ISTA's eta / lambda are not stored in official weights: 0.1 / 0.5 unless overridden
(supervised CRATE: 0.1 / 0.1, its code's fixed values).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from . import models
from ._version import __version__
from .models.base import Capabilities
from .models.crate_mae import CrateEncoder, CrateEncoderConfig, CrateMAE
from .models.crate_supervised import SupervisedCrate
from .models.crate_supervised import from_official as crate_supervised_from_official
from .models.crate_supervised import is_official as is_crate_supervised_official
from .models.crate_supervised import kwargs_from_official as crate_supervised_kwargs_from_official
from .models.layers import sincos_pos_embed
from .models.official import from_official
from .models.official import kwargs_from_official as crate_kwargs_from_official
from .models.registry import find_preset, list_models, model_defaults
from .models.vit_mae import MAEViTClassifier, ViTConfig, ViTMAE
from .models.vit_mae import kwargs_from_official as vit_kwargs_from_official
from .utils import atomic_write, file_sha256, state_sha256, torch_load
from .utils.extras import require

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ARCHITECTURES: dict[str, type[Capabilities]] = {
    cls.config_class.architecture: cls for cls in (CrateMAE, CrateEncoder, ViTMAE, MAEViTClassifier, SupervisedCrate)}
CRATE_CLASSIFIERS = (CrateEncoder, SupervisedCrate)  # timm-style classifiers built of CRATE layers
POS_TABLES = ("pos_embed", "decoder_pos_embed")
HUB_PREFIX = "hf-hub:"
CARD_NAME = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model it should build."""


# -- our format -------------------------------------------------------------------------------------------------------
def save_pretrained(model: nn.Module, directory: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.json`` (architecture and config fields: ``model.config.to_dict()``, ``model``: the registry
    preset when there is one, ``data``: the model's data_config, its provenance, ``extra``, library version) and
    ``model.safetensors`` into ``directory``, each atomically. Returns it."""
    directory = Path(directory)
    if not isinstance(model, Capabilities):
        raise ValueError(f"{type(model).__name__} is not a crate-mae model (it has no config); cannot save it in our "
                         "format")
    name = {"model": model.model_name} if model.model_name is not None else {}
    data = {"data": model.data_config} if model.data_config else {}
    config = {**model.provenance, **model.config.to_dict(), **name, **data, **(extra or {}),
              "crate_mae_version": __version__}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    text = json.dumps(config, indent=2, sort_keys=True, default=_json_default)
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def from_pretrained(directory: str | os.PathLike, *, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, download: bool = False, **overrides) -> nn.Module:
    """Build a model from a directory written by :func:`save_pretrained`, or from ``"hf-hub:ORG/NAME[@REV]"``: that
    Hub repository read from the local Hugging Face cache, or fetched into it only with ``download=True``
    (``revision``, ``cache_dir``: see :func:`hub_snapshot`; needs ``crate-mae[hub]``)."""
    if is_hub_id(directory):
        directory = hub_snapshot(directory, revision=revision, cache_dir=cache_dir, download=download)
    elif revision is not None or cache_dir is not None or download:
        raise ValueError(f"revision / cache_dir / download apply to 'hf-hub:ORG/NAME' sources, not to {directory}")
    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
    config = read_config(cfg_path)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")
    model = build_from_config({**config, **overrides}, where=str(cfg_path))
    _load_exact(model, _read_safetensors(weights), str(weights))
    return model


def read_config(path: Path) -> dict[str, Any]:
    """A config.json as a dict, or one line naming the file and what is wrong with it."""
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not a text file") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object of model settings, not a {type(config).__name__}")
    return config


def build_from_config(config: Mapping[str, Any], where: str = "config") -> nn.Module:
    """Instantiate the architecture named in ``config``: its config class's fields become ``model.config``
    (``ModelConfig.from_dict``), ``model`` its ``model_name``, ``data`` its ``data_config``, the rest (what a run
    recorded) its ``provenance``. A wrongly typed or impossible value is one :class:`CheckpointError` naming
    ``where``."""
    arch = config.get("architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{where}: unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[arch]
    try:
        model_config = cls.config_class.from_dict(config, where)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    try:
        model = cls(model_config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    model.model_name = config.get("model") or None
    model.data_config = dict(config.get("data") or {})
    own = model_config.to_dict()
    model.provenance = {k: v for k, v in config.items()
                        if k not in own and k not in ("data", "crate_mae_version", "model")}
    return model


def create_model(name: str, pretrained: str | os.PathLike | None = None, **overrides) -> nn.Module:
    """:func:`crate_mae.models.create_model`, then, with ``pretrained`` (a checkpoint in any format
    :func:`load_checkpoint` reads), that checkpoint's weights loaded into the new model."""
    model = models.create_model(name, **overrides)
    return load_weights_into(model, pretrained) if pretrained is not None else model


def load_model(source: str | os.PathLike, *, seed: int = 0, device: torch.device | str | None = None,
               **overrides) -> tuple[nn.Module, str]:
    """The one way a command line names a model: ``(model in eval mode, fingerprint)`` from

    - a checkpoint in any format :func:`load_checkpoint` reads, or a run directory (:func:`resolve_run_dir`);
      fingerprint = sha256 of the weights file;
    - ``"hf-hub:ORG/NAME"`` from the local cache; fingerprint = sha256 of the state dict;
    - a registered model name at random init with ``seed`` (fingerprint = sha256 of its state dict, so the same
      name + seed + overrides always gives the same fingerprint).
    """
    path = Path(source)
    if str(source) in list_models() and not path.exists():
        torch.manual_seed(seed)
        model = models.create_model(str(source), **overrides)
        model.provenance.update(random_init=True, seed=seed)
        sha = state_sha256(model)
    elif is_hub_id(source):
        model = load_checkpoint(source, **overrides)
        sha = state_sha256(model)
    else:
        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {source} (nor is it a registered model name; see "
                                    "`crate-mae models`)")
        model, sha = load_checkpoint(path, **overrides), checkpoint_sha256(path)
    model.provenance["checkpoint"] = str(source)
    return (model.to(device) if device is not None else model).eval(), sha


# -- any format --------------------------------------------------------------------------------------------------------
def load_checkpoint(source: str | os.PathLike | Mapping[str, torch.Tensor], **overrides) -> nn.Module:
    """Return a ready model (eval mode) from a checkpoint in any supported format; keyword arguments override the
    inferred configuration (``num_heads``, ``ista_lambda``, ``ista_step_size``, ``norm_pix_loss``, ...).
    ``"hf-hub:ORG/NAME"`` reads that Hub model from the local cache (:func:`from_pretrained` can download it)."""
    if isinstance(source, str) and source.startswith("hf-hub:"):
        return from_pretrained(source, **overrides).eval()
    if isinstance(source, (str, os.PathLike)):
        path = resolve_run_dir(source)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        ours_file = path.is_file() and path.suffix == ".safetensors" and (path.parent / CONFIG_NAME).is_file()
        if (path.is_dir() and (path / CONFIG_NAME).is_file()) or ours_file:
            return from_pretrained(path, **overrides).eval()
        state = read_state_dict(path)
        where = str(path)
    else:
        state, where = unwrap_state_dict(source), "in-memory state dict"
    fmt = detect_format(state)
    if fmt == "crate_mae_official":
        model = _build_crate_official(state, overrides)
        _load_exact(model, from_official(state), where)
    elif fmt == "crate_supervised_official":
        model = _build_crate_supervised_official(state, overrides, where)
        _load_exact(model, crate_supervised_from_official(state), where)
    elif fmt == "vit_mae_official":
        model = _build_vit_official(state, overrides, where)
        has_decoder = any(k.startswith("decoder_blocks.") for k in state)
        unused = POS_TABLES + (("decoder_embed.weight", "decoder_embed.bias") if model.mask_tokens_in_encoder else ())
        _load_exact(model, {k: v for k, v in state.items() if k not in unused}, where,
                    allow_missing_prefixes=() if has_decoder else ("decoder_", "mask_token"))
        if not has_decoder:
            warnings.warn(f"{where} has no decoder: encoder weights loaded, decoder randomly initialised "
                          "(fine for features, probing and fine-tuning; not for reconstruction)", stacklevel=2)
        model.provenance["decoder_loaded"] = has_decoder
    elif fmt == "ours":
        raise CheckpointError(f"{where} uses our key names but comes without {CONFIG_NAME}; load the directory "
                              "written by save_pretrained instead")
    else:
        raise CheckpointError(f"cannot recognise the checkpoint format of {where}: first keys {list(state)[:6]}")
    _check_pos_tables(state, model, where)
    return model.eval()


def load_encoder(source: str | os.PathLike | Mapping[str, torch.Tensor] | nn.Module, num_classes: int = 0,
                 global_pool: str = "token", **overrides) -> nn.Module:
    """The encoder of a masked autoencoder as a timm-style classifier (``forward_features``, ``forward_head``,
    ``reset_classifier``): a :class:`CrateEncoder` for CRATE-MAE, a timm ``VisionTransformer`` for ViT-MAE; a
    classifier (``crate_*``, supervised CRATE) gets a new head. ``overrides`` may set ``drop_path_rate`` and anything
    :func:`load_checkpoint` accepts."""
    drop_path_rate = overrides.pop("drop_path_rate", 0.0)
    model = source if isinstance(source, nn.Module) else load_checkpoint(source, **overrides)
    if isinstance(model, (*CRATE_CLASSIFIERS, MAEViTClassifier)):
        model.reset_classifier(num_classes, global_pool)  # config follows
        if isinstance(model, CRATE_CLASSIFIERS):
            model.set_drop_path(drop_path_rate)
        return model
    if isinstance(model, CrateMAE):
        enc = CrateEncoder(CrateEncoderConfig.from_mae(model.config, num_classes=num_classes, global_pool=global_pool,
                                                       drop_path_rate=drop_path_rate))
        state = {k: v for k, v in model.encoder.state_dict().items() if not k.startswith("head.")}
        missing, unexpected = enc.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith("head.") for k in missing), (missing, unexpected)
        enc.model_name = model.model_name
        enc.data_config, enc.provenance = dict(model.data_config), dict(model.provenance)
        return enc
    if isinstance(model, ViTMAE):
        return _vit_classifier(model, num_classes, global_pool, drop_path_rate)
    raise CheckpointError(f"cannot make an encoder classifier from {type(model).__name__}")


def load_weights_into(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a checkpoint's weights into an existing model of the same architecture (strict)."""
    loaded = load_checkpoint(source) if not isinstance(source, nn.Module) else source
    if isinstance(model, CrateEncoder) and isinstance(loaded, CrateMAE):
        loaded = load_encoder(loaded, num_classes=model.num_classes, global_pool=model.global_pool)
    state = {k: v for k, v in loaded.state_dict().items()}
    if isinstance(model, CRATE_CLASSIFIERS):  # the classifier head is the user's, not the checkpoint's
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    _load_exact(model, state, str(source) if not isinstance(source, Mapping) else "state dict")
    return model


# -- a Hub model from the local Hugging Face cache (the [hub] extra) ----------------------------------------------
def is_hub_id(source: Any) -> bool:
    """Whether ``source`` names a Hub repository (``"hf-hub:ORG/NAME[@REVISION]"``)."""
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_id(source: str) -> tuple[str, str | None]:
    """``"hf-hub:ORG/NAME[@REVISION]"`` (or ``"ORG/NAME"``) -> ``(repo_id, revision or None)``."""
    rest = source[len(HUB_PREFIX):] if source.startswith(HUB_PREFIX) else source
    repo_id, _, revision = rest.partition("@")
    if not _REPO_ID.match(repo_id) or (_ and not revision):
        raise ValueError(f"{source!r} is not a Hub model id; expected {HUB_PREFIX}ORG/NAME or {HUB_PREFIX}ORG/NAME@REV")
    return repo_id, revision or None


def hub_snapshot(source: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                 download: bool = False) -> Path:
    """The local folder of a Hub model (``config.json`` + ``model.safetensors``).

    Reads the Hugging Face cache (``cache_dir``, default ``HF_HUB_CACHE``) only, unless ``download=True``, which
    fetches the repository's ``config.json``, ``model.safetensors`` and ``README.md`` into it. ``revision`` (or
    ``@REV`` in ``source``) pins a branch, tag or commit. FileNotFoundError when it is not cached (or lacks our
    files), ValueError for a bad id or a repository / revision the Hub does not have.
    """
    repo_id, pinned = parse_hub_id(source)
    if pinned and revision and pinned != revision:
        raise ValueError(f"{source!r} pins revision {pinned!r} but revision={revision!r} was passed too")
    revision = revision or pinned
    hf = require("huggingface_hub", "hub", "reading weights from the Hugging Face Hub")
    from huggingface_hub import errors

    cache = str(cache_dir) if cache_dir is not None else hf.constants.HF_HUB_CACHE
    try:
        folder = Path(hf.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                           local_files_only=not download,
                                           allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
                                           library_name="crate-mae", library_version=__version__))
    except errors.LocalEntryNotFoundError:
        at = f" at revision {revision!r}" if revision else ""
        if not download:
            raise FileNotFoundError(
                f"{source}{at} is not in the local Hugging Face cache ({cache}); nothing is downloaded unless asked: "
                "pass download=True, or fetch it first with `hf download " + repo_id + "`") from None
        offline = "HF_HUB_OFFLINE is set" if hf.constants.HF_HUB_OFFLINE else "no connection to the Hub?"
        raise FileNotFoundError(f"{source}{at} is not cached and could not be downloaded ({offline}); "
                                f"cache: {cache}") from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.GatedRepoError) as e:
        raise ValueError(f"{source}: {str(e).splitlines()[0]}") from None
    missing = [f for f in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{source} ({folder}) has no {' or '.join(missing)}: not a crate-mae model repository"
                                + ("" if download else ", or only partly cached (pass download=True)"))
    return folder


# -- reading -----------------------------------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file, unwrapped, ``module.`` stripped."""
    path = weights_file(path)
    if path.suffix == ".safetensors":
        return unwrap_state_dict(_read_safetensors(path))
    try:
        obj = torch_load(path)  # weights_only: never unpickles code
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return unwrap_state_dict(obj)


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint's weights file (``model.safetensors`` for a directory in our format)."""
    return file_sha256(weights_file(resolve_run_dir(path)))


def resolve_run_dir(path: str | os.PathLike) -> Path:
    """A run directory stands for the model it produced: its final ``model/`` (pretraining), else its ``best/``
    (fine-tuning); any other path is returned as it is."""
    path = Path(path)
    if path.is_dir() and not (path / CONFIG_NAME).is_file():
        return next((path / d for d in ("model", "best") if (path / d / CONFIG_NAME).is_file()), path)
    return path


def weights_file(path: str | os.PathLike) -> Path:
    """The weights file of a checkpoint path: the path itself, or inside a directory ``model.safetensors`` first,
    then any ``*.safetensors``, then any ``*.pth``."""
    path = Path(path)
    if not path.is_dir():
        return path
    candidates = [path / WEIGHTS_NAME, *sorted(path.glob("*.safetensors")), *sorted(path.glob("*.pth"))]
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise FileNotFoundError(f"no weights file (*.safetensors, *.pth) in {path}")
    return found[0]


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot read {path} as safetensors (truncated or corrupt?): {e}") from None


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Accept raw, ``{'model': sd}``, ``{'state_dict': sd}`` (also nested once) and strip ``module.`` prefixes."""
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError("checkpoint holds no state dict (expected a mapping of tensor names to tensors)")
    state = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = k[len("module."):] if k.startswith("module.") else k
        state[k] = v
    if not state:
        raise CheckpointError("checkpoint holds no tensors")
    return state


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    if any(re.match(r"blocks\.\d+\.layers\.0\.0\.fn\.qkv\.weight$", k) for k in state):
        return "crate_mae_official"
    if is_crate_supervised_official(state):
        return "crate_supervised_official"
    if any(k.startswith("encoder.blocks.") or re.match(r"blocks\.\d+\.ista\.", k) for k in state):
        return "ours"
    if any(re.match(r"blocks\.\d+\.mlp\.fc1\.weight$", k) for k in state):
        return "vit_mae_official"
    return "unknown"


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
def _build_crate_supervised_official(state: Mapping[str, torch.Tensor], overrides: dict, where: str
                                     ) -> SupervisedCrate:
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
    if ("mask_tokens_in_encoder" not in overrides and not cfg["qkv_bias"] and dd == d
            and "decoder_blocks.0.attn.qkv.weight" in state):
        warnings.warn(f"{where} looks like the CRATE repo's ViT-MAE baseline (no qkv bias, decoder as wide as the "
                      "encoder); it is loaded in facebookresearch/mae's visible-only frame. If it was trained by the "
                      "CRATE repo, pass mask_tokens_in_encoder=True", stacklevel=3)
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
            warnings.warn(f"{where}: stored {key} is not the fixed 2-D sin-cos table (learned?); it is ignored and "
                          "the sin-cos table is used", stacklevel=3)


# -- strict loading with useful errors -------------------------------------------------------------------------------
def _load_exact(model: nn.Module, state: Mapping[str, torch.Tensor], where: str,
                allow_missing_prefixes: tuple[str, ...] = ()) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(allow_missing_prefixes)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_short(mismatched)}")
        raise CheckpointError(f"checkpoint {where} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict({k: v for k, v in state.items()}, strict=not allow_missing_prefixes)


def _short(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")


def _vit_classifier(mae: ViTMAE, num_classes: int, global_pool: str, drop_path_rate: float) -> MAEViTClassifier:
    vit = MAEViTClassifier(ViTConfig.from_mae(mae.config, num_classes=num_classes, global_pool=global_pool,
                                              drop_path_rate=drop_path_rate))
    state = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    state["pos_embed"] = mae.pos_embed.table.clone()
    state.update({k: v for k, v in vit.state_dict().items() if k.startswith("head.")})
    vit.load_state_dict(state, strict=True)
    vit.model_name = mae.model_name
    vit.data_config, vit.provenance = dict(mae.data_config), dict(mae.provenance)
    return vit


def _json_default(o: Any):
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"config value {o!r} is not JSON-serialisable")
