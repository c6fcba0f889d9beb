"""Run state: the crash-safe snapshots a run resumes from (the run lock is :mod:`.run_lock`).

``<output_dir>/checkpoints/step_00001234/`` holds

- ``config.json`` + ``model.safetensors``: the model in our format (:func:`crate_mae.save_pretrained`), loadable by
  every other tool (``crate_mae.from_pretrained``, ``load_encoder``, analysis);
- ``training_state.pt``: optimizer, grad scaler, step / epoch / step-in-epoch, schedule, the resolved config and the
  RNG states of every rank (torch CPU + this rank's CUDA device, numpy, python), as tensors and plain containers
  only, so it loads with ``torch.load(weights_only=True)``.

A snapshot is assembled in a hidden ``.tmp-*`` folder and renamed into place in one ``os.replace``; a folder named
``step_*`` is therefore always complete, and a crash mid-write leaves only a ``.tmp-*`` folder that is ignored and
cleaned up later. Saving a step that already has a snapshot writes a new revision (``step_00001234.1``) and deletes
the old one only after the new one is in place, so at every instant a complete snapshot exists.

The names on disk (``checkpoints/``, ``step_*``, ``training_state.pt``) are those of earlier versions, so their runs
resume; in the code, "checkpoint" means weight files only (:mod:`crate_mae.io`).
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
from safetensors.torch import load_file

from ..io import CONFIG_NAME, WEIGHTS_NAME, save_pretrained
from ..utils import fsync_dir, torch_load, writing

STATE_NAME = "training_state.pt"
CKPT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d+)(?:\.(\d+))?$")


class DamagedRunStateError(ValueError):
    """A run-state folder that has every file but cannot be read back (truncated, corrupt, non-finite)."""


# -- RNG --------------------------------------------------------------------------------------------------------------
def capture_rng(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Every RNG this process uses, as tensors / ints / lists (weights_only-loadable). On CUDA only this rank's
    device is saved, so a run state resumes on a machine with a different number of visible GPUs."""
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # the legacy form, as the global MT19937 generator gives it
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gauss": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    device = torch.device(device)
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device | str = "cpu") -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    device = torch.device(device)
    cuda = state.get("cuda")
    if device.type == "cuda" and isinstance(cuda, torch.Tensor):
        torch.cuda.set_rng_state(cuda, device)


# -- writing ----------------------------------------------------------------------------------------------------------
def run_state_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / CKPT_DIR / f"step_{step:08d}"


def _scan(root: Path) -> list[tuple[int, int, Path]]:
    """(step, revision, path) of every ``step_*`` folder under ``root``, complete or not, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), int(m.group(2) or 0), p))
    return sorted(found)


def save_run_state(
    output_dir: str | os.PathLike,
    model: nn.Module,
    state: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write model + training state for ``state['step']`` atomically; keep the newest ``keep`` snapshots.

    A full disk raises :class:`crate_mae.utils.NoSpaceError`; the folder being written is removed and every
    existing snapshot is left as it was."""
    step = int(state["step"])
    root = Path(output_dir) / CKPT_DIR
    revisions = [rev for s, rev, _ in _scan(root) if s == step]
    final = run_state_dir(output_dir, step)
    if revisions:  # the same step again (e.g. a stop right after a periodic save): a new name, never a delete first
        final = final.with_name(f"{final.name}.{max(revisions) + 1}")
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with writing(tmp):
            tmp.mkdir(parents=True)
            save_pretrained(model, tmp, extra=extra)
            with open(tmp / STATE_NAME, "wb") as f:  # a Python file object, so a full disk surfaces as OSError
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    _prune(root, keep, final)
    return final


def _prune(root: Path, keep: int, newest: Path) -> None:
    m = _STEP_RE.match(newest.name)
    assert m is not None  # the folder just written has a run-state name
    step = int(m.group(1))
    for s, _, path in _scan(root):  # older revisions of the step just written
        if s == step and path != newest:
            shutil.rmtree(path, ignore_errors=True)
    for path in list_run_states(root.parent)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # left by a crash; never a complete snapshot
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


# -- finding and reading ----------------------------------------------------------------------------------------------
def is_complete(path: str | os.PathLike) -> bool:
    path = Path(path)
    return all((path / name).is_file() for name in (CONFIG_NAME, WEIGHTS_NAME, STATE_NAME))


def list_run_states(output_dir: str | os.PathLike) -> list[Path]:
    """Complete run states under ``<output_dir>/checkpoints``, oldest first (by step, then revision)."""
    return [p for _, _, p in _scan(Path(output_dir) / CKPT_DIR) if is_complete(p)]


def find_latest_run_state(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete run state of a run folder, or None when there is none."""
    ckpts = list_run_states(output_dir)
    return ckpts[-1] if ckpts else None


def resume_candidates(resume: str | None, output_dir: str | os.PathLike) -> list[Path]:
    """Run states to try, newest first. ``None`` -> []; ``"auto"`` -> every complete one in ``output_dir`` ([] if
    the run is new); a run folder -> its run states; a ``step_*`` folder or a file in it -> just that one, which
    must be complete."""
    if resume is None:
        return []
    if resume == "auto":
        return list_run_states(output_dir)[::-1]
    path = Path(resume)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"--resume: no checkpoint at {resume}")
    if is_complete(path):
        return [path]
    nested = list_run_states(path)[::-1]  # a run folder was given
    if not nested:
        raise FileNotFoundError(
            f"--resume: {path} is not a complete checkpoint (needs {CONFIG_NAME}, "
            f"{WEIGHTS_NAME}, {STATE_NAME}) and holds no checkpoints/step_* folder"
        )
    return nested


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The newest of :func:`resume_candidates` (None when there is none)."""
    found = resume_candidates(resume, output_dir)
    return found[0] if found else None


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """``training_state.pt`` of a run-state folder, read with ``weights_only=True``."""
    return torch_load(Path(path) / STATE_NAME)


def read_run_state(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(training state, weights) of a run-state folder; :class:`DamagedRunStateError` naming the file when
    either cannot be read or the weights are not finite."""
    path = Path(path)
    try:
        state = load_training_state(path)
    except ValueError as e:
        raise DamagedRunStateError(str(e)) from None
    missing = [
        k for k in ("step", "epoch", "iter_in_epoch", "optimizer") if not isinstance(state, dict) or k not in state
    ]
    if missing:
        raise DamagedRunStateError(f"{path / STATE_NAME} is not a training state (missing {', '.join(missing)})")
    try:
        weights = load_file(str(path / WEIGHTS_NAME))
    except Exception as e:
        raise DamagedRunStateError(
            f"{path / WEIGHTS_NAME} is damaged (truncated or corrupt): {str(e).splitlines()[0]}"
        ) from None
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise DamagedRunStateError(
            f"{path / WEIGHTS_NAME} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]})"
        )
    return state, weights
