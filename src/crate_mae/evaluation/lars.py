"""LARS, exactly as facebookresearch/mae ``util/lars.py`` (used by its linear probe).

For every parameter w with gradient g (groups carry ``lr``, ``weight_decay``, ``momentum``, ``trust_coefficient``):

    if w.ndim > 1:                         # weight matrices; biases and norm parameters are not adapted
        d = g + weight_decay * w
        q = trust_coefficient * ||w|| / ||d||   (1 if ||w|| = 0 or ||d|| = 0)
        d = q * d
    else:
        d = g
    mu = momentum * mu + d
    w  = w - lr * mu

``timm.optim.Lars`` differs: it adapts only when weight decay is non-zero (or ``always_adapt``, which then also
adapts 1-D parameters) and divides by ``||g|| + wd * ||w||`` rather than ``||g + wd * w||``; with MAE's probe
(weight decay 0) it would be plain SGD with momentum. Hence this small class.
"""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(
                f"invalid LARS settings: lr={lr}, weight_decay={weight_decay}, momentum={momentum}, "
                f"trust_coefficient={trust_coefficient}"
            )
        super().__init__(
            params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(
                        param_norm > 0.0,
                        torch.where(update_norm > 0, g["trust_coefficient"] * param_norm / update_norm, one),
                        one,
                    )
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
        return loss
