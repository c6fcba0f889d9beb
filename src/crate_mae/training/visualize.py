"""Reconstruction pictures: masked input | reconstruction | original, one row per image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn


@torch.no_grad()
def reconstruct(model: nn.Module, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
    """Run the autoencoder and return images in the model's input space (still normalised):

    ``masked`` (masked patches set to 0, i.e. the dataset mean colour once un-normalised), ``recon`` (visible
    patches from the input, masked ones predicted), ``pred`` (all patches predicted), ``mask`` (N, L), ``loss``.

    With ``model.norm_pix_loss`` the network predicts per-patch standardised pixels; they are mapped back with the
    *target's own* patch mean and variance (``pred * sqrt(var + 1e-6) + mean``), the convention of the MAE demo.
    """
    was_training = model.training
    model.eval()
    out = model(imgs, mask_ratio=mask_ratio, noise=noise)
    model.train(was_training)
    target = model.patchify(imgs)
    pred = out.pred.float()
    if getattr(model, "norm_pix_loss", False):
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    m = out.mask.unsqueeze(-1)
    grid = model.grid_size(imgs)
    return {
        "masked": model.unpatchify(target * (1 - m), grid),
        "recon": model.unpatchify(target * (1 - m) + pred * m, grid),
        "pred": model.unpatchify(pred, grid),
        "mask": out.mask,
        "loss": out.loss.detach(),
    }


def save_reconstruction_grid(model: nn.Module, imgs: torch.Tensor, path: str | os.PathLike,
                             mean: Sequence[float], std: Sequence[float], mask_ratio: float = 0.75,
                             noise: torch.Tensor | None = None, title: str | None = None) -> Path:
    """Write a PNG with columns masked input / reconstruction / original for each image of ``imgs`` (normalised
    with ``mean`` / ``std``). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = reconstruct(model, imgs, mask_ratio, noise)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def to_img(x: torch.Tensor) -> torch.Tensor:
        return (x.float().cpu() * std_t + mean_t).clamp(0, 1).permute(0, 2, 3, 1)

    masked, recon, orig = to_img(r["masked"]), to_img(r["recon"]), to_img(imgs)
    recon_label = "reconstruction\n(un-normalised with target patch stats)" \
        if getattr(model, "norm_pix_loss", False) else "reconstruction"
    n = imgs.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n + 0.6), squeeze=False)
    for i in range(n):
        for j, (img, label) in enumerate(((masked[i], f"masked input ({mask_ratio:.0%})"), (recon[i], recon_label),
                                          (orig[i], "original"))):
            ax = axes[i][j]
            ax.imshow(img.numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=8)
    fig.suptitle(title or f"masked-patch loss {r['loss'].item():.4f}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
