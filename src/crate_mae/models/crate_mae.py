"""CRATE-MAE: a white-box masked autoencoder (masked completion via structured diffusion).

Encoder layer (compression, then sparsification):
    Z^{l+1/2} = Z^l + MSSA(LN(Z^l)),     Z^{l+1} = ISTA(LN(Z^{l+1/2}))
Decoder layer (the reverse, "structured diffusion"):
    Y' = W LN(Y),                        Y_next = Y' - MSSA(LN(Y'))
Masked completion: masked patch embeddings are replaced by one learned mask token, cls is prepended, the fixed 2-D
sin-cos table is added to every token, and the encoder sees the whole sequence.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, PatchEmbed

from .mixins import MaskedImageModelMixin, SavePretrainedMixin
from .layers import ISTA, MSSA, InverseISTA, sincos_pos_embed
from .masking import random_masking
from .outputs import Intermediates, LayerTrace, MAEOutput

BLOCK_LN_EPS = 1e-5  # PreNorm's nn.LayerNorm default in the official blocks
FINAL_LN_EPS = 1e-6  # the encoder's and decoder's final norms


class CrateBlock(nn.Module):
    """One encoder layer: Z' = Z + MSSA(LN(Z)); Z_next = ISTA(LN(Z')). No residual around ISTA."""

    def __init__(self, dim: int, num_heads: int, step_size: float, lambd: float, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_LN_EPS)
        self.attn = MSSA(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_LN_EPS)
        self.ista = ISTA(dim, step_size, lambd)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z + self.drop_path(self.attn(self.norm1(z)))
        return self.ista(self.norm2(z))

    def trace(self, z: torch.Tensor) -> LayerTrace:
        mssa_in = self.norm1(z)
        z_half = z + self.attn(mssa_in)
        ista_in = self.norm2(z_half)
        return LayerTrace(z_in=z, mssa_in=mssa_in, z_half=z_half, ista_in=ista_in, z_out=self.ista(ista_in))


class CrateDecoderBlock(nn.Module):
    """One decoder layer: Y' = W LN(Y); Y_next = Y' - MSSA(LN(Y'))."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_LN_EPS)
        self.linear = InverseISTA(dim)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_LN_EPS)
        self.attn = MSSA(dim, num_heads)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = self.linear(self.norm1(y))
        return y - self.attn(self.norm2(y))

    def trace(self, y: torch.Tensor) -> LayerTrace:
        y_half = self.linear(self.norm1(y))
        mssa_in = self.norm2(y_half)
        return LayerTrace(z_in=y, mssa_in=mssa_in, z_half=y_half, z_out=y_half - self.attn(mssa_in))


@lru_cache(maxsize=16)
def _cached_sincos(embed_dim: int, grid_size: tuple[int, int]) -> torch.Tensor:
    return sincos_pos_embed(embed_dim, grid_size)


class CrateEncoder(SavePretrainedMixin, nn.Module):
    """The CRATE encoder; with ``num_classes > 0`` a timm-style image classifier.

    forward_features(imgs) -> (N, 1+L, D) after the final norm; forward_head(x) pools ('token' = cls, 'avg' = mean of
    patch tokens) and applies the linear head.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, ista_step_size: float = 0.1,
                 ista_lambda: float = 0.5, num_classes: int = 0, global_pool: str = "token",
                 drop_path_rate: float = 0.0, pos_embed_mode: str = "sincos"):
        super().__init__()
        _check_config(img_size, patch_size, in_chans, embed_dim, num_heads, depth)
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if pos_embed_mode not in ("sincos", "interpolate"):
            raise ValueError(f"pos_embed_mode must be 'sincos' or 'interpolate', got {pos_embed_mode!r}")
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = self.num_features = embed_dim
        self.num_heads = num_heads
        self.global_pool = global_pool
        self.pos_embed_mode = pos_embed_mode
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed, never trained, never saved: recomputed from the grid (the official code stores it frozen).
        self.register_buffer("pos_embed", sincos_pos_embed(embed_dim, self.patch_embed.grid_size).unsqueeze(0),
                             persistent=False)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            CrateBlock(embed_dim, num_heads, ista_step_size, ista_lambda, dpr[i]) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=FINAL_LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.num_classes = num_classes
        self.config = dict(architecture="crate", img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                           embed_dim=embed_dim, depth=depth, num_heads=num_heads, ista_step_size=ista_step_size,
                           ista_lambda=ista_lambda, num_classes=num_classes, global_pool=global_pool,
                           drop_path_rate=drop_path_rate, pos_embed_mode=pos_embed_mode)
        init_weights(self, self.patch_embed, [self.cls_token])

    # -- tokens ---------------------------------------------------------------------------------------------
    def grid_size(self, imgs: torch.Tensor) -> tuple[int, int]:
        check_images(imgs, self.patch_size, self.in_chans)
        return imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The (1, 1+h*w, D) position table for a grid: the default one, recomputed, or interpolated."""
        if tuple(grid) == tuple(self.patch_embed.grid_size):
            return self.pos_embed
        if self.pos_embed_mode == "sincos":
            return _cached_sincos(self.embed_dim, tuple(grid)).to(self.pos_embed.device).unsqueeze(0)
        h0, w0 = self.patch_embed.grid_size
        patch_pos = self.pos_embed[:, 1:].reshape(1, h0, w0, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
        return torch.cat([self.pos_embed[:, :1], patch_pos], dim=1)

    def prepare_tokens(self, imgs: torch.Tensor, mask: torch.Tensor | None = None,
                       mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """Patch-embed, replace masked patches by ``mask_token``, prepend cls, add the sin-cos table to all."""
        grid = self.grid_size(imgs)
        x = self.patch_embed(imgs)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1).bool(), mask_token.to(x.dtype), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return x + self.pos_embed_for(grid).to(x.dtype)

    # -- encoder ----------------------------------------------------------------------------------------------
    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Unmasked image -> encoder -> final norm: (N, 1+L, D). Deterministic, never masks."""
        return self.forward_tokens(self.prepare_tokens(imgs))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(imgs))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ("token", "avg"):
                raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        device = self.cls_token.device
        self.head = nn.Linear(self.embed_dim, num_classes).to(device) if num_classes > 0 else nn.Identity()

    def attention_maps(self, imgs: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Softmax attention (N, heads, 1+L, 1+L) of encoder layer ``layer`` on the unmasked image."""
        layer = _layer_index(layer, len(self.blocks), "encoder")
        x = self.prepare_tokens(imgs)
        for blk in self.blocks[:layer]:
            x = blk(x)
        blk = self.blocks[layer]
        return blk.attn.attention(blk.norm1(x))

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}


class CrateDecoder(nn.Module):
    """The CRATE-MAE decoder: ``depth`` structured-diffusion layers then a final norm."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(CrateDecoderBlock(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=FINAL_LN_EPS)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            y = blk(y)
        return self.norm(y)


class CrateMAE(MaskedImageModelMixin, SavePretrainedMixin, nn.Module):
    """CRATE-MAE for masked completion. ``model(imgs, mask_ratio, noise)`` -> :class:`MAEOutput`."""

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, decoder_depth: int = 12,
                 decoder_num_heads: int | None = None, ista_step_size: float = 0.1, ista_lambda: float = 0.5,
                 norm_pix_loss: bool = False, pos_embed_mode: str = "sincos", drop_path_rate: float = 0.0):
        super().__init__()
        decoder_num_heads = decoder_num_heads or num_heads
        if decoder_depth < 1:
            raise ValueError(f"decoder_depth must be >= 1, got {decoder_depth}")
        self.config = dict(architecture="crate_mae", img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                           embed_dim=embed_dim, depth=depth, num_heads=num_heads, decoder_depth=decoder_depth,
                           decoder_num_heads=decoder_num_heads, ista_step_size=ista_step_size,
                           ista_lambda=ista_lambda, norm_pix_loss=norm_pix_loss, pos_embed_mode=pos_embed_mode,
                           drop_path_rate=drop_path_rate)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        self.encoder = CrateEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, ista_step_size,
                                    ista_lambda, drop_path_rate=drop_path_rate, pos_embed_mode=pos_embed_mode)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if embed_dim % decoder_num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by decoder_num_heads={decoder_num_heads}")
        self.decoder = CrateDecoder(embed_dim, decoder_depth, decoder_num_heads)
        self.decoder_pred = nn.Linear(embed_dim, patch_size**2 * in_chans)
        self.init_weights()

    def init_weights(self) -> None:
        init_weights(self, self.encoder.patch_embed, [self.encoder.cls_token, self.mask_token])

    # -- shapes -------------------------------------------------------------------------------------------------
    def grid_size(self, imgs: torch.Tensor) -> tuple[int, int]:
        return self.encoder.grid_size(imgs)

    # -- masked completion ----------------------------------------------------------------------------------------
    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.encoder.forward_tokens(self.encoder.prepare_tokens(imgs, mask, self.mask_token))

    def forward_decoder(self, latent: torch.Tensor) -> torch.Tensor:
        """Decoder -> norm -> linear patch prediction, cls dropped: (N, L, p*p*C)."""
        return self.decoder_pred(self.decoder(latent))[:, 1:]

    def make_mask(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None) -> torch.Tensor:
        h, w = self.grid_size(imgs)
        mask, _, _ = random_masking(imgs.shape[0], h * w, mask_ratio, noise, imgs.device)
        return mask

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None) -> MAEOutput:
        mask = self.make_mask(imgs, mask_ratio, noise)
        latent = self.forward_encoder(imgs, mask)
        pred = self.forward_decoder(latent)
        return MAEOutput(loss=self.forward_loss(imgs, pred, mask), pred=pred, mask=mask, latent=latent)

    # -- looking inside -------------------------------------------------------------------------------------------
    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Unmasked image -> encoder -> final norm: (N, 1+L, D); deterministic in train and eval mode."""
        return self.encoder.forward_features(imgs)

    def attention_maps(self, imgs: torch.Tensor, layer: int = -1) -> torch.Tensor:
        return self.encoder.attention_maps(imgs, layer)

    def forward_intermediates(self, imgs: torch.Tensor, mask_ratio: float = 0.0, noise: torch.Tensor | None = None,
                              encoder_layers: list[int] | None = None,
                              decoder_layers: list[int] | None = None) -> Intermediates:
        """Run the whole autoencoder and keep the tensors of the chosen layers (default: all).

        Each kept layer gives a :class:`LayerTrace` (input, MSSA input, half step, ISTA input, output). With
        ``mask_ratio = 0`` (default) nothing is masked; the latent then equals ``forward_features``.
        """
        n_enc, n_dec = len(self.encoder.blocks), len(self.decoder.blocks)
        enc_keep = {_layer_index(i, n_enc, "encoder") for i in (range(n_enc) if encoder_layers is None else encoder_layers)}
        dec_keep = {_layer_index(i, n_dec, "decoder") for i in (range(n_dec) if decoder_layers is None else decoder_layers)}
        mask = self.make_mask(imgs, mask_ratio, noise)
        out = Intermediates(mask=mask)
        x = self.encoder.prepare_tokens(imgs, mask if mask_ratio > 0 else None, self.mask_token)
        for i, blk in enumerate(self.encoder.blocks):
            if i in enc_keep:
                out.encoder[i] = blk.trace(x)
                x = out.encoder[i].z_out
            else:
                x = blk(x)
        out.latent = x = self.encoder.norm(x)
        for i, blk in enumerate(self.decoder.blocks):
            if i in dec_keep:
                out.decoder[i] = blk.trace(x)
                x = out.decoder[i].z_out
            else:
                x = blk(x)
        out.pred = self.decoder_pred(self.decoder.norm(x))[:, 1:]
        return out

    # -- bookkeeping ----------------------------------------------------------------------------------------------
    def set_impl(self, impl: str) -> "CrateMAE":
        """'fast' (fused attention, 2-matmul ISTA) or 'reference' (the literal arithmetic of models/reference.py)."""
        set_impl(self, impl)
        return self

    def num_params(self, convention: str = "trainable") -> int:
        """'trainable': what this module really trains. 'official': the Ma-Lab-Berkeley/CRATE count, which adds two
        frozen sin-cos tables (1+L) x D and the unused decoder_embed Linear(D, D)."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if convention == "trainable":
            return trainable
        if convention == "official":
            d = self.encoder.embed_dim
            return trainable + 2 * self.encoder.pos_embed.shape[1] * d + d * d + d
        raise ValueError(f"convention must be 'trainable' or 'official', got {convention!r}")

    def no_weight_decay(self) -> set[str]:
        return {"encoder.cls_token", "mask_token"}


# -- helpers ------------------------------------------------------------------------------------------------------
def init_weights(model: nn.Module, patch_embed: nn.Module, tokens: list[nn.Parameter]) -> None:
    """The official MAE / CRATE-MAE initialisation: xavier-uniform patch embedding and linears (zero bias),
    N(0, 0.02) tokens, unit LayerNorms. Raw square parameters (ISTA dictionaries, decoder linears) keep their
    kaiming-uniform init, as in the official code."""
    w = patch_embed.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    for t in tokens:
        nn.init.normal_(t, std=0.02)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def set_impl(model: nn.Module, impl: str) -> None:
    if impl not in ("fast", "reference"):
        raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
    for m in model.modules():
        if isinstance(m, (MSSA, ISTA)):
            m.impl = impl


def check_images(imgs: torch.Tensor, patch_size: int, in_chans: int) -> None:
    """Clear errors for inputs the model cannot take."""
    if not isinstance(imgs, torch.Tensor) or imgs.ndim != 4:
        shape = tuple(imgs.shape) if isinstance(imgs, torch.Tensor) else type(imgs).__name__
        raise ValueError(f"expected images of shape (N, C, H, W), got {shape}")
    if imgs.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {imgs.shape[1]} (shape {tuple(imgs.shape)})")
    H, W = imgs.shape[-2:]
    if H % patch_size or W % patch_size or H == 0 or W == 0:
        raise ValueError(f"image size {H}x{W} is not a positive multiple of the patch size {patch_size}")


def _check_config(img_size, patch_size, in_chans, embed_dim, num_heads, depth) -> None:
    sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if patch_size < 1 or any(s % patch_size or s < patch_size for s in sizes):
        raise ValueError(f"img_size={img_size} is not a positive multiple of patch_size={patch_size}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if num_heads < 1 or embed_dim % num_heads:
        raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
    if embed_dim % 4:
        raise ValueError(f"embed_dim={embed_dim} must be divisible by 4 (2-D sin-cos position table)")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")


def _layer_index(layer: int, n: int, what: str) -> int:
    if not -n <= layer < n:
        raise ValueError(f"{what} layer {layer} out of range for {n} layers")
    return layer % n
