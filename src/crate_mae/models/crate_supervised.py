"""Supervised CRATE: the white-box image classifier of Ma-Lab-Berkeley/CRATE ``model/crate.py`` (Yu et al., *White-Box
Transformers via Sparse Rate Reduction*, NeurIPS 2023), whose ImageNet-1K checkpoints the CRATE repository releases.

Its layers are CRATE-MAE's encoder layers (:class:`~crate_mae.models.crate_mae.CrateBlock`: MSSA then ISTA, no residual
around ISTA); the network around them differs from CRATE-MAE's encoder (``crate_*``):

    tokens   x_i = LN(W LN(patch_i) + b),   Z^0 = [z_cls; x_1; ...; x_L] + E       (E a *learned* table, N(0, 1) init)
    layers   Z^{l+1/2} = Z^l + MSSA(LN(Z^l)),   Z^{l+1} = ISTA(LN(Z^{l+1/2}))    (lambda = 0.1 in the official code)
    readout  y = W_head LN(Z^L_cls) + b_head                                        (no final norm before pooling)

Every LayerNorm has eps 1e-5 (PyTorch's default, as there), every Linear and LayerNorm PyTorch's default init, the
ISTA dictionaries kaiming-uniform with a = 0, cls token and position table N(0, 1): no ``initialize_weights`` pass,
as in the official code. The official ``pool='mean'`` averages all tokens including cls; our ``global_pool='avg'``
averages the patch tokens, as everywhere in this library (the released presets use cls pooling).

This module also owns the official key names (:func:`from_official`, :func:`to_official`) and reads the architecture
off an official state dict (:func:`kwargs_from_official`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping, cast

import torch
import torch.nn as nn

from .base import ModelConfig, check_config
from .crate_mae import BLOCK_LN_EPS, CrateBlock, CrateClassifierBase, check_global_pool
from .embedding import LearnedPositionTable
from .masking import patchify
from .official import key_pattern


@dataclass(frozen=True)
class SupervisedCrateConfig(ModelConfig):
    """Supervised CRATE (``crate_supervised_*``); ``ista_lambda`` 0.1 is the official code's fixed value."""

    architecture: ClassVar[str] = "crate_supervised"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    ista_step_size: float = 0.1
    ista_lambda: float = 0.1
    num_classes: int = 1000
    global_pool: str = "token"
    drop_path_rate: float = 0.0

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
            sincos=False,
        )
        check_global_pool(self.global_pool)
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")


