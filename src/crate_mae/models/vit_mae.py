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

from dataclasses import dataclass, replace
from functools import partial
from typing import Any, ClassVar, Mapping, cast

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Attention, Block, VisionTransformer

from .base import (
    Capabilities,
    MaskedAutoencoder,
    ModelConfig,
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


@dataclass(frozen=True)
class ViTMAEConfig(ModelConfig):
    """ViT-MAE (``vit_mae_*``; the paper's baseline ``vit_mae_*_paper`` with ``mask_tokens_in_encoder=True``)."""

    architecture: ClassVar[str] = "vit_mae"
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_pix_loss: bool = False
    mask_tokens_in_encoder: bool = False
    pos_embed_mode: str = "interpolate"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask_tokens_in_encoder", bool(self.mask_tokens_in_encoder))
        super().__post_init__()

    def validate(self) -> None:
        check_config(self.img_size, self.patch_size, self.in_chans, self.embed_dim, self.num_heads, self.depth)
        check_config(
            self.img_size,
            self.patch_size,
            self.in_chans,
            self.decoder_embed_dim,
            self.decoder_num_heads,
            self.decoder_depth,
        )
        if self.mask_tokens_in_encoder and self.decoder_embed_dim != self.embed_dim:
            raise ValueError(
                f"with mask_tokens_in_encoder=True the encoder output feeds the decoder directly, so "
                f"decoder_embed_dim ({self.decoder_embed_dim}) must equal embed_dim ({self.embed_dim})"
            )


@dataclass(frozen=True)
class ViTConfig(ModelConfig):
    """A ViT-MAE encoder as a timm ``VisionTransformer`` classifier (``vit``, built by :func:`vit_classifier`)."""

    architecture: ClassVar[str] = "vit"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_classes: int = 0
    global_pool: str = "token"
    drop_path_rate: float = 0.0


class ViTMAE(PatchTokens, MaskedAutoencoder):
    config_class = ViTMAEConfig
    config: ViTMAEConfig
    patch_embed: PatchEmbed

    def __init__(self, config: ViTMAEConfig | None = None, **kwargs: Any):
        """``ViTMAE(config)``, or ``ViTMAE(embed_dim=..., ...)`` with the config's fields."""
        super().__init__()
        c = self.make_config(config, kwargs)
        self.init_contract(c)
        self.patch_size = c.patch_size
        self.in_chans = c.in_chans
        self.embed_dim = c.embed_dim
        self.norm_pix_loss = c.norm_pix_loss
        self.mask_tokens_in_encoder = c.mask_tokens_in_encoder
        norm_layer = partial(nn.LayerNorm, eps=LN_EPS)
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim, strict_img_size=False)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = PositionTable(c.embed_dim, grid, c.pos_embed_mode)
        # timm annotates norm_layer as a class; it only calls it, as it does with the partials it passes itself
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, qkv_bias=c.qkv_bias, norm_layer=norm_layer)  # type: ignore[arg-type]
            for _ in range(c.depth)
        )
        self.norm = norm_layer(c.embed_dim)
        if not c.mask_tokens_in_encoder:
            self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
            self.decoder_pos_embed = PositionTable(c.decoder_embed_dim, grid, c.pos_embed_mode)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio, qkv_bias=c.qkv_bias, norm_layer=norm_layer)  # type: ignore[arg-type]  # as above
            for _ in range(c.decoder_depth)
        )
        self.decoder_norm = norm_layer(c.decoder_embed_dim)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_size**2 * c.in_chans)
        self.grad_checkpointing = False
        self.init_weights()

    def init_weights(self) -> None:
        init_weights(self, self.patch_embed, [self.cls_token, self.mask_token])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each encoder and decoder block in backward instead of storing its activations."""
        self.grad_checkpointing = enable

    # -- masked autoencoding ------------------------------------------------------------------------------------------
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(latent, mask, ids_restore)``: latent (N, 1+L_keep, D) visible-only, (N, 1+L, D) with mask tokens."""
        h, w = self.grid_size(imgs)
        mask, ids_keep, ids_restore = random_masking(imgs.shape[0], h * w, mask_ratio, noise, imgs.device)
        x = (
            self.prepare_tokens(imgs, mask, self.mask_token)
            if self.mask_tokens_in_encoder
            else self.prepare_visible_tokens(imgs, ids_keep)
        )
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
        blk = cast(Block, self.blocks[layer])
        attn = cast(Attention, blk.attn)  # Block's default attention layer
        B, N, C = x.shape
        qkv = attn.qkv(blk.norm1(x)).reshape(B, N, 3, attn.num_heads, C // attn.num_heads)
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
            d, dd = self.embed_dim, self.config.decoder_embed_dim
            tables = self.pos_embed.num_entries * (d + dd)
            unused = d * dd + dd if self.mask_tokens_in_encoder else 0  # no decoder_embed in that frame
            return trainable + tables + unused
        raise ValueError(f"convention must be 'trainable' or 'official', got {convention!r}")

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "mask_token"}


class MAEViTClassifier(VisionTransformer, Capabilities):
    """timm's VisionTransformer as MAE fine-tunes it, keeping our model contract: LayerNorm eps 1e-6, final norm
    before pooling, the position table as a (trainable) parameter. timm's ``no_weight_decay`` and
    ``set_grad_checkpointing`` stand (it comes first in the MRO); ``group_matcher`` groups as facebookresearch/mae's
    ``get_layer_id_for_vit``, ``reset_classifier`` keeps ``config`` current, the rest comes from
    :class:`Capabilities`."""

    config_class = ViTConfig
    config: ViTConfig
    blocks: nn.Sequential  # timm's

    def __init__(self, config: ViTConfig | None = None, **kwargs: Any):
        """``MAEViTClassifier(config)``, or keyword arguments with the config's fields."""
        c = self.make_config(config, kwargs)
        # global_pool: timm types it as a Literal of the names it accepts (and checks the value itself)
        super().__init__(
            img_size=c.img_size,
            patch_size=c.patch_size,
            in_chans=c.in_chans,
            embed_dim=c.embed_dim,
            depth=c.depth,
            num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio,
            qkv_bias=c.qkv_bias,
            num_classes=c.num_classes,
            fc_norm=False,
            drop_path_rate=c.drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=LN_EPS),
            global_pool=c.global_pool,  # type: ignore[arg-type]
        )
        self.init_contract(c)

    def group_matcher(self, coarse: bool = False) -> dict:
        """The final norm and head form the last group (timm's own matcher merges the norm into the last block)."""
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm|^fc_norm|^head", (len(self.blocks),))],
        )

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        self.config = replace(self.config, num_classes=num_classes, global_pool=self.global_pool)


def vit_classifier(config: ViTConfig | None = None, **kwargs: Any) -> MAEViTClassifier:
    """A ViT-MAE encoder as a timm ``VisionTransformer`` classifier (MAE's fine-tuning model): ``config``, or
    keyword arguments with :class:`ViTConfig`'s fields. ``ViTConfig.from_mae(mae.config, ...)`` derives it from a
    :class:`ViTMAE`."""
    return MAEViTClassifier(config, **kwargs)


def kwargs_from_official(state: Mapping[str, torch.Tensor]) -> dict:
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
