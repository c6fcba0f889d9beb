"""What a classifier says about each image: its top-k classes with their softmax probabilities.

Used by the report in place of reconstructions when the model is a classifier (no decoder, ``num_classes > 0``:
supervised CRATE, a fine-tuned ``crate_*`` encoder, a ViT classifier). Class names are those recorded with the
weights (``crate-mae finetune`` stores the training folder's classes), else ImageNet-1K's for a 1000-way head (the
official supervised CRATE checkpoints; names from timm's ``ImageNetInfo``, in the usual sorted-synset order), else
``class i``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from timm.data import ImageNetInfo

from .figures import clean_axis, pyplot, save_figure, to_hwc
from .inputs import Normalization, full_precision


def is_classifier(model: nn.Module) -> bool:
    """A model without decoder whose head has classes (its config's ``num_classes``)."""
    return not model.has_decoder and model.config.num_classes > 0


def class_names(model: nn.Module) -> tuple[list[str], str]:
    """``(names, where they come from)`` for the model's ``num_classes`` outputs."""
    n = model.config.num_classes if is_classifier(model) else 0
    recorded = model.provenance.get("classes")
    if isinstance(recorded, list) and len(recorded) == n:
        return [str(c) for c in recorded], "recorded with the weights"
    if n == 1000:
        info = ImageNetInfo()
        return [
            info.index_to_description(i).split(",")[0] for i in range(n)
        ], "ImageNet-1K (none recorded with the weights; the head has 1000 outputs)"
    return [f"class {i}" for i in range(n)], "none recorded with the weights"


@torch.no_grad()
def top_predictions(model: nn.Module, imgs: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probabilities, class indices)``, each (N, min(k, classes)), best first; eval mode, full precision."""
    if not is_classifier(model):
        raise ValueError(f"{type(model).__name__} is not a classifier (it has a decoder or no classes)")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    was_training = model.training
    model.eval()
    try:
        with full_precision():
            probs = torch.softmax(model(imgs).float(), dim=-1)
    finally:
        model.train(was_training)
    return probs.topk(min(k, probs.shape[-1]), dim=-1)


def plot_predictions(
    model: nn.Module, imgs: torch.Tensor, norm: Normalization, k: int = 5, labels: list[str] | None = None
):
    """One row per image: the photo (captioned with ``labels``, e.g. its file) and a bar chart of its top-k classes
    with their probabilities."""
    plt = pyplot()
    probs, idx = top_predictions(model, imgs, k)
    names, source = class_names(model)
    photos = to_hwc(norm.denormalize(imgs))
    n, k = probs.shape
    fig, axes = plt.subplots(n, 2, figsize=(7.5, 1.7 * n + 0.5), squeeze=False, gridspec_kw=dict(width_ratios=[1, 2.6]))
    for i in range(n):
        axes[i][0].imshow(photos[i], interpolation="nearest")
        clean_axis(axes[i][0])
        if labels is not None:
            axes[i][0].set_xlabel(labels[i], fontsize=7)
        ax = axes[i][1]
        p = probs[i].cpu().numpy()
        ax.barh(np.arange(k), p, color="tab:blue")
        ax.set_yticks(np.arange(k), [names[j] for j in idx[i].tolist()], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=7)
        for r, v in enumerate(p):
            ax.text(min(v + 0.01, 0.85), r, f"{v:.1%}", va="center", fontsize=7)
    fig.suptitle(f"top-{k} predictions (softmax); class names: {source}", fontsize=8)
    fig.tight_layout()
    return fig


def save_predictions(
    model: nn.Module,
    imgs: torch.Tensor,
    norm: Normalization,
    path: str | Path,
    k: int = 5,
    labels: list[str] | None = None,
) -> Path:
    return save_figure(plot_predictions(model, imgs, norm, k, labels), path)