class NormedPatchEmbed(nn.Module):
    """Supervised CRATE's patch embedding: flatten each p x p patch (channels last, as ``patchify``), LayerNorm it,
    project it linearly to D and LayerNorm the result: (N, C, H, W) -> (N, h*w, D)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        patch_dim = patch_size * patch_size * in_chans
        self.patch_size = patch_size
        self.pre_norm = nn.LayerNorm(patch_dim, eps=BLOCK_LN_EPS)
        self.proj = nn.Linear(patch_dim, embed_dim)
        self.norm = nn.LayerNorm(embed_dim, eps=BLOCK_LN_EPS)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.pre_norm(patchify(imgs, self.patch_size))))


class SupervisedCrate(CrateClassifierBase):
    """Supervised CRATE (``crate_supervised_*``). ``model(imgs) -> logits``; ``forward_features(imgs) -> (N, 1+L, D)``
    is the last layer's output Z^L (the official ``feature_pre``: there is no final norm); ``forward_head`` pools
    (``'token'`` = cls, ``'avg'`` = mean of patch tokens), applies ``fc_norm`` (the official head's LayerNorm; the
    official ``feature_last`` is the pooled vector before it) and the linear ``head``. ``num_classes=0`` keeps
    ``fc_norm`` and drops the linear layer. ``ista_lambda`` is fixed at 0.1 in the official code; here it is a keyword.
    The rest of the contract (intermediates, attention maps, layer traces, timm's hooks) is
    :class:`~crate_mae.models.crate_mae.CrateClassifierBase`'s.
    """

    config_class = SupervisedCrateConfig
    config: SupervisedCrateConfig

    def __init__(self, config: SupervisedCrateConfig | None = None, **kwargs: Any):
        """``SupervisedCrate(config)``, or ``SupervisedCrate(embed_dim=..., ...)`` with the config's fields."""
        super().__init__()
        c = self.make_config(config, kwargs)
        sizes = (c.img_size, c.img_size) if isinstance(c.img_size, int) else tuple(c.img_size)
        grid = (sizes[0] // c.patch_size, sizes[1] // c.patch_size)
        self.patch_size = c.patch_size
        self.in_chans = c.in_chans
        self.embed_dim = self.num_features = c.embed_dim
        self.num_heads = c.num_heads
        self.global_pool = c.global_pool
        self.patch_embed = NormedPatchEmbed(c.patch_size, c.in_chans, c.embed_dim)
        self.pos_embed = LearnedPositionTable(c.embed_dim, grid)
        self.cls_token = nn.Parameter(torch.randn(1, 1, c.embed_dim))
        dpr = torch.linspace(0, c.drop_path_rate, c.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            CrateBlock(c.embed_dim, c.num_heads, c.ista_step_size, c.ista_lambda, dpr[i]) for i in range(c.depth)
        )
        if c.num_heads == 1:  # the official Attention has no output projection when one head spans the width
            for blk in cast("Iterable[CrateBlock]", self.blocks):
                blk.attn.proj = nn.Identity()
        self.norm = nn.Identity()  # no final norm before pooling (timm's ViT does the same when it has fc_norm)
        self.fc_norm = nn.LayerNorm(c.embed_dim, eps=BLOCK_LN_EPS)
        self.head = nn.Linear(c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.num_classes = c.num_classes
        self.grad_checkpointing = False
        self.num_prefix_tokens = 1
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=c.embed_dim, reduction=c.patch_size) for i in range(c.depth)
        ]
        self.init_contract(c)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed.table"}

    def num_params(self, convention: str = "trainable") -> int:
        """'trainable' and 'official' agree: the official model trains every tensor it has (its position table
        too) and has no layer that we leave out."""
        if convention not in ("trainable", "official"):
            raise ValueError(f"convention must be 'trainable' or 'official', got {convention!r}")
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


# -- the official key names --------------------------------------------------------------------------------------
NAMES = [  # (official model/crate.py, ours); {i} a block index, {p} weight | bias
    ("cls_token", "cls_token"),
    ("pos_embedding", "pos_embed.table"),
    ("to_patch_embedding.1.{p}", "patch_embed.pre_norm.{p}"),
    ("to_patch_embedding.2.{p}", "patch_embed.proj.{p}"),
    ("to_patch_embedding.3.{p}", "patch_embed.norm.{p}"),
    ("transformer.layers.{i}.0.norm.{p}", "blocks.{i}.norm1.{p}"),
    ("transformer.layers.{i}.0.fn.qkv.weight", "blocks.{i}.attn.qkv.weight"),
    ("transformer.layers.{i}.0.fn.to_out.0.{p}", "blocks.{i}.attn.proj.{p}"),
    ("transformer.layers.{i}.1.norm.{p}", "blocks.{i}.norm2.{p}"),
    ("transformer.layers.{i}.1.fn.weight", "blocks.{i}.ista.dictionary"),
    ("mlp_head.0.{p}", "fc_norm.{p}"),
    ("mlp_head.1.{p}", "head.{p}"),
]
QKV_KEY = "transformer.layers.{}.0.fn.qkv.weight"
OFFICIAL_QKV = re.compile(r"transformer\.layers\.\d+\.0\.fn\.qkv\.weight")
_PATTERNS = [(key_pattern(official), key_pattern(ours), official, ours) for official, ours in NAMES]


def is_official(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` (``module.`` prefixes stripped) is an official ``model/crate.py`` state dict."""
    return any(OFFICIAL_QKV.fullmatch(k) for k in state)


def from_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official supervised-CRATE key names -> ours. Unknown keys are kept, marked, so that a strict load names them."""
    out = {}
    for k, v in state.items():
        name = next(
            (ours.format(**m.groupdict()) for pattern, _, _, ours in _PATTERNS if (m := pattern.fullmatch(k))), None
        )
        out[name or f"<unrecognised>{k}"] = v
    return out


def to_official(model: SupervisedCrate) -> dict[str, torch.Tensor]:
    """A :class:`SupervisedCrate`'s weights under the official names (``CRATE(...).load_state_dict(...)``)."""
    out = {}
    for k, v in model.state_dict().items():
        name = next(
            (official.format(**m.groupdict()) for _, pattern, official, _ in _PATTERNS if (m := pattern.fullmatch(k))),
            None,
        )
        if name is None:
            raise ValueError(f"{k} has no official counterpart")
        out[name] = v
    return out


def kwargs_from_official(
    state: Mapping[str, torch.Tensor],
    in_chans: int = 3,
    patch_size: int | None = None,
    img_size: int | tuple[int, int] | None = None,
) -> dict:
    """SupervisedCrate keywords read off an official state dict: width, patch size (from the patch dimension
    p*p*C with ``in_chans`` channels), depth, classes, image size (from the position table, a square grid unless
    ``img_size`` is given). Heads and ISTA's eta / lambda are not stored."""
    key = "to_patch_embedding.2.weight"
    if key not in state:
        raise ValueError(f"checkpoint has no {key}; not a supervised CRATE (model/crate.py) state dict")
    d, patch_dim = state[key].shape
    if patch_size is None:
        patch_size = round((patch_dim / in_chans) ** 0.5)
    if patch_size < 1 or patch_size * patch_size * in_chans != patch_dim:
        raise ValueError(
            f"patch dimension {patch_dim} is not p*p*{in_chans} for patch_size={patch_size}; pass "
            "in_chans= / patch_size="
        )
    depth = next(i for i in range(len(state) + 1) if QKV_KEY.format(i) not in state)
    inner = state[QKV_KEY.format(0)].shape[0] if depth else d
    if inner != d:
        raise ValueError(
            f"qkv projects width {d} to {inner} (dim_head * heads != dim); only dim_head = dim / heads, "
            "as in every official preset, is supported"
        )
    cfg = dict(embed_dim=d, in_chans=in_chans, patch_size=patch_size, depth=depth)
    if "mlp_head.1.weight" in state:
        cfg["num_classes"] = state["mlp_head.1.weight"].shape[0]
    if img_size is None and "pos_embedding" in state:
        n = state["pos_embedding"].shape[1] - 1
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"pos_embedding holds {n} patches, not a square grid; pass img_size=")
        img_size = side * patch_size
    if img_size is not None:
        cfg["img_size"] = img_size
    return cfg
