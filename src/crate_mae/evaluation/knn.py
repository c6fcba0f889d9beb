"""Weighted k-nearest-neighbour classification (DINO ``eval_knn.knn_classifier``, Wu et al. 2018).

Features are L2-normalised; for a query q the k most cosine-similar training features x_j (labels y_j) vote

    score_c(q) = sum_{j in top-k(q)} exp(cos(q, x_j) / T) * [y_j = c],     T = 0.07,

and the predicted classes are the highest scores.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .metrics import topk_accuracy

DEFAULT_KS = (10, 20, 100, 200)


@torch.no_grad()
def knn_scores(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, k: int, num_classes: int,
               temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class scores (Q, C) of the weighted k-NN vote above; ``k`` is capped at the training-set size."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    train = F.normalize(train_x.float(), dim=1)
    train_y = train_y.long()
    k = min(k, train.shape[0])
    out = []
    for start in range(0, query_x.shape[0], chunk):  # (chunk, N_train) similarities at a time bound the memory
        q = F.normalize(query_x[start:start + chunk].float(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, train_y[idx], weights)
        out.append(votes)
    return torch.cat(out)


def knn_evaluate(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 num_classes: int, ks: Sequence[int] = DEFAULT_KS, temperature: float = 0.07
                 ) -> dict[int, dict[str, float]]:
    """Top-1 / top-5 accuracy (%) on ``val`` for every k: ``{k: {"top1": .., "top5": ..}}``."""
    return {int(k): topk_accuracy(knn_scores(train_x, train_y, val_x, k, num_classes, temperature), val_y)
            for k in ks}
