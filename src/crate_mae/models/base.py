"""The contract every network here keeps, so that other layers branch on stated facts instead of probing attributes.

- ``has_decoder`` / ``white_box``: class-level capabilities (a masked autoencoder that reconstructs; CRATE's
  MSSA + ISTA layers, whose coding rates and sparsity the analysis tools measure).
- ``config``: the constructor keywords (+ ``architecture``, and ``model`` for a registry preset), enough to rebuild it.
- ``data_config``: the preprocessing it was trained with (``img_size``, ``mean``, ``std``), filled in when weights are
  loaded and read through :func:`crate_mae.data.resolve_data_config`, never from ``config``.
- ``provenance``: where the weights came from (checkpoint path, random init, what a run recorded); reports only.
Models do not read or write files: that is :mod:`crate_mae.checkpoint`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .masking import masked_mse, normalize_patches, patchify, unpatchify


class Capabilities:
    has_decoder = False
    white_box = False

    def init_contract(self, **config: Any) -> None:
        self.config = config
        self.data_config: dict[str, Any] = {}
        self.provenance: dict[str, Any] = {}


class MaskedAutoencoder(Capabilities, nn.Module):
    """``forward(imgs, mask_ratio, noise) -> MAEOutput``, with the patch (un)folding and masked-patch loss shared by
    CRATE-MAE and ViT-MAE. Needs ``patch_size``, ``in_chans``, ``norm_pix_loss`` and ``grid_size(imgs)``."""

    has_decoder = True

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        self.grid_size(imgs)
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """(N, L, p*p*C) -> images; ``grid_size`` (h, w) defaults to a square grid."""
        if grid_size is None:
            side = int(round(x.shape[1] ** 0.5))
            grid_size = (side, side)
        return unpatchify(x, self.patch_size, grid_size, self.in_chans)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on masked patches against the (optionally per-patch normalised) pixels, in fp32."""
        target = patchify(imgs, self.patch_size)
        if self.norm_pix_loss:
            target = normalize_patches(target)
        return masked_mse(pred.float(), target.float(), mask)

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
                    ) -> dict[str, torch.Tensor]:
        """Images in the input's (normalised) space: ``masked`` (masked patches 0, the dataset mean colour once
        un-normalised), ``recon`` (visible patches from the input, masked ones predicted), ``pred`` (all
        predicted), and ``mask`` (N, L), ``loss``. With ``norm_pix_loss`` the predictions are per-patch standardised
        pixels, mapped back with the *target's own* patch mean and variance (the MAE demo's convention)."""
        was_training = self.training
        self.eval()
        out = self(imgs, mask_ratio=mask_ratio, noise=noise)
        self.train(was_training)
        target = self.patchify(imgs)
        pred = out.pred.float()
        if self.norm_pix_loss:
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
        m = out.mask.unsqueeze(-1)
        grid = self.grid_size(imgs)
        return {"masked": self.unpatchify(target * (1 - m), grid),
                "recon": self.unpatchify(target * (1 - m) + pred * m, grid), "pred": self.unpatchify(pred, grid),
                "mask": out.mask, "loss": out.loss.detach()}
