"""CRATE-MAE: a white-box masked autoencoder (masked completion via structured diffusion).

Encoder layer (compression, then sparsification):
    Z^{l+1/2} = Z^l + MSSA(LN(Z^l)),     Z^{l+1} = ISTA(LN(Z^{l+1/2}))
Decoder layer (the reverse, "structured diffusion"):
    Y' = W LN(Y),                        Y_next = Y' - MSSA(LN(Y'))
Masked completion: masked patch embeddings are replaced by one learned mask token, cls is prepended, the fixed 2-D
sin-cos table is added to every token, and the encoder sees the whole sequence. ``mask_tokens_in_encoder=False``
gives the faster visible-only variant (MAE's frame, see ``embedding.py``), which is *not* the paper's model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence, cast

import torch
import torch.nn as nn
from timm.layers import DropPath, PatchEmbed
from timm.models._features import feature_take_indices

from .base import (
    Capabilities,
    MaskedAutoencoder,
    ModelConfig,
    PatchTokens,
    check_config,
    init_weights,
    layer_index,
    run_blocks,
)
from .embedding import PositionTable, restore_with_mask_tokens
from .layers import ISTA, MSSA, InverseISTA
from .masking import random_masking
from .outputs import Intermediates, MAEOutput
from .tracing import LayerRecorder

if TYPE_CHECKING:  # the other CRATE classifier, whose module builds on this one
    from .crate_supervised import SupervisedCrateConfig

BLOCK_LN_EPS = 1e-5  # PreNorm's nn.LayerNorm default in the official blocks
FINAL_LN_EPS = 1e-6  # the encoder's and decoder's final norms


@dataclass(frozen=True)
class CrateEncoderConfig(ModelConfig):
    """CRATE-MAE's encoder (``crate_*``), a timm-style classifier when ``num_classes > 0``."""

    architecture: ClassVar[str] = "crate"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    ista_step_size: float = 0.1
    ista_lambda: float = 0.5
    num_classes: int = 0
    global_pool: str = "token"
    drop_path_rate: float = 0.0
    pos_embed_mode: str = "interpolate"

    def validate(self) -> None:
        check_config(
            self.img_size,
            self.patch_size,
            self.in_chans,
            self.embed_dim,
            self.num_heads,
            self.depth,
            self.ista_step_size,
            self.ista_lambda,
        )
        check_global_pool(self.global_pool)


@dataclass(frozen=True)
class CrateMAEConfig(ModelConfig):
    """CRATE-MAE (``crate_mae_*``). ``decoder_num_heads`` None means ``num_heads``; the config holds the value."""

    architecture: ClassVar[str] = "crate_mae"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_depth: int = 12
    decoder_num_heads: int | None = None
    ista_step_size: float = 0.1
    ista_lambda: float = 0.5
    norm_pix_loss: bool = False
    pos_embed_mode: str = "interpolate"
    drop_path_rate: float = 0.0
    mask_tokens_in_encoder: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder_num_heads", self.decoder_num_heads or self.num_heads)
        object.__setattr__(self, "mask_tokens_in_encoder", bool(self.mask_tokens_in_encoder))
        super().__post_init__()

    def validate(self) -> None:
        if self.decoder_depth < 1:
            raise ValueError(f"decoder_depth must be >= 1, got {self.decoder_depth}")
        check_config(
            self.img_size,
            self.patch_size,
            self.in_chans,
            self.embed_dim,
            self.num_heads,
            self.depth,
            self.ista_step_size,
            self.ista_lambda,
        )
        assert self.decoder_num_heads is not None  # __post_init__ filled it in
        if self.embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by decoder_num_heads={self.decoder_num_heads}"
            )


class CrateBlock(nn.Module):
    """One encoder layer: Z' = Z + MSSA(LN(Z)); Z_next = ISTA(LN(Z')). No residual around ISTA."""

    # (submodule, hook on its "in"put or "out"put, LayerTrace field) for models/tracing.py
    TRACE = (
        ("", "in", "z_in"),
        ("norm1", "out", "mssa_in"),
        ("norm2", "in", "z_half"),
        ("norm2", "out", "ista_in"),
        ("ista", "out", "z_out"),
    )

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


class CrateDecoderBlock(nn.Module):
    """One decoder layer: Y' = W LN(Y); Y_next = Y' - MSSA(LN(Y'))."""

    TRACE = (("", "in", "z_in"), ("linear", "out", "z_half"), ("norm2", "out", "mssa_in"), ("", "out", "z_out"))

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_LN_EPS)
        self.linear = InverseISTA(dim)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_LN_EPS)
        self.attn = MSSA(dim, num_heads)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = self.linear(self.norm1(y))
        return y - self.attn(self.norm2(y))


