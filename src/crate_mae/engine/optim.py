"""The MAE optimisation recipe: AdamW with decay only on weight matrices, lr scaled by the effective batch,
per-step linear warm-up then half-cosine decay."""

from __future__ import annotations

import math
from typing import Any, Sequence, cast

import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay

from ..models.base import Capabilities


def effective_lr(blr: float, batch_size: int, accum_iter: int, world_size: int, lr: float | None = None) -> float:
    """``lr`` if given, else the linear scaling rule ``blr * batch_size * accum_iter * world_size / 256``."""
    if lr is not None:
        return float(lr)
    return blr * batch_size * accum_iter * world_size / 256


PARAM_GROUPS = ("mae", "timm")


def adamw(params, lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with the fused kernel where torch has one for the parameters' device (CPU, CUDA).

    The fused kernel makes one pass per tensor instead of about six element-wise ops, equal to the default
    implementation up to float rounding. That matters most on a CPU shared with other processes, where each
    element-wise op waits for all its threads (README "Speed")."""
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(params, lr=lr, betas=cast("tuple[float, float]", tuple(betas)), fused=fused or None)


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    param_groups: str | Sequence[dict[str, Any]] = "mae",
) -> torch.optim.AdamW:
    """AdamW with a decay and a no-decay group, or with the groups given.

    ``param_groups='mae'`` (default) is facebookresearch/mae ``main_pretrain.py``: timm ``add_weight_decay(model,
    weight_decay)`` with no skip list, i.e. decay on every trainable parameter with >= 2 dimensions (the cls and
    mask tokens, shape (1, 1, D), included) and none on 1-D ones (norms, biases). ``'timm'`` also exempts
    ``model.no_weight_decay()`` (the tokens), as timm's ``create_optimizer`` and MAE's fine-tuning do.

    ``param_groups`` may instead be the groups themselves, dicts with ``params`` and their own ``weight_decay`` (else
    ``weight_decay``) and ``lr_scale`` (read by :meth:`WarmupCosine.apply`): fine-tuning's layer-wise lr decay groups.
    They must hold every trainable parameter of ``model``. Fused where possible (:func:`adamw`)."""
    if not isinstance(param_groups, str):
        groups = [
            {**g, "params": list(g["params"]), "weight_decay": g.get("weight_decay", weight_decay)}
            for g in param_groups
        ]
        grouped = {id(p) for g in groups for p in g["params"]}
        left = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in grouped]
        if left:
            raise ValueError(
                f"param_groups leave {len(left)} trainable parameters of {type(model).__name__} out "
                f"(e.g. {', '.join(left[:3])})"
            )
        return adamw(groups, lr, betas)
    if param_groups not in PARAM_GROUPS:
        raise ValueError(f"param_groups must be one of {PARAM_GROUPS}, got {param_groups!r}")
    skip: set[str] = set()
    if param_groups == "timm":
        assert isinstance(model, Capabilities)  # no_weight_decay() is part of every model's contract
        skip = set(model.no_weight_decay())
    groups = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip)
    return adamw(groups, lr, betas)


class WarmupCosine:
    """lr(step) for optimizer step ``step`` (0-based):

    - ``step < warmup``:  ``base_lr * step / warmup``
    - otherwise:          ``min_lr + (base_lr - min_lr) * (1 + cos(pi * progress(step))) / 2``, where the cosine's
      progress runs linearly from 0 at ``warmup`` to 1 at ``total``.

    This is facebookresearch/mae ``util/lr_sched.adjust_learning_rate`` with the epoch fraction measured in
    optimizer steps. The schedule is a pure function of the step, so resuming needs only the step counter.

    :meth:`refit` moves the end of a run that has already started (``run.fit_to_minutes``): the progress reached so
    far is kept and the rest of the cosine is spread over the steps that remain, so the lr continues from its
    current value, keeps falling and reaches ``min_lr`` at the new end. The progress is then piecewise linear in the
    step, through the ``knots`` (step, progress) where the end moved; a refit during warm-up adds no knot.
    """

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
        self.base_lr, self.total_steps, self.warmup_steps, self.min_lr = base_lr, total_steps, warmup_steps, min_lr
        self.knots: list[tuple[int, float]] = []

    def progress(self, step: int) -> float:
        """Fraction of the cosine done before optimizer step ``step`` (0 during warm-up, 1 from the end on)."""
        points = [(self.warmup_steps, 0.0), *self.knots, (self.total_steps, 1.0)]
        if step < self.warmup_steps:
            return 0.0
        for (s0, p0), (s1, p1) in zip(points, points[1:]):
            if step < s1:
                return p0 + (p1 - p0) * (step - s0) / (s1 - s0)
        return 1.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))

    def refit(self, step: int, total_steps: int) -> None:
        """From optimizer step ``step`` on, end the cosine at ``total_steps`` (>= ``step``) instead."""
        if total_steps < max(step, 1):
            raise ValueError(f"total_steps must be >= the current step {step} and >= 1, got {total_steps}")
        if step > self.warmup_steps:
            self.knots.append((step, self.progress(step)))
        else:
            self.warmup_steps = min(self.warmup_steps, total_steps)
        self.total_steps = total_steps

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr (times its ``lr_scale`` if present) for ``step``; returns the lr."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict:
        return dict(
            base_lr=self.base_lr,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            min_lr=self.min_lr,
            knots=[list(k) for k in self.knots],
        )

    def load_state_dict(self, state: dict) -> None:
        self.base_lr, self.total_steps = state["base_lr"], state["total_steps"]
        self.warmup_steps, self.min_lr = state["warmup_steps"], state["min_lr"]
        self.knots = [(int(s), float(p)) for s, p in state.get("knots", [])]
