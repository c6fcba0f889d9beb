"""Attention pictures: per head, where the cls token of an encoder layer looks.

For a chosen encoder layer (default the last) the softmax attention of its MSSA on the *unmasked* image is taken
(``model.attention_maps``: position table recomputed for the input grid, never written back into the model), and
the cls row over the patches gives one (h, w) map per head, upsampled to pixels with nearest-neighbour (one block per
patch, nothing invented between patches).

Masks follow DINO's ``visualize_attention.py``: per head keep the smallest set of patches that holds ``threshold``
(default 0.6) of the cls attention mass; the figure draws their contours over the photo.

Emergent segmentation (Yu et al., *Emergence of Segmentation with Minimalistic White-Box Transformers*, arXiv
2308.16271, which follows DINO's pictures): the last layer's per-head cls attention, each head's thresholded mask, and
the **union over heads** of those masks, a coarse foreground segmentation read off the attention alone
(:func:`segmentation_views`). ``segmentation.png`` (:func:`plot_segmentation`) shows the union and which head claims
each patch. The paper's own threshold is not given in the material available here; we use DINO's mass threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    return imgs[..., top : top + h, left : left + w]


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


@dataclass
class SegmentationViews:
    """What the attention of one layer says about the layout of an image, on the patch grid.

    attn:  (N, K, h, w) cls-row attention of each head over the patches;
    masks: (N, K, h, w) bool, per head the smallest patch set holding ``threshold`` of its attention mass;
    union: (N, h, w) bool, patches kept by at least one head (the coarse segmentation);
    owner: (N, h, w) int, the head whose max-normalised attention is largest on each patch of the union, -1 outside.
    """

    attn: torch.Tensor
    masks: torch.Tensor
    union: torch.Tensor
    owner: torch.Tensor


@torch.no_grad()
def segmentation_views(
    model: nn.Module, imgs: torch.Tensor, layer: int = -1, threshold: float = 0.6
) -> SegmentationViews:
    """The emergent-segmentation views of layer ``layer`` (default the last) for any model with ``attention_maps``."""
    attn = cls_attention(model, imgs, layer)
    return views_from_attention(attn, threshold)


def views_from_attention(attn: torch.Tensor, threshold: float = 0.6) -> SegmentationViews:
    """:class:`SegmentationViews` from per-head cls attention maps (N, K, h, w)."""
    masks = mass_threshold_masks(attn, threshold)
    union = masks.any(dim=1)
    scaled = attn / attn.flatten(-2).amax(-1).clamp_min(1e-12)[..., None, None]  # heads on a common 0..1 scale
    owner = torch.where(masks, scaled, torch.full_like(scaled, -1.0)).argmax(dim=1)
    return SegmentationViews(attn=attn, masks=masks, union=union, owner=torch.where(union, owner, -1))


def upsample_nearest(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, K, h, w) -> (N, K, h*p, w*p), each patch value repeated over its pixels."""
    return F.interpolate(maps.float(), scale_factor=patch_size, mode="nearest")


def _shade_outside(ax, photo: np.ndarray, mask: np.ndarray, color: str = "yellow") -> None:
    """The photo with the patches outside ``mask`` darkened and the mask's contour drawn."""
    from skimage.measure import find_contours

    ax.imshow(photo)
    shade = np.zeros(mask.shape + (4,))
    shade[..., 3] = np.where(mask, 0.0, 0.55)
    ax.imshow(shade)
    for c in find_contours(mask.astype(float), 0.5):
        ax.plot(c[:, 1], c[:, 0], color=color, lw=0.8)
    clean_axis(ax)


def _layer_number(model: nn.Module, layer: int) -> tuple[int, int]:
    """(1-based layer number, number of encoder layers) for titles; every model's config holds its depth."""
    n_layers = model.config.depth
    return layer % n_layers + 1, n_layers


