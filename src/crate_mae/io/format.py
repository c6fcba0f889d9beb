"""Our weights format on disk, without ever unpickling code: a directory with ``config.json`` (architecture,
constructor keywords, data statistics, provenance, library version) and ``model.safetensors``; reading other weight
files as tensors only; and strict loading of a state dict into a model with errors that name what does not fit.

Building a model from these files is :mod:`crate_mae.io.loading`; official layouts are :mod:`crate_mae.io.official`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .._version import __version__
from ..models.base import Capabilities
from ..utils import atomic_write, file_sha256, torch_load

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model it should build."""


# -- writing -----------------------------------------------------------------------------------------------------------
def save_pretrained(model: nn.Module, directory: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.json`` (architecture and config fields: ``model.config.to_dict()``, ``model``: the registry
    preset when there is one, ``data``: the model's data_config, its provenance, ``extra``, library version) and
    ``model.safetensors`` into ``directory``, each atomically. Returns it."""
    directory = Path(directory)
    if not isinstance(model, Capabilities):
        raise ValueError(
            f"{type(model).__name__} is not a crate-mae model (it has no config); cannot save it in our format"
        )
    name = {"model": model.model_name} if model.model_name is not None else {}
    data = {"data": model.data_config} if model.data_config else {}
    config = {
        **model.provenance,
        **model.config.to_dict(),
        **name,
        **data,
        **(extra or {}),
        "crate_mae_version": __version__,
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    text = json.dumps(config, indent=2, sort_keys=True, default=_json_default)
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def _json_default(o: Any):
    """``json.dumps(default=)`` for model settings: tuples as lists, paths as strings, anything else refused."""
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"config value {o!r} is not JSON-serialisable")


# -- reading -----------------------------------------------------------------------------------------------------------
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


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file as they are stored, or a CheckpointError naming a damaged file."""
    try:
        return load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot read {path} as safetensors (truncated or corrupt?): {e}") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file, unwrapped, ``module.`` stripped."""
    path = weights_file(path)
    if path.suffix == ".safetensors":
        return unwrap_state_dict(read_safetensors(path))
    try:
        obj = torch_load(path)  # weights_only: never unpickles code
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return unwrap_state_dict(obj)


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
        k = k[len("module.") :] if k.startswith("module.") else k
        state[k] = v
    if not state:
        raise CheckpointError("checkpoint holds no tensors")
    return state


# -- paths -------------------------------------------------------------------------------------------------------------
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


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint's weights file (``model.safetensors`` for a directory in our format; a run directory
    stands for its model, :func:`resolve_run_dir`)."""
    return file_sha256(weights_file(resolve_run_dir(path)))


# -- strict loading with useful errors -------------------------------------------------------------------------------
def load_exact(
    model: nn.Module, state: Mapping[str, torch.Tensor], where: str, allow_missing_prefixes: tuple[str, ...] = ()
) -> None:
    """Load ``state`` into ``model`` strictly: every key present, none extra, every shape equal, else one
    CheckpointError naming ``where`` and listing the missing, unexpected and mismatched keys. Keys starting with
    ``allow_missing_prefixes`` may be absent (they keep the model's values)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(allow_missing_prefixes)]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
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
