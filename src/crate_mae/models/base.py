"""The contract every network here keeps, so that other layers branch on stated facts instead of probing attributes.

Every model is a :class:`Capabilities` (timm's ``VisionTransformer`` from ``vit_classifier`` included) and has:

- ``has_decoder`` / ``white_box``: class-level capabilities (a masked autoencoder that reconstructs; CRATE's
  MSSA + ISTA layers, whose coding rates and sparsity the analysis tools measure).
- ``config``: its frozen :class:`ModelConfig` (one dataclass per architecture, as nanoGPT's ``GPTConfig``): what the
  constructor takes, what ``config.json`` holds (``config.to_dict()``), enough to rebuild it. Changes after
  construction (``reset_classifier``, ``set_drop_path``) replace it (``dataclasses.replace``).
- ``model_name``: the registry preset it was built from (``config.json``'s ``"model"``), or None.
- ``data_config``: the preprocessing it was trained with (``img_size``, ``mean``, ``std``), filled in when weights are
  loaded and read through :func:`crate_mae.data.resolve_data_config`, never from ``config``.
- ``provenance``: where the weights came from (checkpoint path, random init, what a run recorded); reports only.
- ``no_weight_decay()``, ``set_grad_checkpointing()``, ``group_matcher()`` (timm's hooks; a masked autoencoder has
  no layer groups and says so), ``num_params()``, ``encoder_blocks()``.
Models do not read or write files: that is :mod:`crate_mae.io`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Protocol, TypeVar, cast

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .embedding import LearnedPositionTable, PositionTable, tokens_with_mask_tokens, visible_tokens
from .masking import masked_mse, normalize_patches, patchify, unpatchify

ConfigT = TypeVar("ConfigT", bound="ModelConfig")


@dataclass(frozen=True)
class ModelConfig:
    """The constructor arguments of one architecture: the image fields every architecture shares, then those a
    subclass declares, with the defaults its constructor has; ``validate`` refuses impossible values.
    ``architecture`` names it in ``config.json``.

    For one release ``config["embed_dim"]`` / ``config.get(...)`` / ``dict(config)`` still read it, with a
    DeprecationWarning: read attributes (``config.embed_dim``) or ``config.to_dict()``."""

    architecture: ClassVar[str] = ""
    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.img_size, list):  # JSON gives (height, width) as a list
            object.__setattr__(self, "img_size", tuple(self.img_size))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError for values the model cannot be built with."""

    @classmethod
    def from_mae(cls: type[ConfigT], mae: ModelConfig, **changes: Any) -> ConfigT:
        """This architecture as the encoder of the autoencoder config ``mae`` (``CrateEncoderConfig`` from a
        ``CrateMAEConfig``, ``ViTConfig`` from a ``ViTMAEConfig``): the fields both have, then ``changes``."""
        shared = {f.name for f in fields(mae)}
        return cls(**{**{f.name: getattr(mae, f.name) for f in fields(cls) if f.name in shared}, **changes})

    def to_dict(self) -> dict[str, Any]:
        """``architecture`` and every field, JSON-ready (tuples as lists): the model part of ``config.json``."""
        out: dict[str, Any] = {"architecture": self.architecture}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls: type[ConfigT], d: Mapping[str, Any], where: str = "config") -> ConfigT:
        """The config held in ``d`` (a ``config.json``; keys that are not fields are ignored). A wrongly typed or
        impossible value is one ValueError naming ``where`` (JSON gives no types to rely on)."""
        if d.get("architecture", cls.architecture) != cls.architecture:
            raise ValueError(f"{where}: architecture {d.get('architecture')!r} is not {cls.architecture!r}")
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        problems = [p for k, v in kwargs.items() if (p := _type_problem(k, v, known[k].default))]
        if problems:
            raise ValueError(f"{where}: " + "; ".join(problems))
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None

    # -- deprecated dict-style reads (one release) ----------------------------------------------------------------
    def _dict_read(self, key: Any = None) -> None:
        instead = f"model.config.{key}" if isinstance(key, str) else "its attributes or model.config.to_dict()"
        warnings.warn(
            f"reading model.config as a dict is deprecated: it is a {type(self).__name__} now; read {instead}",
            DeprecationWarning,
            stacklevel=3,
        )

    def __getitem__(self, key: str) -> Any:
        self._dict_read(key)
        if key == "model":
            raise KeyError("'model': the registry preset name is no longer in config; read model.model_name")
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        self._dict_read(key)
        if key == "model":
            raise KeyError("'model': the registry preset name is no longer in config; read model.model_name")
        return self.to_dict().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._dict_read()
        return key in self.to_dict()

    def keys(self):
        self._dict_read()
        return self.to_dict().keys()

    def items(self):
        self._dict_read()
        return self.to_dict().items()