class CrateClassifierBase(PatchTokens, Capabilities, nn.Module):
    """What the two CRATE classifiers share (CRATE-MAE's encoder ``crate_*`` and supervised CRATE
    ``crate_supervised_*``): a stack of :class:`CrateBlock` over cls + patch tokens, then ``norm`` (an Identity where
    the architecture has no final norm), read out by ``forward_head``. timm's model contract: ``forward_intermediates``,
    ``prune_intermediate_layers``, ``group_matcher``, ``set_grad_checkpointing``; and ours: ``attention_maps``,
    ``trace_layers``. Subclasses build ``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks``, ``norm``, ``head``
    and define ``forward_head``; their configs have ``num_classes``, ``global_pool`` and ``drop_path_rate``.
    """

    white_box = True
    config: CrateEncoderConfig | SupervisedCrateConfig
    embed_dim: int
    num_classes: int
    global_pool: str
    blocks: nn.ModuleList
    norm: nn.Module
    head: nn.Module
    grad_checkpointing: bool
    forward_head: Callable[..., torch.Tensor]

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(run_blocks(self.blocks, x, self.grad_checkpointing))

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Unmasked image -> blocks -> final norm (if any): (N, 1+L, D). Deterministic, never masks."""
        return self.forward_tokens(self.prepare_tokens(imgs))

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(imgs))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new linear head with ``num_classes`` outputs (none for 0; a supervised CRATE's ``fc_norm`` keeps its
        trained weights), and ``global_pool`` when given; ``config`` says so."""
        pool = self.global_pool if global_pool is None else global_pool
        self.config = replace(self.config, num_classes=num_classes, global_pool=pool)  # validates pool
        self.global_pool = self.config.global_pool
        self.num_classes = num_classes
        device = self.cls_token.device
        self.head = nn.Linear(self.embed_dim, num_classes).to(device) if num_classes > 0 else nn.Identity()

    def set_drop_path(self, drop_path_rate: float) -> None:
        """Stochastic depth linearly rising to ``drop_path_rate`` over the blocks (for fine-tuning loaded weights)."""
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        rates = torch.linspace(0, drop_path_rate, len(self.blocks)).tolist()
        for blk, rate in zip(self.blocks, rates):
            blk.drop_path = DropPath(rate) if rate > 0 else nn.Identity()
        self.config = replace(self.config, drop_path_rate=drop_path_rate)

    def attention_maps(self, imgs: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Softmax attention (N, heads, 1+L, 1+L) of layer ``layer`` on the unmasked image."""
        layer = layer_index(layer, len(self.blocks), "encoder")
        x = self.prepare_tokens(imgs)
        for blk in self.blocks[:layer]:
            x = blk(x)
        blk = cast(CrateBlock, self.blocks[layer])
        return blk.attn.attention(blk.norm1(x))

    def trace_layers(self, imgs: torch.Tensor, encoder_layers: list[int] | None = None) -> Intermediates:
        """One forward pass under a :class:`LayerRecorder`: a :class:`LayerTrace` (input, MSSA input, half step, ISTA
        input, output) for each chosen layer (default: all), and ``latent`` = ``forward_features``."""
        n = len(self.blocks)
        keep = {layer_index(i, n, "encoder") for i in (range(n) if encoder_layers is None else encoder_layers)}
        with LayerRecorder(self) as rec:
            latent = self.forward_features(imgs)
        return Intermediates(encoder={i: t for (_, i), t in rec.collect().items() if i in keep}, latent=latent)

    # -- timm's model contract ---------------------------------------------------------------------------------------
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's ``forward_intermediates``: the outputs Z^{l+1} of the layers ``indices`` (None: all; an int n: the
        last n; negative indices count from the end), each (N, D, h, w) (``NCHW``) or (N, h*w, D) (``NLC``), with the
        final norm applied when ``norm``; the cls token is returned beside them with ``return_prefix_tokens``.
        Returns ``intermediates`` or ``(final features, intermediates)``."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        # timm annotates indices List[int] (for TorchScript); it reads any sequence
        take, max_index = feature_take_indices(len(self.blocks), indices)  # type: ignore[arg-type]
        h, w = self.grid_size(x)
        z = self.prepare_tokens(x)
        blocks = self.blocks[: max_index + 1] if stop_early or intermediates_only else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            z = run_blocks([blk], z, self.grad_checkpointing)
            if i in take:
                intermediates.append(self.norm(z) if norm else z)
        prefix = [y[:, :1] for y in intermediates]
        intermediates = [y[:, 1:] for y in intermediates]
        if output_fmt == "NCHW":
            intermediates = [y.reshape(y.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self.norm(z), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the layers after the last of ``indices`` (and the final norm / head when asked); returns the
        absolute indices kept, as timm's feature wrappers expect."""
        take, max_index = feature_take_indices(len(self.blocks), indices)  # type: ignore[arg-type]  # as above
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth for timm's layer-wise lr decay, as facebookresearch/mae's ``get_layer_id_for_vit``:
        the stem (tokens, position table, patch embedding) first, then each block, then the final norm in a group of
        its own (timm's ViT merges it into the last block's) together with the head (and its norm)."""
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm|^fc_norm|^head", (len(self.blocks),))],
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


class CrateEncoder(CrateClassifierBase):
    """The CRATE encoder of CRATE-MAE; with ``num_classes > 0`` a timm-style image classifier.

    forward_features(imgs) -> (N, 1+L, D) after the final norm; forward_head(x) pools ('token' = cls, 'avg' = mean of
    patch tokens) and applies the linear head. Everything else: :class:`CrateClassifierBase`.
    """

    config_class = CrateEncoderConfig
    config: CrateEncoderConfig

    def __init__(self, config: CrateEncoderConfig | None = None, **kwargs: Any):
        """``CrateEncoder(config)``, or ``CrateEncoder(embed_dim=..., ...)`` with the config's fields."""
        super().__init__()
        c = self.make_config(config, kwargs)
        self.patch_size = c.patch_size
        self.in_chans = c.in_chans
        self.embed_dim = self.num_features = c.embed_dim
        self.num_heads = c.num_heads
        self.global_pool = c.global_pool
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = PositionTable(c.embed_dim, self.patch_embed.grid_size, c.pos_embed_mode)
        dpr = torch.linspace(0, c.drop_path_rate, c.depth).tolist()
        self.blocks = nn.ModuleList(
            CrateBlock(c.embed_dim, c.num_heads, c.ista_step_size, c.ista_lambda, dpr[i]) for i in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=FINAL_LN_EPS)
        self.head = nn.Linear(c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.num_classes = c.num_classes
        self.grad_checkpointing = False
        self.num_prefix_tokens = 1
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=c.embed_dim, reduction=c.patch_size) for i in range(c.depth)
        ]
        self.init_contract(c)
        init_weights(self, self.patch_embed, [self.cls_token])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        return x if pre_logits else self.head(x)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}


