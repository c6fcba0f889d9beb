"""Structured outputs of the masked autoencoders."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MAEOutput:
    """What one masked-completion forward pass returns.

    loss:   MSE on masked patches (scalar).
    pred:   decoder patch predictions (N, L, p*p*C), in the loss target's space (normalised if norm_pix_loss).
    mask:   (N, L), 1 = masked.
    latent: encoder output after its final norm (N, 1+L, D) for CRATE-MAE; cls + visible tokens for ViT-MAE.
    """

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor
    latent: torch.Tensor

    def __iter__(self):  # `loss, pred, mask, latent = model(imgs)` reads like the official tuple return
        return iter((self.loss, self.pred, self.mask, self.latent))


@dataclass
class LayerTrace:
    """The tensors of one CRATE layer, tokens as rows (N, 1+L, D).

    Encoder layer l:  z_in = Z^l,  mssa_in = LN(Z^l),  z_half = Z^{l+1/2} = Z^l + MSSA(LN(Z^l)),
                      ista_in = LN(Z^{l+1/2}),  z_out = Z^{l+1} = ISTA(ista_in).
    Decoder layer l:  z_in = Y^l,  z_half = Y' = W LN(Y^l),  mssa_in = LN(Y'),  z_out = Y' - MSSA(LN(Y')).
    """

    z_in: torch.Tensor
    mssa_in: torch.Tensor
    z_half: torch.Tensor
    z_out: torch.Tensor
    ista_in: torch.Tensor | None = None


@dataclass
class Intermediates:
    """Per-layer traces of a CRATE-MAE forward pass (``trace_layers``).

    encoder / decoder: dict layer index -> LayerTrace for the requested layers.
    latent: encoder output after final norm; mask: (N, L) (all zeros when unmasked); pred: decoder predictions.
    """

    encoder: dict[int, LayerTrace] = field(default_factory=dict)
    decoder: dict[int, LayerTrace] = field(default_factory=dict)
    latent: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    pred: torch.Tensor | None = None
