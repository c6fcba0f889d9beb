"""Top-k accuracy (as a percentage, or as counts to add up over shards) and its bootstrap interval."""

from __future__ import annotations

from typing import Sequence

import torch


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Percentage of rows whose label is among the ``k`` highest scores, as ``{"top1": .., "top5": ..}``.

    ``k`` is capped at the number of classes (top-5 of a 3-class problem is top-3, i.e. 100 %). Ties are broken by
    ``torch.topk`` (lowest index first on CPU)."""
    hit, maxk = _top_hits(scores, labels, ks)
    return {f"top{k}": 100.0 * hit[:, : min(k, maxk)].any(dim=1).float().mean().item() for k in ks}


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """How many rows have their label among the ``k`` highest scores, one count per ``k`` (an int64 tensor on the
    scores' device, so no host sync: counts of shards or batches add up, as in a sharded validation). The same
    rules as :func:`topk_accuracy`."""
    hit, maxk = _top_hits(scores, labels, ks)
    return torch.stack([hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks])


def _top_hits(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> tuple[torch.Tensor, int]:
    """(N, maxk) booleans: is the label the j-th highest score; maxk = max(ks) capped at the number of classes."""
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels).long()
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(
            f"scores must be (N, C) matching labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    maxk = min(max(ks), scores.shape[1])
    top = scores.topk(maxk, dim=1).indices
    return top == labels[:, None], maxk


def top1_interval(
    scores: torch.Tensor, labels: torch.Tensor, level: float = 0.95, samples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval (%) of top-1 accuracy over the evaluated images: the images are resampled with
    replacement ``samples`` times and the central ``level`` of the resampled accuracies is returned. It measures how
    much the score depends on which val images were drawn (a single run's sampling noise), not run-to-run noise."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels).long()
    correct = (scores.argmax(dim=1) == labels).double()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(correct), (samples, len(correct)), generator=gen)
    acc = 100.0 * correct[idx].mean(dim=1)
    lo, hi = torch.quantile(acc, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return lo, hi