def check_global_pool(global_pool: str) -> None:
    if global_pool not in ("token", "avg"):
        raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")


class CrateDecoder(nn.Module):
    """The CRATE-MAE decoder: ``depth`` structured-diffusion layers then a final norm."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(CrateDecoderBlock(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=FINAL_LN_EPS)
        self.grad_checkpointing = False

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.norm(run_blocks(self.blocks, y, self.grad_checkpointing))


class CrateMAE(MaskedAutoencoder):
    """CRATE-MAE for masked completion. ``model(imgs, mask_ratio, noise)`` -> :class:`MAEOutput`.

    ``mask_tokens_in_encoder=True`` (default) is the paper's model: the encoder sees all 1 + L tokens, masked ones
    replaced by the mask token. ``False`` is a visible-only encoder (facebookresearch/mae's frame: the encoder sees
    cls + the kept patches; mask tokens and the position table enter before the decoder). It trains faster but is
    not the model of the paper.
    """

    white_box = True

    config_class = CrateMAEConfig
    config: CrateMAEConfig

    def __init__(self, config: CrateMAEConfig | None = None, **kwargs: Any):
        """``CrateMAE(config)``, or ``CrateMAE(embed_dim=..., ...)`` with the config's fields."""
        super().__init__()
        c = self.make_config(config, kwargs)
        assert c.decoder_num_heads is not None  # the config filled it in
        self.init_contract(c)
        self.patch_size = c.patch_size
        self.in_chans = c.in_chans
        self.norm_pix_loss = c.norm_pix_loss
        self.mask_tokens_in_encoder = c.mask_tokens_in_encoder
        self.encoder = CrateEncoder(CrateEncoderConfig.from_mae(c))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.decoder = CrateDecoder(c.embed_dim, c.decoder_depth, c.decoder_num_heads)
        self.decoder_pred = nn.Linear(c.embed_dim, c.patch_size**2 * c.in_chans)
        self.init_weights()

    def init_weights(self) -> None:
        init_weights(self, self.encoder.patch_embed, [self.encoder.cls_token, self.mask_token])

    # -- shapes -------------------------------------------------------------------------------------------------
    def grid_size(self, imgs: torch.Tensor) -> tuple[int, int]:
        return self.encoder.grid_size(imgs)

    # -- masked completion ----------------------------------------------------------------------------------------
    def encoder_input(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask, then build the encoder's tokens in this model's frame: ``(tokens, mask, ids_restore)``."""
        h, w = self.grid_size(imgs)
        mask, ids_keep, ids_restore = random_masking(imgs.shape[0], h * w, mask_ratio, noise, imgs.device)
        if self.mask_tokens_in_encoder:
            return self.encoder.prepare_tokens(imgs, mask, self.mask_token), mask, ids_restore
        return self.encoder.prepare_visible_tokens(imgs, ids_keep), mask, ids_restore

    def decoder_input(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The encoder output as the decoder reads it: as is in the paper's frame; in the visible-only frame with
        mask tokens put back in raster order and the position table added."""
        if self.mask_tokens_in_encoder:
            return latent
        return restore_with_mask_tokens(latent, self.mask_token, ids_restore) + self.encoder.pos_embed(grid)

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(latent, mask, ids_restore)``; latent is (N, 1+L, D), or (N, 1+L_keep, D) for a visible-only encoder."""
        x, mask, ids_restore = self.encoder_input(imgs, mask_ratio, noise)
        return self.encoder.forward_tokens(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Decoder -> norm -> linear patch prediction, cls dropped: (N, L, p*p*C)."""
        return self.decoder_pred(self.decoder(self.decoder_input(latent, ids_restore, grid)))[:, 1:]

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None) -> MAEOutput:
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore, self.grid_size(imgs))
        return MAEOutput(loss=self.forward_loss(imgs, pred, mask), pred=pred, mask=mask, latent=latent)

    # -- looking inside -------------------------------------------------------------------------------------------
    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Unmasked image -> encoder -> final norm: (N, 1+L, D); deterministic in train and eval mode."""
        return self.encoder.forward_features(imgs)

    def attention_maps(self, imgs: torch.Tensor, layer: int = -1) -> torch.Tensor:
        return self.encoder.attention_maps(imgs, layer)

    def trace_layers(
        self,
        imgs: torch.Tensor,
        mask_ratio: float = 0.0,
        noise: torch.Tensor | None = None,
        encoder_layers: list[int] | None = None,
        decoder_layers: list[int] | None = None,
    ) -> Intermediates:
        """Run the whole autoencoder under a :class:`LayerRecorder` and keep the (detached) tensors of the chosen
        layers (default: all): a :class:`LayerTrace` each (input, MSSA input, half step, ISTA input, output). With
        ``mask_ratio = 0`` (default) nothing is masked; the latent then equals ``forward_features``.
        """
        keep = {}
        for part, chosen in (("encoder", encoder_layers), ("decoder", decoder_layers)):
            n = len(getattr(self, part).blocks)
            keep[part] = {layer_index(i, n, part) for i in (range(n) if chosen is None else chosen)}
        with LayerRecorder(self) as rec:
            out = self(imgs, mask_ratio=mask_ratio, noise=noise)
        traces = {part: {i: t for (p, i), t in rec.collect().items() if p == part and i in keep[part]} for part in keep}
        return Intermediates(
            encoder=traces["encoder"], decoder=traces["decoder"], latent=out.latent, mask=out.mask, pred=out.pred
        )

    # -- bookkeeping ----------------------------------------------------------------------------------------------
    def encoder_blocks(self) -> nn.ModuleList:
        return self.encoder.blocks

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each encoder and decoder block in backward instead of storing its activations."""
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable

    def num_params(self, convention: str = "trainable") -> int:
        """'trainable': what this module really trains. 'official': the Ma-Lab-Berkeley/CRATE count, which adds two
        frozen sin-cos tables (1+L) x D and the unused decoder_embed Linear(D, D)."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if convention == "trainable":
            return trainable
        if convention == "official":
            d = self.encoder.embed_dim
            return trainable + 2 * self.encoder.pos_embed.num_entries * d + d * d + d
        raise ValueError(f"convention must be 'trainable' or 'official', got {convention!r}")

    def no_weight_decay(self) -> set[str]:
        return {"encoder.cls_token", "mask_token"}
