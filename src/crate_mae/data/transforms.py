"""Image transforms: MAE pretraining augmentation, the standard evaluation crop, and the inverse normalisation.

All transforms take a PIL image (or a uint8 CHW tensor) and return a float32 ``(C, H, W)`` tensor normalised as
``(x / 255 - mean) / std``. Random choices use the *torch* global generator (torchvision v2), so a caller that seeds
torch before each sample (``engine.sampling.SeededSamples``) gets reproducible augmentation in any worker.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from ..models.base import Capabilities

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_BICUBIC = v2.InterpolationMode.BICUBIC


def resolve_data_config(model: torch.nn.Module) -> dict:
    """The preprocessing a model expects, the one place it is read: ``img_size``, ``mean``, ``std`` from the
    ``data_config`` its weights came with (written by pretraining / fine-tuning), else the model's own ``img_size``
    and ImageNet statistics."""
    ours = isinstance(model, Capabilities)  # a foreign nn.Module has neither data_config nor config
    saved = model.data_config if ours else {}
    size = saved.get("img_size") or (model.config.img_size if ours else 224)
    return {
        "img_size": int(size[0] if isinstance(size, (list, tuple)) else size),
        "mean": list(saved.get("mean", IMAGENET_MEAN)),
        "std": list(saved.get("std", IMAGENET_STD)),
    }


def check_img_size(img_size: int) -> int:
    """``img_size`` if it is a positive integer, else a ValueError naming it."""
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0:
        raise ValueError(f"img_size must be a positive integer, got {img_size!r}")
    return img_size


def check_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    """Per-channel normalisation statistics as float lists, or a ValueError (empty, unequal lengths, std <= 0)."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != len(std) or not mean:
        raise ValueError(f"mean {mean} and std {std} must be non-empty and of equal length (one entry per channel)")
    if any(s <= 0 for s in std):
        raise ValueError(f"every std entry must be > 0, got {std}")
    return mean, std


def to_normalized_tensor(mean: list[float], std: list[float]) -> list[v2.Transform]:
    """PIL/uint8 -> float32 in [0, 1] (ToTensor) -> (x - mean) / std."""
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def pretrain_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: tuple[float, float] = (0.2, 1.0),
    hflip: bool = True,
) -> v2.Compose:
    """MAE pretraining augmentation (facebookresearch/mae ``main_pretrain.py``):
    RandomResizedCrop(img_size, scale, ratio 3/4..4/3, bicubic) -> horizontal flip (p=0.5) -> ToTensor -> Normalize."""
    check_img_size(img_size)
    mean, std = check_mean_std(mean, std)
    lo, hi = (float(s) for s in scale)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {tuple(scale)}")
    steps: list[v2.Transform] = [v2.RandomResizedCrop(img_size, scale=(lo, hi), interpolation=_BICUBIC, antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + to_normalized_tensor(mean, std))


def book_pretrain_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    hflip: bool = True,
    blur_p: float = 0.5,
    solarize_p: float = 0.2,
) -> v2.Compose:
    """The CRATE-MAE recipe of the authors' book (Ma-Lab-Berkeley/deep-representation-learning-book, ch. 7): resize
    the shorter edge to ``img_size * 256 / 224``, random crop ``img_size``, "flips, Gaussian blurs, solarization".
    The book gives no probabilities or blur widths; we use the usual self-supervised ones (BYOL / DINO): blur with
    probability ``blur_p``, sigma in [0.1, 2.0] and a kernel of ~10 % of the image, solarise (threshold 0.5) with
    probability ``solarize_p``."""
    check_img_size(img_size)
    mean, std = check_mean_std(mean, std)
    kernel = max(3, (img_size // 10) | 1)  # odd, ~10 % of the side (23 at 224, as BYOL)
    steps: list[v2.Transform] = [
        v2.Resize(round(img_size * 256 / 224), interpolation=_BICUBIC, antialias=True),
        v2.RandomCrop(img_size),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomSolarize(0.5, p=solarize_p),
        v2.Normalize(mean, std),
    ]
    return v2.Compose(steps)


def eval_transform(
    img_size: int, crop_pct: float = 0.875, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """Deterministic evaluation view (MAE / timm): resize the shorter side to ``floor(img_size / crop_pct)``
    (bicubic), centre-crop ``img_size`` x ``img_size``, ToTensor, Normalize. ``crop_pct=1.0`` resizes the shorter
    side to ``img_size`` and centre-crops the longer one (no border is thrown away on square images)."""
    check_img_size(img_size)
    mean, std = check_mean_std(mean, std)
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    # floor like timm; the epsilon keeps e.g. 224 / 0.875 = 256 from flooring to 255 by rounding error.
    resize = int(img_size / crop_pct + 1e-6)
    return v2.Compose(
        [v2.Resize(resize, interpolation=_BICUBIC, antialias=True), v2.CenterCrop(img_size)]
        + to_normalized_tensor(mean, std)
    )


def to_tensor_transform() -> v2.Compose:
    """The default when a dataset is given no transform: PIL -> float32 (C, H, W) in [0, 1], no resizing."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def denormalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Invert ``Normalize``: ``x * std + mean`` per channel, clamped to [0, 1] (for pictures).

    ``x`` is ``(C, H, W)`` or ``(N, C, H, W)``; channels are dimension -3. Returns float32 on ``x``'s device."""
    if x.ndim not in (3, 4):
        raise ValueError(f"denormalize expects a (C, H, W) or (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    mean, std = check_mean_std(mean, std)
    if x.shape[-3] != len(mean):
        raise ValueError(
            f"tensor has {x.shape[-3]} channels (dim -3 of shape {tuple(x.shape)}) but mean/std have "
            f"{len(mean)} entries"
        )
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x.float() * s + m).clamp_(0.0, 1.0)


# -- timm's RandAugment under Pillow >= 13 -----------------------------------------------------------------------------
def fix_rand_augment_posterize(transform: Any) -> Any:
    """Give the posterize ops of timm's RandAugment in ``transform`` (a ``timm.data.create_transform`` pipeline)
    :func:`posterize_zero_bits` instead of timm's own, which Pillow >= 13 rejects at 0 bits. Returns ``transform``,
    changed in place."""
    for t in transform.transforms:
        for op in getattr(t, "ops", ()):
            if getattr(op.aug_fn, "__name__", "") == "posterize":
                op.aug_fn = posterize_zero_bits
    return transform


def posterize_zero_bits(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize for Pillow >= 13, which rejects 0 bits: RandAugment's increasing posterize reaches 0 bits at
    magnitude 10 (m9 + mstd noise), and older Pillow turned that into a black image, which is kept here."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)
