"""Attention pictures: per head, where the cls token of an encoder layer looks.

For a chosen encoder layer (default the last) the softmax attention of its MSSA on the *unmasked* image is taken
(``model.attention_maps``: position table recomputed for the input grid, never written back into the model), and
the cls row over the patches gives one (h, w) map per head, upsampled to pixels with nearest-neighbour (one block per
patch, nothing invented between patches).

Masks follow DINO's ``visualize_attention.py``: per head keep the smallest set of patches that holds ``threshold``
(default 0.6) of the cls attention mass; the figure draws their contours over the photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .figures import clean_axis, pyplot, save_figure, to_hwc
from .inputs import Normalization


def crop_to_patch_multiple(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Centre-crop (N, C, H, W) so H and W are multiples of the patch size (DINO crops the same way)."""
    H, W = imgs.shape[-2:]
    h, w = H - H % patch_size, W - W % patch_size
    if h == 0 or w == 0:
        raise ValueError(f"image {H}x{W} is smaller than the patch size {patch_size}")
    top, left = (H - h) // 2, (W - w) // 2
    return imgs[..., top:top + h, left:left + w]


@torch.no_grad()
def cls_attention(model: nn.Module, imgs: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """cls-row attention over the patches of encoder layer ``layer``: (N, heads, h, w); rows sum to <= 1 (the
    cls-to-cls weight is dropped)."""
    imgs = crop_to_patch_multiple(imgs, model.patch_size)
    h, w = model.grid_size(imgs)
    attn = model.attention_maps(imgs, layer=layer).float()
    return attn[:, :, 0, 1:].reshape(imgs.shape[0], -1, h, w)


def mass_threshold_masks(attn: torch.Tensor, threshold: float = 0.6) -> torch.Tensor:
    """DINO masks: per map (..., h, w) keep the smallest set of cells holding ``threshold`` of its mass.

    Sort ascending, normalise by the total, cumulative sum; a cell is kept where the cumulative mass is above
    1 - threshold. Returns a boolean tensor of the same shape.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    flat = attn.flatten(-2)
    vals, idx = torch.sort(flat, dim=-1)
    cum = torch.cumsum(vals / vals.sum(-1, keepdim=True).clamp_min(1e-12), dim=-1)
    keep_sorted = cum > (1.0 - threshold)
    keep = torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)
    return keep.view_as(attn)


def upsample_nearest(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, K, h, w) -> (N, K, h*p, w*p), each patch value repeated over its pixels."""
    return F.interpolate(maps.float(), scale_factor=patch_size, mode="nearest")


def plot_attention(model: nn.Module, imgs: torch.Tensor, norm: Normalization, layer: int = -1,
                   threshold: float = 0.6, max_heads: int | None = None):
    """Two rows per image: the photo then each head's map (nearest-upsampled, per-head colour scale); the photo then
    each head's mass-threshold mask as contours over the photo."""
    from skimage.measure import find_contours

    plt = pyplot()
    imgs = crop_to_patch_multiple(imgs, model.patch_size)
    attn = cls_attention(model, imgs, layer)
    heads = attn.shape[1] if max_heads is None else min(max_heads, attn.shape[1])
    attn = attn[:, :heads]
    masks = upsample_nearest(mass_threshold_masks(attn, threshold), model.patch_size).cpu().numpy() > 0.5
    maps = upsample_nearest(attn, model.patch_size).cpu().numpy()
    photos = to_hwc(norm.denormalize(imgs))
    n = imgs.shape[0]
    n_layers = len(model.encoder.blocks) if hasattr(model, "encoder") else len(model.blocks)
    layer_no = layer % n_layers + 1
    fig, axes = plt.subplots(2 * n, heads + 1, figsize=(1.6 * (heads + 1), 3.3 * n + 0.4), squeeze=False)
    for i in range(n):
        for r in (0, 1):
            ax = axes[2 * i + r][0]
            ax.imshow(photos[i])
            clean_axis(ax)
            ax.set_ylabel("cls attention" if r == 0 else f"{threshold:.0%} mass", fontsize=7)
        for k in range(heads):
            ax = axes[2 * i][k + 1]
            ax.imshow(maps[i, k], cmap="inferno", interpolation="nearest")
            clean_axis(ax)
            if i == 0:
                ax.set_title(f"head {k}", fontsize=7)
            ax = axes[2 * i + 1][k + 1]
            ax.imshow(photos[i])
            shade = np.zeros(masks[i, k].shape + (4,))
            shade[..., 3] = np.where(masks[i, k], 0.0, 0.55)  # darken the patches outside the mask
            ax.imshow(shade)
            for c in find_contours(masks[i, k].astype(float), 0.5):
                ax.plot(c[:, 1], c[:, 0], color="yellow", lw=0.8)
            clean_axis(ax)
    fig.suptitle(f"encoder layer {layer_no}/{n_layers}: cls-token attention per head (nearest-upsampled) and "
                 f"DINO masks keeping {threshold:.0%} of the attention mass", fontsize=9)
    fig.subplots_adjust(wspace=0.04, hspace=0.08, top=0.94)  # tight_layout is slow on big grids
    return fig


def save_attention(model: nn.Module, imgs: torch.Tensor, norm: Normalization, path: str | Path, layer: int = -1,
                   threshold: float = 0.6, max_heads: int | None = None) -> Path:
    return save_figure(plot_attention(model, imgs, norm, layer, threshold, max_heads), path)
