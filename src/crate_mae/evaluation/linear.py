"""Linear probes on frozen features.

Two protocols, both on cached features (:mod:`.features`):

- ``logistic_probe`` -- the CRATE-MAE paper's: multinomial logistic regression (scikit-learn, L-BFGS) on
  standardised features; the inverse regularisation strength C is chosen on a stratified held-out part of train,
  then the model is refit on all of train and scored on val.
- ``train_linear_head`` -- facebookresearch/mae ``main_linprobe.py``: ``BatchNorm1d(affine=False, eps=1e-6)`` then
  ``Linear`` (weights N(0, 0.01^2) truncated, bias 0), LARS (or SGD with momentum 0.9), per-step linear warm-up
  then half-cosine, cross-entropy. The default lr is MAE's absolute one, 6.4 (blr 0.1 at batch 16384): a LARS step
  changes each weight matrix by about ``lr * 0.001`` of its norm whatever the batch, so scaling the lr down with a
  small batch (``blr``) would make the probe crawl; pass ``blr`` to get MAE's linear scaling rule instead. The
  encoder is frozen, so its features are computed once instead of every epoch; unlike MAE's script no crop/flip
  augmentation is applied to them (deterministic features).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..engine.optim import WarmupCosine, effective_lr
from ..utils import default_device
from .lars import LARS
from .metrics import top1_interval, topk_accuracy

DEFAULT_CS = (0.001, 0.01, 0.1, 1.0, 10.0)
MAE_PROBE_LR = 6.4  # facebookresearch/mae main_linprobe: blr 0.1 x batch 16384 / 256


# -- (a) paper protocol: scikit-learn logistic regression ----------------------------------------------------------
def _logreg(C: float, max_iter: int, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))


def _numpy(a, dtype) -> np.ndarray:
    if isinstance(a, torch.Tensor):  # via torch's own casts: numpy has no bfloat16
        a = a.detach().cpu()
        return (a.float() if dtype == np.float32 else a.long()).numpy()
    return np.asarray(a, dtype=dtype)


def holdout_indices(y, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit rows, held-out rows)`` of the labels ``y``: the stratified held-out part of train on which C is chosen
    (stratified unless a class has a single sample or either part would hold fewer rows than there are classes);
    depends only on ``y``, ``holdout`` and ``seed``."""
    from sklearn.model_selection import train_test_split

    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    y = _numpy(y, np.int64)
    counts = np.bincount(y)
    n_held, n_classes = int(np.ceil(holdout * len(y))), int((counts > 0).sum())
    stratify = y if counts[counts > 0].min() >= 2 and min(n_held, len(y) - n_held) >= n_classes else None
    return tuple(train_test_split(np.arange(len(y)), test_size=holdout, random_state=seed, stratify=stratify))


