"""Models and images for the analysis tools: a checkpoint or a preset name, a folder or files of photos.

Normalisation and size follow the checkpoint (:func:`crate_mae.data.resolve_data_config`).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms.functional as TF

from ..data import IMAGENET_MEAN, IMAGENET_STD, UnreadableImageError, denormalize, eval_transform, resolve_data_config
from ..data.demo import demo_images as _demo_images
from ..data.folder import DECODE_ERRORS, pil_rgb_loader, walk_images

log = logging.getLogger("crate_mae.data")


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """TF32 off for convolutions and matmuls (restored on exit). cuDNN convolutions default to TF32 on Ampere and
    newer GPUs, which rounds the patch embedding to 10 mantissa bits before the float64 rate computations: GPU
    and CPU measurements of the same checkpoint would differ."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (N, C, H, W) -> pixels in [0, 1] (clamped), for display."""
        return denormalize(x, self.mean, self.std)


def model_normalization(model: nn.Module) -> Normalization:
    dc = resolve_data_config(model)
    return Normalization(tuple(dc["mean"]), tuple(dc["std"]))


def find_images(sources: str | Path | Sequence[str | Path], num_images: int | None = None) -> list[Path]:
    """Image files from a folder (searched recursively, e.g. an ImageFolder split) or a list of files/folders.

    With ``num_images`` the files are taken evenly spaced over the sorted list, so an ImageFolder split gives
    images of different classes rather than the first class only.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            files += [Path(f) for f in walk_images(p)]
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"image path not found: {p}")
    if not files:
        raise FileNotFoundError(f"no image files found in {', '.join(map(str, sources))}")
    if num_images is not None and num_images < len(files):
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        idx = np.linspace(0, len(files) - 1, num_images).round().astype(int)
        files = [files[i] for i in idx]
    return files


def load_images(
    files: Sequence[str | Path],
    img_size: int | None,
    norm: Normalization,
    patch_size: int | None = None,
    strict: bool = False,
) -> torch.Tensor:
    """Normalised batch (N, 3, H, W). ``img_size``: the eval view with ``crop_pct=1`` (shorter side resized to
    ``img_size``, centre square kept, nothing else cut). ``img_size=None``: each photo at its own size, centre-cropped
    to a multiple of ``patch_size``; the photos must then share a size.

    The corrupt-file policy of training and ``features``: an unreadable file is skipped with one warning naming it,
    or with ``strict`` raises :class:`~crate_mae.data.UnreadableImageError`; none readable is a ValueError."""

    tf = eval_transform(img_size, crop_pct=1.0, mean=norm.mean, std=norm.std) if img_size is not None else None
    out = []
    for f in files:
        try:
            im = pil_rgb_loader(str(f))
        except DECODE_ERRORS as e:
            if strict:
                raise UnreadableImageError(f"cannot read image file {f}: {type(e).__name__}: {e} (--strict)") from e
            log.warning("skipping unreadable image %s (%s: %s)", f, type(e).__name__, e)
            continue
        if tf is not None:
            out.append(tf(im))
            continue
        w, h = im.size
        if patch_size:
            if w < patch_size or h < patch_size:
                raise ValueError(f"{f} ({w}x{h}) is smaller than the patch size {patch_size}")
            im = TF.center_crop(im, [h - h % patch_size, w - w % patch_size])
        out.append(TF.normalize(TF.to_tensor(im), list(norm.mean), list(norm.std)))
    if not out:
        raise ValueError(f"none of the {len(files)} image files could be read (first: {files[0] if files else '-'})")
    sizes = {tuple(t.shape) for t in out}
    if len(sizes) > 1:
        raise ValueError(f"images have different sizes {sorted(sizes)}; pass an img_size to resize them")
    return torch.stack(out)


def demo_images(img_size: int, n: int, norm: Normalization) -> torch.Tensor:
    """The scikit-image photos embedded with the library (:mod:`crate_mae.data.demo`), normalised with ``norm``."""
    return _demo_images(img_size, n, norm.mean, norm.std)