def _type_problem(name: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand where the field's ``default`` stands."""
    if default is None or not isinstance(default, (bool, int, float, str)):
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if name == "img_size":  # also (height, width)
            ok = ok or (
                isinstance(value, (list, tuple))
                and len(value) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
            )
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    return None if ok else f"{name} = {value!r} must be a {type(default).__name__}"


class Capabilities:
    """The model contract (see the module docstring). Subclasses set ``config_class`` and call
    :meth:`init_contract` with the config :meth:`make_config` resolved from their constructor's arguments."""

    config_class: ClassVar[type[ModelConfig]]
    has_decoder: ClassVar[bool] = False
    white_box: ClassVar[bool] = False
    config: ModelConfig  # each model narrows it to its own config class
    model_name: str | None
    data_config: dict[str, Any]
    provenance: dict[str, Any]
    # What the defaults below use and the model provides: nn.Module's parameters(), the encoder's blocks.
    parameters: Callable[..., Iterator[nn.Parameter]]
    blocks: nn.ModuleList | nn.Sequential

    @classmethod
    def make_config(cls, config: ConfigT | None, kwargs: Mapping[str, Any]) -> ConfigT:
        """A constructor's config: ``config`` as given, or built from keyword arguments (the old signature);
        a mix of both, or another architecture's config, is a TypeError."""
        if config is None:
            # config_class is the config class that the constructor's ``config`` parameter names (ConfigT)
            return cast(ConfigT, cls.config_class(**kwargs))
        if kwargs:
            raise TypeError(
                f"{cls.__name__} takes a {cls.config_class.__name__} or keyword arguments, not both "
                f"(got config and {', '.join(sorted(kwargs))})"
            )
        if type(config) is not cls.config_class:
            raise TypeError(f"{cls.__name__} takes a {cls.config_class.__name__}, got {type(config).__name__}")
        return config

    def init_contract(self, config: ModelConfig) -> None:
        self.config = config
        self.model_name = None
        self.data_config = {}
        self.provenance = {}

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay (timm's hook)."""
        return set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute blocks in backward instead of storing their activations (timm's hook)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement set_grad_checkpointing")

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth for layer-wise lr decay (timm's hook); encoder classifiers have them."""
        raise ValueError(
            f"{type(self).__name__} has no layer groups (a masked autoencoder); layer-wise lr decay "
            "needs an encoder classifier"
        )

    def num_params(self, convention: str = "trainable") -> int:
        """'trainable': what this module trains. 'official': the count the official code reports, where the
        architecture has official code that counts otherwise (a ValueError elsewhere)."""
        if convention == "trainable":
            return sum(p.numel() for p in self.parameters() if p.requires_grad)
        if convention == "official":
            raise ValueError(f"{type(self).__name__} has no official parameter count")
        raise ValueError(f"convention must be 'trainable' or 'official', got {convention!r}")

    def encoder_blocks(self) -> nn.ModuleList | nn.Sequential:
        """The encoder's transformer blocks, in order (feature hooks read their outputs)."""
        return self.blocks


class ModelClass(Protocol):
    """What the registry holds: a model class (each keeps the contract of :class:`Capabilities`), called with its
    config or with keyword arguments."""

    @property
    def config_class(self) -> type[ModelConfig]: ...

    def __call__(self, config: Any = ..., /, **kwargs: Any) -> nn.Module: ...


class PatchTokens:
    """The encoder input of both architectures, in either masking frame (see embedding.py). Needs ``patch_embed``,
    ``cls_token``, ``pos_embed`` (a PositionTable), ``patch_size``, ``in_chans``."""

    patch_embed: nn.Module
    cls_token: nn.Parameter
    pos_embed: PositionTable | LearnedPositionTable
    patch_size: int
    in_chans: int

    def grid_size(self, imgs: torch.Tensor) -> tuple[int, int]:
        check_images(imgs, self.patch_size, self.in_chans)
        return imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size

    def prepare_tokens(
        self, imgs: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Patch-embed, replace masked patches by ``mask_token``, prepend cls, add the sin-cos table to all."""
        grid = self.grid_size(imgs)
        return tokens_with_mask_tokens(self.patch_embed(imgs), self.cls_token, self.pos_embed(grid), mask, mask_token)

    def prepare_visible_tokens(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """The visible-only frame: table added to the patch embeddings, kept patches only, cls prepended."""
        grid = self.grid_size(imgs)
        return visible_tokens(self.patch_embed(imgs), self.cls_token, self.pos_embed(grid), ids_keep)


class MaskedAutoencoder(Capabilities, nn.Module):
    """``forward(imgs, mask_ratio, noise) -> MAEOutput``, with the patch (un)folding and masked-patch loss shared by
    CRATE-MAE and ViT-MAE. Needs ``patch_size``, ``in_chans``, ``norm_pix_loss`` and ``grid_size(imgs)``."""

    has_decoder = True
    patch_size: int
    in_chans: int
    norm_pix_loss: bool
    grid_size: Callable[[torch.Tensor], tuple[int, int]]  # PatchTokens.grid_size, or the model's own

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

    @torch.no_grad()
    def reconstruct(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Images in the input's (normalised) space: ``masked`` (masked patches 0, the dataset mean colour once
        un-normalised), ``recon`` (visible patches from the input, masked ones predicted), ``pred`` (all
        predicted), and ``mask`` (N, L), ``loss``. With ``norm_pix_loss`` the predictions are per-patch standardised
        pixels, mapped back with the *target's own* patch mean and variance (the MAE demo's convention)."""
        was_training = self.training
        self.eval()
        out = self(imgs, mask_ratio=mask_ratio, noise=noise)
        self.train(was_training)
        target = self.patchify(imgs)
        pred = out.pred.float()
        if self.norm_pix_loss:
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
        m = out.mask.unsqueeze(-1)
        grid = self.grid_size(imgs)
        return {
            "masked": self.unpatchify(target * (1 - m), grid),
            "recon": self.unpatchify(target * (1 - m) + pred * m, grid),
            "pred": self.unpatchify(pred, grid),
            "mask": out.mask,
            "loss": out.loss.detach(),
        }


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, grad_checkpointing: bool) -> torch.Tensor:
    """Apply ``blocks`` in order; with ``grad_checkpointing`` (and autograd on) each block's activations are
    recomputed in backward instead of stored."""
    for blk in blocks:
        x = checkpoint(blk, x, use_reentrant=False) if grad_checkpointing and torch.is_grad_enabled() else blk(x)
    return x


# -- helpers ------------------------------------------------------------------------------------------------------
def init_weights(model: nn.Module, patch_embed: nn.Module, tokens: list[nn.Parameter]) -> None:
    """The official MAE / CRATE-MAE ``initialize_weights``: xavier-uniform patch-embedding weight (as a Linear) and
    Linear weights, zero Linear biases, N(0, 0.02) tokens, unit LayerNorms. The patch-embedding bias keeps Conv2d's
    default; raw square parameters (ISTA dictionaries, decoder linears) keep the kaiming-uniform init their
    modules give them (see layers.py)."""
    proj = patch_embed.proj
    assert isinstance(proj, (nn.Conv2d, nn.Linear))  # timm's PatchEmbed has a Conv2d, supervised CRATE's a Linear
    w = proj.weight
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


def check_config(
    img_size,
    patch_size,
    in_chans,
    embed_dim,
    num_heads,
    depth,
    ista_step_size=0.1,
    ista_lambda=0.0,
    sincos: bool = True,
) -> None:
    sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if patch_size < 1 or any(s % patch_size or s < patch_size for s in sizes):
        raise ValueError(f"img_size={img_size} is not a positive multiple of patch_size={patch_size}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if num_heads < 1 or embed_dim % num_heads:
        raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
    if sincos and embed_dim % 4:
        raise ValueError(f"embed_dim={embed_dim} must be divisible by 4 (2-D sin-cos position table)")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if not ista_step_size > 0:
        raise ValueError(f"ista_step_size must be > 0, got {ista_step_size}")
    if not ista_lambda >= 0:
        raise ValueError(
            f"ista_lambda must be >= 0 (a negative threshold is not a sparsity penalty), got {ista_lambda}"
        )


def layer_index(layer: int, n: int, what: str = "encoder") -> int:
    """``layer`` (negative counts from the end) as an index into ``n`` layers, or a ValueError naming it."""
    if not -n <= layer < n:
        raise ValueError(f"{what} layer {layer} out of range for {n} layers")
    return layer % n


def official_shape_kwargs(state: Mapping[str, torch.Tensor], enc_key: str, dec_key: str) -> dict:
    """Constructor keywords read off an official state dict's shapes: width, channels, patch, depths (keys
    ``enc_key`` / ``dec_key`` formatted with a block index), image size from the stored position table."""
    if "patch_embed.proj.weight" not in state:
        raise ValueError("checkpoint has no patch_embed.proj.weight; cannot infer the architecture")
    d, c, p, _ = state["patch_embed.proj.weight"].shape
    count = lambda key: next(i for i in range(len(state) + 1) if key.format(i) not in state)
    cfg = dict(embed_dim=d, in_chans=c, patch_size=p, depth=count(enc_key), decoder_depth=count(dec_key))
    if "pos_embed" in state:
        n = state["pos_embed"].shape[1] - 1
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"pos_embed holds {n} patches, not a square grid; pass img_size=")
        cfg["img_size"] = side * p
    return cfg
