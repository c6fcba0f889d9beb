"""The official CRATE-MAE computation, transcribed: the baseline every speed ratio is measured against.

:class:`OfficialCrateMAE` computes what Ma-Lab-Berkeley/CRATE ``model/crate_ae`` computes, in its order and with its
module tree, so an official state dict loads into it as is (``load_state_dict``, strict): PreNorm blocks, one
``qkv`` Linear used as query, key and value with the N x N attention materialised and softmaxed, heads rearranged
back, ``to_out`` (Linear + Dropout(0)); ISTA as three products ``relu(x + eta (D^T x - D^T D x) - eta lambda)``;
masking by gathering the visible patches, appending mask tokens and un-shuffling; the frozen sin-cos table
(``decoder_pos_embed``) added after that; decoder blocks ``y' = W LN(y); y' - MSSA(LN(y'))``. ``pos_embed`` and
``decoder_embed`` exist and are unused, as there. It is not used for training; ``tests/models`` check that it
reproduces the official fixtures and that :class:`~crate_mae.models.CrateMAE` computes the same function.

This module also owns the mapping between the official key names and ours (:func:`from_official`,
:func:`to_official`) and builds the official computation from one of our models (:func:`official_copy`).
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed

from .base import official_shape_kwargs
from .crate_mae import CrateMAE
from .layers import sincos_pos_embed
from .masking import masked_mse, patchify


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class Attention(nn.Module):
    """softmax((U^T x)(U^T x)^T / sqrt(p)) U^T x per head, materialised, then ``to_out``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        w = self.qkv(x).reshape(b, n, self.heads, d // self.heads).permute(0, 2, 1, 3)
        attn = torch.softmax(torch.matmul(w, w.transpose(-1, -2)) * self.scale, dim=-1)
        out = torch.matmul(F.dropout(attn, 0.0, self.training), w)
        return self.to_out(out.permute(0, 2, 1, 3).reshape(b, n, d))


class ISTA(nn.Module):
    """relu(x + eta * (D^T x - D^T D x) - eta * lambda) with the three products of the official code."""

    def __init__(self, dim: int, step_size: float, lambd: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.kaiming_uniform_(self.weight)
        self.step_size, self.lambd = step_size, lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtdx = F.linear(F.linear(x, self.weight), self.weight.t())
        dtx = F.linear(x, self.weight.t())
        return F.relu(x + (self.step_size * (dtx - dtdx) - self.step_size * self.lambd))


class Linear(nn.Module):
    """The decoder's square bias-free W (the official decoder ``FeedForward``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.kaiming_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, step_size: float, lambd: float):
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.ModuleList([PreNorm(dim, Attention(dim, heads)), PreNorm(dim, ISTA(dim, step_size, lambd))])]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in cast("Iterable[nn.ModuleList]", self.layers):  # each layer a ModuleList of two
            x = ff(attn(x) + x)
        return x


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleList([PreNorm(dim, Linear(dim)), PreNorm(dim, Attention(dim, heads))])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for ff, attn in cast("Iterable[nn.ModuleList]", self.layers):
            y = ff(x)
            x = y - attn(y)
        return x


class OfficialCrateMAE(nn.Module):
    """``forward(imgs, mask_ratio, noise) -> (loss, pred, mask, latent)`` as the official code (square images)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_depth: int = 12,
        decoder_num_heads: int | None = None,
        ista_step_size: float = 0.1,
        ista_lambda: float = 0.5,
        norm_pix_loss: bool = False,
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        table = sincos_pos_embed(embed_dim, self.patch_embed.grid_size).unsqueeze(0)
        self.pos_embed = nn.Parameter(table.clone(), requires_grad=False)
        self.blocks = nn.ModuleList(
            EncoderBlock(embed_dim, num_heads, ista_step_size, ista_lambda) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(embed_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder_pos_embed = nn.Parameter(table.clone(), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            DecoderBlock(embed_dim, decoder_num_heads or num_heads) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(embed_dim, patch_size**2 * in_chans)
        self.patch_size, self.norm_pix_loss, self.num_patches = patch_size, norm_pix_loss, n

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None):
        x = self.patch_embed(imgs)
        n, length, d = x.shape
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        keep = int(length * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, d))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x = torch.cat((self.cls_token.expand(n, -1, -1), x), dim=1)
        tokens = torch.cat([x[:, 1:], self.mask_token.repeat(n, length + 1 - x.shape[1], 1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).repeat(1, 1, d))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask

    def forward_decoder(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """The official ``prepare_tokens`` + blocks + norm on the unmasked image (training grid)."""
        x = self.patch_embed(imgs)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.decoder_pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        latent, mask = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent)
        target = patchify(imgs, self.patch_size)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return masked_mse(pred, target, mask), pred, mask, latent


# -- key names ------------------------------------------------------------------------------------------------------
NAMES = [  # (official, ours); {i} a block index, {p} weight | bias
    ("cls_token", "encoder.cls_token"),
    ("patch_embed.proj.{p}", "encoder.patch_embed.proj.{p}"),
    ("norm.{p}", "encoder.norm.{p}"),
    ("mask_token", "mask_token"),
    ("decoder_norm.{p}", "decoder.norm.{p}"),
    ("decoder_pred.{p}", "decoder_pred.{p}"),
    ("blocks.{i}.layers.0.0.norm.{p}", "encoder.blocks.{i}.norm1.{p}"),
    ("blocks.{i}.layers.0.0.fn.qkv.weight", "encoder.blocks.{i}.attn.qkv.weight"),
    ("blocks.{i}.layers.0.0.fn.to_out.0.{p}", "encoder.blocks.{i}.attn.proj.{p}"),
    ("blocks.{i}.layers.0.1.norm.{p}", "encoder.blocks.{i}.norm2.{p}"),
    ("blocks.{i}.layers.0.1.fn.weight", "encoder.blocks.{i}.ista.dictionary"),
    ("decoder_blocks.{i}.layers.0.0.norm.{p}", "decoder.blocks.{i}.norm1.{p}"),
    ("decoder_blocks.{i}.layers.0.0.fn.weight", "decoder.blocks.{i}.linear.weight"),
    ("decoder_blocks.{i}.layers.0.1.norm.{p}", "decoder.blocks.{i}.norm2.{p}"),
    ("decoder_blocks.{i}.layers.0.1.fn.qkv.weight", "decoder.blocks.{i}.attn.qkv.weight"),
    ("decoder_blocks.{i}.layers.0.1.fn.to_out.0.{p}", "decoder.blocks.{i}.attn.proj.{p}"),
]
UNUSED = ("pos_embed", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias")  # frozen tables, dead layer


def key_pattern(template: str) -> re.Pattern:
    """A key-name template (``{i}`` a block index, ``{p}`` weight | bias) as a regular expression with those groups."""
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)"))


_PATTERNS = [(key_pattern(official), key_pattern(ours), official, ours) for official, ours in NAMES]


def official_to_ours(key: str) -> str | None:
    for pattern, _, _, ours in _PATTERNS:
        if m := pattern.fullmatch(key):
            return ours.format(**m.groupdict())
    return None


def from_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official CRATE-MAE key names -> ours. The frozen tables and ``decoder_embed`` are dropped; unknown keys are
    kept, marked, so that a strict load names them rather than silently ignoring them."""
    return {official_to_ours(k) or f"<unrecognised>{k}": v for k, v in state.items() if k not in UNUSED}


def to_official(model: CrateMAE) -> dict[str, torch.Tensor]:
    """A :class:`~crate_mae.models.CrateMAE`'s weights under the official names, with the two sin-cos tables and a
    zero ``decoder_embed`` that the official module also holds: ``OfficialCrateMAE(...).load_state_dict(...)``."""
    out = {}
    for k, v in model.state_dict().items():
        name = next(
            (official.format(**m.groupdict()) for _, pattern, official, _ in _PATTERNS if (m := pattern.fullmatch(k))),
            None,
        )
        if name is None:
            raise ValueError(f"{k} has no official counterpart")
        out[name] = v
    d, table = model.encoder.embed_dim, model.encoder.pos_embed.table
    out.update(
        pos_embed=table.clone(),
        decoder_pos_embed=table.clone(),
        **{"decoder_embed.weight": torch.zeros(d, d), "decoder_embed.bias": torch.zeros(d)},
    )
    return out


def official_copy(model: CrateMAE) -> OfficialCrateMAE:
    """The official computation with ``model``'s configuration and weights: the baseline of the speed benchmarks and
    the tests that compare the two."""
    c = model.config
    h, w = (c.img_size, c.img_size) if isinstance(c.img_size, int) else c.img_size
    if h != w:
        raise ValueError(f"the official computation takes square images, got img_size={c.img_size}")
    official = OfficialCrateMAE(
        h,
        c.patch_size,
        c.in_chans,
        c.embed_dim,
        c.depth,
        c.num_heads,
        c.decoder_depth,
        c.decoder_num_heads,
        c.ista_step_size,
        c.ista_lambda,
        c.norm_pix_loss,
    )
    official.load_state_dict(to_official(model))
    return official


def kwargs_from_official(state: Mapping[str, torch.Tensor]) -> dict:
    """CrateMAE keywords read off an official state dict (heads and ISTA's eta / lambda are not stored)."""
    return official_shape_kwargs(state, "blocks.{}.layers.0.0.fn.qkv.weight", "decoder_blocks.{}.layers.0.0.fn.weight")