def logistic_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    Cs: Sequence[float] = DEFAULT_CS,
    holdout: float = 0.1,
    max_iter: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Sweep ``Cs`` on a stratified ``holdout`` fraction of train (top-1 there), refit on all of train with the best
    C, report top-1 / top-5 (%) on val. With a single C the sweep is skipped. Features and labels are tensors or
    numpy arrays.

    Returns ``{"top1", "top5", "top1_ci95", "C", "sweep": {C: holdout top-1}}`` (``top1_ci95``:
    :func:`.metrics.top1_interval` over the val images)."""

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    X, y, Xv, yv = (
        _numpy(train_x, np.float32),
        _numpy(train_y, np.int64),
        _numpy(val_x, np.float32),
        _numpy(val_y, np.int64),
    )
    if not np.isfinite(X).all() or not np.isfinite(Xv).all():
        raise ValueError("features contain NaN or inf; the encoder diverged or the feature file is corrupt")
    if len(np.unique(y)) < 2:
        raise ValueError(f"train features hold a single class ({int(y[0])}); a classifier needs at least two")
    Cs = [float(c) for c in Cs]
    if not Cs or any(c <= 0 for c in Cs):
        raise ValueError(f"every C must be > 0, got {Cs}")
    sweep: dict[float, float] = {}
    # One BLAS thread: these are small problems, and OpenBLAS threads next to torch's (spinning) OpenMP pool made
    # each fit ~30x slower in our measurements on 2 cores.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported via n_iter in the result instead
        if len(Cs) > 1:
            a, b = holdout_indices(y, holdout, seed)
            Xa, Xb, ya, yb = X[a], X[b], y[a], y[b]
            for C in Cs:
                sweep[C] = 100.0 * float((_logreg(C, max_iter, seed).fit(Xa, ya).predict(Xb) == yb).mean())
            best = max(Cs, key=lambda c: (sweep[c], -c))  # ties: the stronger regularisation
        else:
            best = Cs[0]
        clf = _logreg(best, max_iter, seed).fit(X, y)
    # predict_proba columns follow clf.classes_ (the labels seen in train); map them back to label indices.
    num_classes = int(max(y.max(), yv.max())) + 1
    proba = np.full((len(yv), num_classes), -1.0)
    proba[:, clf.classes_] = clf.predict_proba(Xv)
    acc = topk_accuracy(torch.from_numpy(proba), torch.from_numpy(yv))
    ci = top1_interval(torch.from_numpy(proba), torch.from_numpy(yv))
    n_iter = int(np.max(clf[-1].n_iter_))
    return {**acc, "top1_ci95": ci, "C": best, "sweep": sweep, "n_iter": n_iter, "converged": n_iter < max_iter}


# -- (b) MAE protocol: BatchNorm + linear head, LARS ----------------------------------------------------------------
class LinearProbeHead(nn.Module):
    """``BatchNorm1d(affine=False)`` + ``Linear``: MAE's probe head. The parameter-free BN whitens each feature
    dimension (running statistics at eval), which makes the LARS probe insensitive to the feature scale."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(x))


def train_linear_head(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 90,
    batch_size: int = 256,
    blr: float | None = None,
    lr: float | None = None,
    weight_decay: float = 0.0,
    warmup_epochs: float = 10,
    optimizer: str = "lars",
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Train :class:`LinearProbeHead` on ``train`` features and report val top-1 / top-5 (%).

    Returns ``{"top1", "top5", "top1_ci95", "lr", "steps", "final_train_loss", "head": state_dict}``."""

    if optimizer not in ("lars", "sgd"):
        raise ValueError(f"optimizer must be 'lars' or 'sgd', got {optimizer!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    device = torch.device(device) if device is not None else default_device()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = LinearProbeHead(train_x.shape[1], num_classes).to(device)
    base_lr = lr if lr is not None else (effective_lr(blr, batch_size, 1, 1) if blr is not None else MAE_PROBE_LR)
    if base_lr <= 0:
        raise ValueError(f"learning rate must be > 0, got {base_lr}")
    opt = (
        LARS(head.parameters(), lr=base_lr, weight_decay=weight_decay)
        if optimizer == "lars"
        else torch.optim.SGD(head.parameters(), lr=base_lr, momentum=0.9, weight_decay=weight_decay)
    )
    n = train_x.shape[0]
    steps_per_epoch = max(1, n // batch_size)  # drop_last, as MAE's loader
    total = epochs * steps_per_epoch
    schedule = WarmupCosine(base_lr, total, min(total, round(warmup_epochs * steps_per_epoch)))
    X, Y = train_x.float().to(device), train_y.long().to(device)
    step, last = 0, math.nan
    head.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            schedule.apply(opt, step)
            loss = F.cross_entropy(head(X[idx]), Y[idx])
            if not torch.isfinite(loss):
                raise ValueError(
                    f"linear probe loss became {loss.item()} at step {step}; lower the lr (now {base_lr:.3g})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step, last = step + 1, loss.item()
    head.eval()
    with torch.no_grad():
        scores = head(val_x.float().to(device)).cpu()
    return {
        **topk_accuracy(scores, val_y),
        "top1_ci95": top1_interval(scores, val_y),
        "lr": base_lr,
        "steps": step,
        "final_train_loss": last,
        "head": {k: v.cpu() for k, v in head.state_dict().items()},
    }
