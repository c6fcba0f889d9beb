"""Crash-safe training checkpoints.

``<output_dir>/checkpoints/step_00001234/`` holds

- ``config.json`` + ``model.safetensors``: the model in our format (:func:`crate_mae.save_pretrained`), loadable by
  every other tool (``crate_mae.from_pretrained``, ``load_encoder``, analysis);
- ``training_state.pt``: optimizer, grad scaler, step / epoch / step-in-epoch, schedule, the resolved config and the
  RNG states of every rank (torch CPU + CUDA, numpy, python), as tensors and plain containers only, so it loads
  with ``torch.load(weights_only=True)``.

A checkpoint is assembled in a hidden ``.tmp-*`` folder and renamed into place in one ``os.replace``; a folder named
``step_*`` is therefore always complete, and a crash mid-write leaves only a ``.tmp-*`` folder that is ignored and
cleaned up later.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

STATE_NAME = "training_state.pt"
CKPT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d+)$")


# -- RNG --------------------------------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """Every RNG this process uses, as tensors / ints / lists (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gauss": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- writing ----------------------------------------------------------------------------------------------------------
def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / CKPT_DIR / f"step_{step:08d}"


def save_checkpoint(output_dir: str | os.PathLike, model: nn.Module, state: dict[str, Any],
                    extra: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write model + training state for ``state['step']`` atomically; keep the newest ``keep`` checkpoints."""
    final = checkpoint_dir(output_dir, int(state["step"]))
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        save_pretrained(model, tmp, extra=extra)
        torch.save(state, tmp / STATE_NAME)
        with open(tmp / STATE_NAME, "rb") as f:
            os.fsync(f.fileno())
        if final.exists():  # same step written again (e.g. epoch end right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(final.parent, keep)
    return final


def _prune(ckpt_root: Path, keep: int) -> None:
    complete = list_checkpoints(ckpt_root.parent)
    for path in complete[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for stale in ckpt_root.glob(".tmp-*"):  # left by a crash; never a complete checkpoint
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# -- finding and reading ----------------------------------------------------------------------------------------------
def is_complete(path: str | os.PathLike) -> bool:
    path = Path(path)
    return all((path / name).is_file() for name in (CONFIG_NAME, WEIGHTS_NAME, STATE_NAME))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``<output_dir>/checkpoints``, oldest first (by step)."""
    root = Path(output_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run folder, or None when there is none."""
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """``None`` -> None; ``"auto"`` -> newest complete checkpoint in ``output_dir`` (None if the run is new);
    a path -> that checkpoint folder (or the folder holding the given file), which must be complete."""
    if resume is None:
        return None
    if resume == "auto":
        return find_latest_checkpoint(output_dir)
    path = Path(resume)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"--resume: no checkpoint at {resume}")
    if not is_complete(path):
        nested = find_latest_checkpoint(path)  # a run folder was given
        if nested is None:
            raise FileNotFoundError(f"--resume: {path} is not a complete checkpoint (needs {CONFIG_NAME}, "
                                    f"{WEIGHTS_NAME}, {STATE_NAME}) and holds no checkpoints/step_* folder")
        return nested
    return path


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(Path(path) / STATE_NAME, map_location="cpu", weights_only=True)


def restore_training_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                                scaler: Any | None, device: torch.device | str) -> dict[str, Any]:
    """Load a checkpoint folder's weights, optimizer and (when both exist) grad-scaler state in place; return the
    training-state dict for the caller's own counters and RNG restoration."""
    from safetensors.torch import load_file

    state = load_training_state(path)
    model.load_state_dict(load_file(str(Path(path) / WEIGHTS_NAME), device=str(device)))
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    return state
