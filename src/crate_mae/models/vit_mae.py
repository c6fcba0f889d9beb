"""ViT-MAE baseline, as facebookresearch/mae ``models_mae.py`` computes it (and with its state-dict keys).

The encoder sees only the visible patches (position table added before masking); the decoder embeds them to its
own width, fills in mask tokens, adds its own sin-cos table and predicts every patch.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from .crate_mae import _check_config, _layer_index, check_images, init_weights
from .mixins import MaskedImageModelMixin, SavePretrainedMixin
from .layers import sincos_pos_embed
from .masking import random_masking
from .outputs import MAEOutput


class ViTMAE(MaskedImageModelMixin, SavePretrainedMixin, nn.Module):
    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 1024, depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, norm_pix_loss: bool = False):
        super().__init__()
        _check_config(img_size, patch_size, in_chans, embed_dim, num_heads, depth)
        _check_config(img_size, patch_size, in_chans, decoder_embed_dim, decoder_num_heads, decoder_depth)
        self.config = dict(architecture="vit_mae", img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                           embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                           decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                           decoder_num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                           norm_pix_loss=norm_pix_loss)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.norm_pix_loss = norm_pix_loss
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed(embed_dim, grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm_layer)
                                    for _ in range(depth))
        self.norm = norm_layer(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(decoder_embed_dim, grid).unsqueeze(0),
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm_layer)
            for _ in range(decoder_depth))
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.init_weights()

    def init_weights(self) -> None:
        init_weights(self, self.patch_embed, [self.cls_token, self.mask_token])

    # -- shapes -----------------------------------------------------------------------------------------------------
    def grid_size(self, imgs: torch.Tensor) -> tuple[int, int]:
        check_images(imgs, self.patch_size, self.in_chans)
        return imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size

    def _pos(self, table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) == tuple(self.patch_embed.grid_size):
            return table
        return sincos_pos_embed(table.shape[-1], grid).to(table.device).unsqueeze(0)

    # -- masked autoencoding ------------------------------------------------------------------------------------------
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None):
        grid = self.grid_size(imgs)
        pos = self._pos(self.pos_embed, grid).to(imgs.dtype)
        x = self.patch_embed(imgs) + pos[:, 1:]
        N, L, D = x.shape
        mask, ids_keep, ids_restore = random_masking(N, L, mask_ratio, noise, imgs.device)
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        cls = (self.cls_token + pos[:, :1]).expand(N, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.decoder_embed(latent)
        N, L = ids_restore.shape
        mask_tokens = self.mask_token.to(x.dtype).expand(N, L + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1) + self._pos(self.decoder_pos_embed, grid).to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None) -> MAEOutput:
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore, self.grid_size(imgs))
        return MAEOutput(loss=self.forward_loss(imgs, pred, mask), pred=pred, mask=mask, latent=latent)

    # -- features --------------------------------------------------------------------------------------------------------
    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Unmasked image -> encoder on all tokens -> final norm: (N, 1+L, D)."""
        grid = self.grid_size(imgs)
        pos = self._pos(self.pos_embed, grid).to(imgs.dtype)
        x = self.patch_embed(imgs) + pos[:, 1:]
        x = torch.cat([(self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def attention_maps(self, imgs: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Softmax attention (N, heads, 1+L, 1+L) of encoder block ``layer`` on the unmasked image."""
        layer = _layer_index(layer, len(self.blocks), "encoder")
        grid = self.grid_size(imgs)
        pos = self._pos(self.pos_embed, grid).to(imgs.dtype)
        x = self.patch_embed(imgs) + pos[:, 1:]
        x = torch.cat([(self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks[:layer]:
            x = blk(x)
        attn = self.blocks[layer].attn
        B, N, C = x.shape
        qkv = attn.qkv(self.blocks[layer].norm1(x)).reshape(B, N, 3, attn.num_heads, C // attn.num_heads)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        return torch.softmax((q * attn.scale) @ k.transpose(-2, -1), dim=-1)

    def num_params(self, convention: str = "trainable") -> int:
        """'trainable', or 'official' (facebookresearch/mae counts its two frozen sin-cos tables as parameters)."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if convention == "trainable":
            return trainable
        if convention == "official":
            return trainable + self.pos_embed.numel() + self.decoder_pos_embed.numel()
        raise ValueError(f"convention must be 'trainable' or 'official', got {convention!r}")

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "mask_token"}


def vit_classifier(img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                   embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                   qkv_bias: bool = True, num_classes: int = 0, global_pool: str = "token",
                   drop_path_rate: float = 0.0) -> nn.Module:
    """A ViT-MAE encoder as a timm ``VisionTransformer`` classifier (MAE's fine-tuning model): LayerNorm eps 1e-6,
    final norm before pooling, the position table as a (trainable) parameter."""
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                            depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                            num_classes=num_classes, global_pool=global_pool, fc_norm=False,
                            drop_path_rate=drop_path_rate, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    vit.config = dict(architecture="vit", img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                      embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                      num_classes=num_classes, global_pool=global_pool, drop_path_rate=drop_path_rate)
    return vit
