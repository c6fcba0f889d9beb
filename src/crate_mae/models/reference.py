"""The literal paper arithmetic, written out plainly.

This is the readable specification of the two CRATE operators, computed exactly as the official code does
(explicit attention matrix, three-matmul ISTA). The fast modules in ``layers.py`` must agree with it to float
tolerance; ``model.set_impl("reference")`` routes a whole model through here (tests and
``benchmarks/model_speed.py`` use that).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mssa(x: torch.Tensor, u_t: torch.Tensor, u_out: torch.Tensor, b_out: torch.Tensor | None, num_heads: int) -> torch.Tensor:
    """MSSA(Z) = U_out [softmax(W_k W_k^T / sqrt(p)) W_k]_k + b_out with W_k = U_k^T Z, tokens as rows."""
    B, N, d = x.shape
    p = d // num_heads
    w = (x @ u_t.T).reshape(B, N, num_heads, p).permute(0, 2, 1, 3)  # (B, K, N, p)
    dots = (w @ w.transpose(-1, -2)) * p**-0.5
    attn = torch.softmax(dots, dim=-1)
    heads = attn @ w
    out = heads.permute(0, 2, 1, 3).reshape(B, N, d)
    return F.linear(out, u_out, b_out)


def ista(x: torch.Tensor, dictionary: torch.Tensor, step_size: float, lambd: float) -> torch.Tensor:
    """ReLU(x + eta * (D^T x - D^T D x) - eta * lambda), the official three products."""
    dx = F.linear(x, dictionary)  # D x
    dt_dx = F.linear(dx, dictionary.t())  # D^T D x
    dt_x = F.linear(x, dictionary.t())  # D^T x
    return F.relu(x + step_size * (dt_x - dt_dx) - step_size * lambd)