def plot_attention(
    model: nn.Module,
    imgs: torch.Tensor,
    norm: Normalization,
    layer: int = -1,
    threshold: float = 0.6,
    max_heads: int | None = None,
):
    """Two rows per image: the photo, each head's map (nearest-upsampled, per-head colour scale) and the mean over
    heads; the photo, each head's mass-threshold mask as contours over the photo and the union of all heads'
    masks (the emergent segmentation)."""
    plt = pyplot()
    imgs = crop_to_patch_multiple(imgs, model.patch_size)
    views = segmentation_views(model, imgs, layer, threshold)
    heads = views.attn.shape[1] if max_heads is None else min(max_heads, views.attn.shape[1])
    attn = views.attn[:, :heads]
    p = model.patch_size
    masks = upsample_nearest(views.masks[:, :heads], p).cpu().numpy() > 0.5
    union = upsample_nearest(views.union[:, None], p)[:, 0].cpu().numpy() > 0.5
    maps = upsample_nearest(attn, p).cpu().numpy()
    mean_map = upsample_nearest(views.attn.mean(1, keepdim=True), p)[:, 0].cpu().numpy()
    photos = to_hwc(norm.denormalize(imgs))
    n = imgs.shape[0]
    layer_no, n_layers = _layer_number(model, layer)
    fig, axes = plt.subplots(2 * n, heads + 2, figsize=(1.6 * (heads + 2), 3.3 * n + 0.4), squeeze=False)
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
            _shade_outside(axes[2 * i + 1][k + 1], photos[i], masks[i, k])
        ax = axes[2 * i][heads + 1]
        ax.imshow(mean_map[i], cmap="inferno", interpolation="nearest")
        clean_axis(ax)
        _shade_outside(axes[2 * i + 1][heads + 1], photos[i], union[i], color="cyan")
        if i == 0:
            ax.set_title("mean of heads", fontsize=7)
            axes[1][heads + 1].set_title(f"union of {views.attn.shape[1]} heads", fontsize=7)
    fig.suptitle(
        f"encoder layer {layer_no}/{n_layers}: cls-token attention per head (nearest-upsampled), "
        f"DINO masks keeping {threshold:.0%} of the attention mass, and their union over heads",
        fontsize=9,
    )
    fig.subplots_adjust(wspace=0.04, hspace=0.08, top=0.94)  # tight_layout is slow on big grids
    return fig


def plot_segmentation(
    model: nn.Module, imgs: torch.Tensor, norm: Normalization, layer: int = -1, threshold: float = 0.6
):
    """One row per image: photo | union of the heads' masks over the photo | the union coloured by the head that
    claims each patch (largest max-normalised attention among the heads whose mask holds it)."""
    plt = pyplot()
    import matplotlib

    imgs = crop_to_patch_multiple(imgs, model.patch_size)
    views = segmentation_views(model, imgs, layer, threshold)
    p = model.patch_size
    union = upsample_nearest(views.union[:, None], p)[:, 0].cpu().numpy() > 0.5
    owner = upsample_nearest(views.owner[:, None].float(), p)[:, 0].cpu().numpy().astype(int)
    photos = to_hwc(norm.denormalize(imgs))
    K = views.attn.shape[1]
    palette = matplotlib.colormaps["tab20" if K > 10 else "tab10"]
    n = imgs.shape[0]
    layer_no, n_layers = _layer_number(model, layer)
    fig, axes = plt.subplots(n, 3, figsize=(7, 2.4 * n + 0.5), squeeze=False)
    for i in range(n):
        axes[i][0].imshow(photos[i])
        clean_axis(axes[i][0])
        _shade_outside(axes[i][1], photos[i], union[i], color="cyan")
        colours = np.zeros(owner[i].shape + (4,))
        inside = owner[i] >= 0
        colours[inside] = [palette(k % palette.N) for k in owner[i][inside]]
        axes[i][2].imshow(photos[i])
        axes[i][2].imshow(colours, alpha=0.65, interpolation="nearest")
        clean_axis(axes[i][2])
        kept = views.union[i].float().mean().item()
        axes[i][1].set_xlabel(f"{kept:.0%} of patches", fontsize=7)
    for j, title in enumerate(("photo", "union of the heads' masks", f"which head (of {K}) claims each patch")):
        axes[0][j].set_title(title, fontsize=8)
    fig.suptitle(
        f"emergent segmentation, encoder layer {layer_no}/{n_layers}: per-head cls attention thresholded "
        f"at {threshold:.0%} of its mass (DINO), union over heads",
        fontsize=8,
    )
    fig.subplots_adjust(wspace=0.04, hspace=0.12, top=1 - 0.7 / (2.4 * n + 0.5))  # title just above the grid
    return fig


def save_segmentation(
    model: nn.Module, imgs: torch.Tensor, norm: Normalization, path: str | Path, layer: int = -1, threshold: float = 0.6
) -> Path:
    return save_figure(plot_segmentation(model, imgs, norm, layer, threshold), path)


def save_attention(
    model: nn.Module,
    imgs: torch.Tensor,
    norm: Normalization,
    path: str | Path,
    layer: int = -1,
    threshold: float = 0.6,
    max_heads: int | None = None,
) -> Path:
    return save_figure(plot_attention(model, imgs, norm, layer, threshold, max_heads), path)
