"""Weighted k-nearest-neighbour classification (DINO ``eval_knn.knn_classifier``, Wu et al. 2018).

Features are L2-normalised; for a query q the k most cosine-similar training features x_j (labels y_j) vote

    score_c(q) = sum_{j in top-k(q)} exp(cos(q, x_j) / T) * [y_j = c],     T = 0.07,

and the predicted classes are the highest scores.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..utils import default_device
from .metrics import topk_accuracy

DEFAULT_KS = (10, 20, 100, 200)


@torch.no_grad()
def knn_scores(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    query_x: torch.Tensor,
    k: int | Sequence[int],
    num_classes: int,
    temperature: float = 0.07,
    chunk: int = 1024,
    device: torch.device | str | None = None,
) -> torch.Tensor | dict[int, torch.Tensor]:
    """Class scores (Q, C) of the weighted k-NN vote above (CPU tensors); ``k`` is capped at the training-set size.

    With a list of ``k`` the similarities and the top-k are computed once, for the largest k, and each smaller k
    reads the first columns (top-k is sorted): returns ``{k: scores}``. ``device`` (default: CUDA when available)
    runs the matrix products and top-k there, ``chunk`` queries at a time to bound the (chunk, N_train) memory."""

    ks = [k] if isinstance(k, int) else [int(x) for x in k]
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    device = torch.device(device) if device is not None else default_device()
    train = F.normalize(train_x.to(device, torch.float32), dim=1)
    train_y = train_y.to(device).long()
    kmax = min(max(ks), train.shape[0])
    out: dict[int, list[torch.Tensor]] = {kk: [] for kk in ks}
    for start in range(0, query_x.shape[0], chunk):
        q = F.normalize(query_x[start : start + chunk].to(device, torch.float32), dim=1)
        sim, idx = (q @ train.T).topk(kmax, dim=1)
        weights, labels = (sim / temperature).exp(), train_y[idx]
        for kk in ks:
            n = min(kk, kmax)
            votes = torch.zeros(q.shape[0], num_classes, dtype=weights.dtype, device=device)
            votes.scatter_add_(1, labels[:, :n], weights[:, :n])
            out[kk].append(votes.cpu())
    scores = {kk: torch.cat(v) for kk, v in out.items()}
    return scores[ks[0]] if isinstance(k, int) else scores


def knn_evaluate(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    device: torch.device | str | None = None,
) -> dict[int, dict[str, float]]:
    """Top-1 / top-5 accuracy (%) on ``val`` for every k: ``{k: {"top1": .., "top5": ..}}``."""
    scores = knn_scores(train_x, train_y, val_x, list(ks), num_classes, temperature, device=device)
    return {int(k): topk_accuracy(s, val_y) for k, s in scores.items()}
