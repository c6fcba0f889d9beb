"""Random patch masking and (un)patchify, exactly as the official MAE / CRATE-MAE code computes them."""

from __future__ import annotations

import torch


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    noise: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise.

    ``ids_shuffle = argsort(noise)`` ascending; the first ``int(L * (1 - mask_ratio))`` are kept.
    Returns ``(mask, ids_keep, ids_restore)`` with ``mask`` (N, L) float, 1 = masked, in raster order.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if noise is None:
        noise = torch.rand(batch, num_patches, device=device)
    elif noise.shape != (batch, num_patches):
        raise ValueError(f"noise must have shape (N, L) = {(batch, num_patches)}, got {tuple(noise.shape)}")
    len_keep = int(num_patches * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(batch, num_patches, device=noise.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return mask, ids_keep, ids_restore


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, h*w, p*p*C), channels last inside a patch (the MAE target layout)."""
    N, C, H, W = imgs.shape
    p = patch_size
    h, w = H // p, W // p
    x = imgs.reshape(N, C, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(N, h * w, p * p * C)


def unpatchify(x: torch.Tensor, patch_size: int, grid_size: tuple[int, int], in_chans: int = 3) -> torch.Tensor:
    """(N, h*w, p*p*C) -> (N, C, H, W), the inverse of :func:`patchify`."""
    N, L, _ = x.shape
    h, w = grid_size
    if h * w != L:
        raise ValueError(f"grid {grid_size} does not hold {L} patches")
    p = patch_size
    x = x.reshape(N, h, w, p, p, in_chans)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(N, in_chans, h * p, w * p)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-patch MSE over masked patches; over all patches when nothing is masked (mask_ratio = 0).

    Branch-free on purpose: a Python ``if`` on ``mask.sum()`` would sync with the device every step and break
    ``torch.compile`` graphs."""
    per_patch = (pred - target).pow(2).mean(dim=-1)
    masked = mask.sum()
    return torch.where(masked > 0, (per_patch * mask).sum() / masked.clamp_min(1), per_patch.mean())


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch mean/variance normalisation of the target (MAE's norm_pix_loss)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5
