"""Behaviour shared by every architecture."""

from __future__ import annotations

import torch

from .masking import masked_mse, normalize_patches, patchify, unpatchify


class SavePretrainedMixin:
    """``model.save_pretrained(dir)`` as in HF / timm: config.json + model.safetensors (see crate_mae.checkpoint);
    ``model.push_to_hub(repo_id)`` uploads them with a model card (optional extra ``crate-mae[hub]``)."""

    def save_pretrained(self, directory, extra=None):
        from ..checkpoint import save_pretrained

        return save_pretrained(self, directory, extra)

    def push_to_hub(self, repo_id, **kwargs):
        """Upload to the Hugging Face Hub (config, weights, model card); see :func:`crate_mae.hub.push_to_hub`."""
        from ..hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)


class MaskedImageModelMixin:
    """Patch (un)folding and the masked-patch loss, shared by CRATE-MAE and ViT-MAE.

    Needs ``patch_size``, ``in_chans``, ``norm_pix_loss`` and ``grid_size(imgs)`` (which validates the input).
    """

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
