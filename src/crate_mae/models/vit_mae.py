"""ViT-MAE baselines: timm ViT blocks in either masking frame (see ``embedding.py``).

- ``mask_tokens_in_encoder=False`` (default): facebookresearch/mae ``models_mae.py`` with its state-dict keys. The
  encoder sees only the visible patches; the decoder embeds them to its own width, fills in mask tokens, adds its
  own sin-cos table and predicts every patch.
- ``mask_tokens_in_encoder=True``: the CRATE repo's own baseline (Ma-Lab-Berkeley/CRATE ``crate_ae.py``
  ``mae_vit_*``, the ViT-MAE the paper compares against). Mask tokens replace masked patches before the encoder,
  which sees all 1 + L tokens; its output goes straight into the decoder blocks (the official ``decoder_embed`` and
  decoder table exist there but are never used, so the decoder must be as wide as the encoder), and its blocks have
  no qkv bias. Every LayerNorm has eps 1e-6 in both frames (the official fixtures reproduce only with it).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer

from .base import (
    Capabilities,
    MaskedAutoencoder,
    PatchTokens,
    check_config,
    init_weights,
    layer_index,
    official_shape_kwargs,
    run_blocks,
)
from .embedding import PositionTable, restore_with_mask_tokens
from .masking import random_masking
from .outputs import MAEOutput

LN_EPS = 1e-6


class ViTMAE(PatchTokens, MaskedAutoencoder):
    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 1024, depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, norm_pix_loss: bool = False, mask_tokens_in_encoder: bool = False,
                 pos_embed_mode: str = "interpolate"):
        super().__init__()
        check_config(img_size, patch_size, in_chans, embed_dim, num_heads, depth)
        check_config(img_size, patch_size, in_chans, decoder_embed_dim, decoder_num_heads, decoder_depth)
        mask_tokens_in_encoder = bool(mask_tokens_in_encoder)
        if mask_tokens_in_encoder and decoder_embed_dim != embed_dim:
            raise ValueError(f"with mask_tokens_in_encoder=True the encoder output feeds the decoder directly, so "
                             f"decoder_embed_dim ({decoder_embed_dim}) must equal embed_dim ({embed_dim})")
        self.init_contract(architecture="vit_mae", img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                           embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                           decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                           decoder_num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                           norm_pix_loss=norm_pix_loss, mask_tokens_in_encoder=mask_tokens_in_encoder,
                           pos_embed_mode=pos_embed_mode)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.norm_pix_loss = norm_pix_loss
        self.mask_tokens_in_encoder = mask_tokens_in_encoder
        norm_layer = partial(nn.LayerNorm, eps=LN_EPS)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = PositionTable(embed_dim, grid, pos_embed_mode)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm_layer)
                                    for _ in range(depth))
        self.norm = norm_layer(embed_dim)
        if not mask_tokens_in_encoder:
            self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
            self.decoder_pos_embed = PositionTable(decoder_embed_dim, grid, pos_embed_mode)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm_layer)
            for _ in range(decoder_depth))
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.grad_checkpointing = False
        self.init_weights()

    def init_weights(self) -> None:
        init_weights(self, self.patch_embed, [self.cls_token, self.mask_token])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each encoder and decoder block in backward instead of storing its activations."""
        self.grad_checkpointing = enable

    # -- masked autoencoding ------------------------------------------------------------------------------------------
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(latent, mask, ids_restore)``: latent (N, 1+L_keep, D) visible-only, (N, 1+L, D) with mask tokens."""
        h, w = self.grid_size(imgs)
        mask, ids_keep, ids_restore = random_masking(imgs.shape[0], h * w, mask_ratio, noise, imgs.device)
        x = (self.prepare_tokens(imgs, mask, self.mask_token) if self.mask_tokens_in_encoder
             else self.prepare_visible_tokens(imgs, ids_keep))
        return self.norm(run_blocks(self.blocks, x, self.grad_checkpointing)), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = latent
        if not self.mask_tokens_in_encoder:
            x = restore_with_mask_tokens(self.decoder_embed(latent), self.mask_token, ids_restore)
            x = x + self.decoder_pos_embed(grid)
        x = run_blocks(self.decoder_blocks, x, self.grad_checkpointing)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None) -> MAEOutput:
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore, self.grid_size(imgs))
        return MAEOutput(loss=self.forward_loss(imgs, pred, mask), pred=pred, mask=mask, latent=latent)

    # -- features ------------------------------------------------------------------------------------------------------
    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Unmasked image -> encoder on all tokens -> final norm: (N, 1+L, D)."""
        return self.norm(run_blocks(self.blocks, self.prepare_tokens(imgs), self.grad_checkpointing))

    def attention_maps(self, imgs: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Softmax attention (N, heads, 1+L, 1+L) of encoder block ``layer`` on the unmasked image."""
        layer = layer_index(layer, len(self.blocks), "encoder")
        x = self.prepare_tokens(imgs)
        for blk in self.blocks[:layer]:
            x = blk(x)
        attn = self.blocks[layer].attn
        B, N, C = x.shape
        qkv = attn.qkv(self.blocks[layer].norm1(x)).reshape(B, N, 3, attn.num_heads, C // attn.num_heads)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        return torch.softmax((q * attn.scale) @ k.transpose(-2, -1), dim=-1)

    def num_params(self, convention: str = "trainable") -> int:
        """'trainable', or 'official': what the official code counts, adding its two frozen sin-cos tables (and,
        in the CRATE repo's frame, its unused ``decoder_embed``)."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if convention == "trainable":
            return trainable
        if convention == "official":
            d, dd = self.embed_dim, self.config["decoder_embed_dim"]
            tables = self.pos_embed.num_entries * (d + dd)
            unused = 0 if hasattr(self, "decoder_embed") else d * dd + dd
            return trainable + tables + unused
        raise ValueError(f"convention must be 'trainable' or 'official', got {convention!r}")

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "mask_token"}


class MAEViTClassifier(Capabilities, VisionTransformer):
    """timm's VisionTransformer grouped for layer-wise lr decay as facebookresearch/mae's ``get_layer_id_for_vit``:
    the final norm and head form the last group (timm's own matcher merges the norm into the last block)."""

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm|^fc_norm|^head", (len(self.blocks),))])


def vit_classifier(img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                   embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                   qkv_bias: bool = True, num_classes: int = 0, global_pool: str = "token",
                   drop_path_rate: float = 0.0) -> nn.Module:
    """A ViT-MAE encoder as a timm ``VisionTransformer`` classifier (MAE's fine-tuning model): LayerNorm eps 1e-6,
    final norm before pooling, the position table as a (trainable) parameter."""
    vit = MAEViTClassifier(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                            depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                            num_classes=num_classes, global_pool=global_pool, fc_norm=False,
                            drop_path_rate=drop_path_rate, norm_layer=partial(nn.LayerNorm, eps=LN_EPS))
    vit.init_contract(architecture="vit", img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                      embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                      num_classes=num_classes, global_pool=global_pool, drop_path_rate=drop_path_rate)
    return vit


def kwargs_from_official(state: dict[str, torch.Tensor]) -> dict:
    """ViTMAE keywords read off a facebookresearch/mae (or CRATE-repo ``mae_vit_*``) state dict; heads and the
    masking frame are not stored."""
    cfg = official_shape_kwargs(state, "blocks.{}.attn.qkv.weight", "decoder_blocks.{}.attn.qkv.weight")
    if "decoder_blocks.0.attn.qkv.weight" in state:
        cfg["decoder_embed_dim"] = state["decoder_blocks.0.attn.qkv.weight"].shape[1]
    elif "decoder_embed.weight" in state:
        cfg["decoder_embed_dim"] = state["decoder_embed.weight"].shape[0]
    if cfg["decoder_depth"] == 0:  # an encoder-only file: the decoder keeps its default depth
        del cfg["decoder_depth"]
    cfg["mlp_ratio"] = state["blocks.0.mlp.fc1.weight"].shape[0] / cfg["embed_dim"]
    cfg["qkv_bias"] = "blocks.0.attn.qkv.bias" in state
    return cfg
