"""Tokens in, tokens out: the fixed position table and the two masking frames shared by CRATE-MAE and ViT-MAE.

Two ways to hide patches from a masked autoencoder, both in the official code:

- *mask tokens in the encoder* (Ma-Lab-Berkeley/CRATE ``crate_ae.py``, the paper's frame, also its ViT-MAE
  baseline): every masked patch embedding is replaced by one learned mask token, cls is prepended and the position
  table is added to all 1 + L tokens; the encoder sees the whole sequence.
- *visible-only encoder* (facebookresearch/mae ``models_mae.py``): the table is added to the patch embeddings, only
  the kept ones (plus cls) enter the encoder; mask tokens and the table are added again before the decoder.

Tables are fp32 and added in fp32, so under autocast the residual stream is promoted to fp32 exactly as in the
official code, whose table is an fp32 parameter.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from .layers import sincos_pos_embed

POS_EMBED_MODES = ("interpolate", "sincos")


class PositionTable(nn.Module):
    """The fixed 2-D sin-cos table as a function of the patch grid: ``table(grid) -> (1, 1 + h*w, D)`` fp32.

    For the training grid it is the table itself. For another grid (inputs of another size):
    ``mode='interpolate'`` (default, as the official code's ``interpolate_pos_encoding``, which is DINO's) resizes
    the training table bicubically with scale factor ``(h + 0.1) / h0``; ``mode='sincos'`` recomputes the sin-cos
    table for the new grid. Tables for other grids are computed once per (grid, device) and cached.
    """

    table: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, embed_dim: int, grid_size: tuple[int, int], mode: str = "interpolate"):
        super().__init__()
        if mode not in POS_EMBED_MODES:
            raise ValueError(f"pos_embed_mode must be one of {POS_EMBED_MODES}, got {mode!r}")
        self.mode = mode
        self.grid_size = cast("tuple[int, int]", tuple(grid_size))  # (h, w), also when given as a list
        # Never trained, never saved: the official checkpoints store it frozen; we recompute it.
        self.register_buffer("table", sincos_pos_embed(embed_dim, self.grid_size).unsqueeze(0), persistent=False)
        self._cache: dict[tuple, torch.Tensor] = {}

    @property
    def num_entries(self) -> int:
        return self.table.shape[1]

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        grid = cast("tuple[int, int]", tuple(grid))
        if grid == self.grid_size:
            return self.table
        key = (grid, self.table.device, self.mode)
        if key not in self._cache:
            self._cache[key] = (
                self._resize(grid)
                if self.mode == "interpolate"
                else sincos_pos_embed(self.table.shape[-1], grid).unsqueeze(0).to(self.table.device)
            )
        return self._cache[key]

    def _resize(self, grid: tuple[int, int]) -> torch.Tensor:
        (h0, w0), (h, w) = self.grid_size, grid
        patch = self.table[:, 1:].float().reshape(1, h0, w0, -1).permute(0, 3, 1, 2)
        # DINO's +0.1 keeps floor(h0 * scale) == h under floating-point error; the scale factor (not the size)
        # sets the sampling positions, as in the official code.
        patch = F.interpolate(patch, scale_factor=((h + 0.1) / h0, (w + 0.1) / w0), mode="bicubic", align_corners=False)
        if patch.shape[-2:] != (h, w):  # cannot happen for positive grids; guards the arithmetic above
            raise RuntimeError(f"interpolated position table has grid {tuple(patch.shape[-2:])}, expected {grid}")
        patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([self.table[:, :1].float(), patch], dim=1)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, mode={self.mode!r}"


class LearnedPositionTable(nn.Module):
    """A trained position table (supervised CRATE's ``pos_embedding``): ``table(grid) -> (1, 1 + h*w, D)``, one row
    per token, cls first, initialised N(0, 1) as the official code does.

    For the training grid it is the parameter itself. For another grid the patch rows are resampled bicubically
    (timm's ``resample_abs_pos_embed``, the cls row kept); the official code instead takes the first ``1 + h*w`` rows,
    which places patches at wrong positions and fails for larger grids. Resampled tables are not cached (the
    parameter trains).
    """

    def __init__(self, embed_dim: int, grid_size: tuple[int, int]):
        super().__init__()
        self.grid_size = cast("tuple[int, int]", tuple(grid_size))  # (h, w), also when given as a list
        self.table = nn.Parameter(torch.randn(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))

    @property
    def num_entries(self) -> int:
        return self.table.shape[1]

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        grid = cast("tuple[int, int]", tuple(grid))
        if grid == self.grid_size:
            return self.table
        return resample_abs_pos_embed(self.table, list(grid), list(self.grid_size), num_prefix_tokens=1)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, learned"


def tokens_with_mask_tokens(
    patches: torch.Tensor,
    cls_token: torch.Tensor,
    pos: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask tokens in the encoder: masked patch embeddings -> ``mask_token``, prepend cls, add ``pos`` to all.

    ``patches`` (N, L, D), ``mask`` (N, L) with 1 = masked (None: nothing masked) -> (N, 1 + L, D)."""
    if mask is not None:
        assert mask_token is not None, "a mask needs a mask_token"
        patches = torch.where(mask.unsqueeze(-1).bool(), mask_token, patches)
    x = torch.cat([cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)
    return x + pos


def visible_tokens(
    patches: torch.Tensor, cls_token: torch.Tensor, pos: torch.Tensor, ids_keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Visible-only encoder input: add ``pos`` to the patch embeddings, keep ``ids_keep`` (None: all), prepend
    cls + its table row. (N, L, D) -> (N, 1 + L_keep, D)."""
    x = patches + pos[:, 1:]
    if ids_keep is not None:
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    cls = (cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1)


def restore_with_mask_tokens(x: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """The MAE decoder's input order: cls + visible tokens (N, 1 + L_keep, D) -> cls + all L tokens in raster
    order, mask tokens where patches were removed."""
    n, length = ids_restore.shape
    fill = mask_token.expand(n, length + 1 - x.shape[1], -1)
    rest = torch.cat([x[:, 1:], fill], dim=1)
    rest = torch.gather(rest, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return torch.cat([x[:, :1], rest], dim=1)
