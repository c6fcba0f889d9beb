"""Masked-completion pictures: masked input | prediction | prediction with visible patches pasted | original.

The mask is drawn from a ``seed``-ed generator, so the same command gives the same picture. With a norm-pix-loss
checkpoint the network predicts per-patch standardised pixels; they are mapped back to pixels with the *target's*
patch mean and variance (the MAE demo's convention, ``MaskedAutoencoder.reconstruct``), and the figure says so:
that step uses information the model did not see. Pretraining draws its per-epoch pictures with this module too.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .figures import clean_axis, pyplot, save_figure, to_hwc
from .inputs import Normalization


def mask_noise(model: nn.Module, imgs: torch.Tensor, seed: int) -> torch.Tensor:
    """The (N, L) noise that fixes which patches are masked (lowest noise is kept, as in the official code)."""
    h, w = model.grid_size(imgs)
    return torch.rand(imgs.shape[0], h * w, generator=torch.Generator().manual_seed(seed)).to(imgs.device)


@torch.no_grad()
def reconstruction_panels(
    model: nn.Module,
    imgs: torch.Tensor,
    norm: Normalization,
    mask_ratio: float = 0.75,
    seed: int = 0,
    noise: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Pixel-space (N, C, H, W) panels ``masked``, ``prediction``, ``pasted``, ``original`` and the scalar ``loss``;
    the mask comes from ``noise`` when given, else from ``seed``."""
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1) for a reconstruction, got {mask_ratio}")
    r = model.reconstruct(imgs, mask_ratio, noise if noise is not None else mask_noise(model, imgs, seed))
    pix = norm.denormalize
    # masked patches are 0 in the normalised space, so they show as the dataset mean colour
    return {
        "masked": pix(r["masked"]),
        "prediction": pix(r["pred"]),
        "pasted": pix(r["recon"]),
        "original": pix(imgs),
        "loss": r["loss"],
    }


def plot_reconstructions(
    model: nn.Module,
    imgs: torch.Tensor,
    norm: Normalization,
    mask_ratio: float = 0.75,
    seed: int = 0,
    title: str | None = None,
    noise: torch.Tensor | None = None,
):
    """A figure with one row per image and the four panels as columns."""
    plt = pyplot()
    p = reconstruction_panels(model, imgs, norm, mask_ratio, seed, noise)
    normpix = " (norm-pix: un-normalised with\nthe target's patch mean/var)" if model.norm_pix_loss else ""
    masking = "fixed masks" if noise is not None else f"seed {seed}"
    cols = [
        ("masked", f"masked input ({mask_ratio:.0%}, {masking})"),
        ("prediction", "prediction" + normpix),
        ("pasted", "prediction + visible patches" + normpix),
        ("original", "original"),
    ]
    n = imgs.shape[0]
    # Size the figure to the images so that the title sits right above the column titles: with a fixed height and
    # matplotlib's default margins, a band of empty space opened between them.
    width, wspace, hspace, top_in, bottom_in = 9.0, 0.04, 0.06, 0.55, 0.05
    panel_w = width / (4 + 3 * wspace)
    panel_h = panel_w * imgs.shape[-2] / imgs.shape[-1]
    height = n * panel_h + (n - 1) * hspace * panel_h + top_in + bottom_in
    fig, axes = plt.subplots(n, 4, figsize=(width, height), squeeze=False)
    arrays = {k: to_hwc(p[k]) for k, _ in cols}
    for i in range(n):
        for j, (k, label) in enumerate(cols):
            ax = axes[i][j]
            ax.imshow(arrays[k][i], interpolation="nearest")
            clean_axis(ax)
            if i == 0:
                ax.set_title(label, fontsize=8)
    fig.subplots_adjust(
        left=0, right=1, bottom=bottom_in / height, top=1 - top_in / height, wspace=wspace, hspace=hspace
    )  # tight_layout is slow on image grids
    fig.suptitle(
        title or f"masked-patch MSE {p['loss'].item():.4f} (normalised pixels) on these {n} images",
        fontsize=9,
        y=1 - 0.05 / height,
        va="top",
    )
    return fig


def save_reconstructions(
    model: nn.Module,
    imgs: torch.Tensor,
    norm: Normalization,
    path: str | Path,
    mask_ratio: float = 0.75,
    seed: int = 0,
    title: str | None = None,
    noise: torch.Tensor | None = None,
) -> Path:
    return save_figure(plot_reconstructions(model, imgs, norm, mask_ratio, seed, title, noise), path)
