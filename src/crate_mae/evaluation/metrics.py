"""Top-k accuracy."""

from __future__ import annotations

from typing import Sequence

import torch


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Percentage of rows whose label is among the ``k`` highest scores, as ``{"top1": .., "top5": ..}``.

    ``k`` is capped at the number of classes (top-5 of a 3-class problem is top-3, i.e. 100 %). Ties are broken by
    ``torch.topk`` (lowest index first on CPU)."""
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels).long()
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores must be (N, C) matching labels (N,), got {tuple(scores.shape)} and "
                         f"{tuple(labels.shape)}")
    maxk = min(max(ks), scores.shape[1])
    top = scores.topk(maxk, dim=1).indices
    hit = top == labels[:, None]
    return {f"top{k}": 100.0 * hit[:, :min(k, maxk)].any(dim=1).float().mean().item() for k in ks}
