"""The white-box layers of CRATE-MAE, one paper equation per module.

Row convention throughout: a token is a row vector z (..., d), so the paper's column-space operator ``A z`` is
``z @ A.T`` (``F.linear(z, A)``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class MSSA(nn.Module):
    """Multi-head subspace self-attention, the compression step (a gradient step on R^c(Z | U_[K])).

        MSSA(Z) = U_out [SSA(U_1^T Z); ...; SSA(U_K^T Z)] + b_out,
        SSA(W)  = softmax(W W^T / sqrt(p)) W,          W = U_k^T Z  (query = key = value)

    ``qkv`` holds U^T = [U_1, ..., U_K]^T (d -> d, no bias); ``proj`` is U_out (d -> d, with bias).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim, bias=False)
        self.proj: nn.Module = nn.Linear(dim, dim)  # an Identity in supervised CRATE's one-head layers

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """U_k^T z for every head: (B, N, d) -> (B, K, N, p)."""
        B, N, _ = x.shape
        return self.qkv(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """softmax((U_k^T z)(U_k^T z)^T / sqrt(p)) for every head: (B, K, N, N)."""
        w = self.project(x)
        return torch.softmax((w @ w.transpose(-2, -1)) * self.scale, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, d = x.shape
        w = self.project(x)
        # q = k = v: the fused kernel never materialises the N x N attention matrix.
        out = F.scaled_dot_product_attention(w, w, w)
        return self.proj(out.transpose(1, 2).reshape(B, N, d))


class StepMatrix(torch.autograd.Function):
    """M = I + eta (D - D^T D), the matrix of one ISTA step in rows, with the gradient of D^T D as one product.

    For an upstream gradient G of M, autograd of ``D.t() @ D`` spends two d x d x d products (G D^T and D G); the
    gradient of <G, D^T D> is D (G + G^T), one product:  dL/dD = eta (G - D (G + G^T)).
    """

    @staticmethod
    def forward(dictionary: torch.Tensor, step_size: float) -> torch.Tensor:
        D = dictionary
        eye = torch.eye(D.shape[0], dtype=D.dtype, device=D.device)
        return torch.addmm(torch.add(eye, D, alpha=step_size), D.t(), D, alpha=-step_size)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        dictionary, ctx.step_size = inputs
        ctx.save_for_backward(dictionary)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (D,) = ctx.saved_tensors
        grad = grad.to(D.dtype)  # under autocast M (and so its gradient) is bf16; D's gradient has D's dtype
        return torch.addmm(grad, D, grad + grad.t(), beta=ctx.step_size, alpha=-ctx.step_size), None


def one_product_is_cheaper(tokens: int, dim: int, backward: bool) -> bool:
    """Whether ISTA's one-product form costs fewer multiply-adds than the three-product form, for ``tokens`` rows of
    width ``dim`` (all images of the batch together).

    One product: M costs d^3, x M costs T d^2; backward adds x's and M's gradients (2 T d^2) and D's (d^3, see
    :class:`StepMatrix`): 3 T d^2 + 2 d^3 against 9 T d^2 for three products, cheaper when d < 3 T. Without
    backward: T d^2 + d^3 against 3 T d^2, cheaper when d < 2 T (on an accelerator or under torch.compile; on the
    CPU a forward without autograd reuses a kept M, :meth:`ISTA.inference_step_matrix`). At 224 px (T = 197 per
    image) the one product wins from batch 1 for crate_mae_tiny (d = 384); crate_mae_base (d = 768) at batch 1 takes
    three products.
    """
    return dim < (3 if backward else 2) * tokens


class ISTA(nn.Module):
    """One non-negative ISTA step on the sparse-coding objective, the sparsification step.

        ISTA(X) = ReLU(X + eta * D^T (X - D X) - eta * lambda)        (column convention)

    warm-started at A = X with a complete d x d dictionary D. The step is linear in X before the threshold, so it
    can be computed as one product with the d x d matrix M = I + eta (D - D^T D) (column convention: X + eta D^T
    (X - D X) = M^T X): ``relu(x M - eta*lambda)`` for row tokens x. That is one N x d x d product per layer instead
    of the official three, plus a d x d x d product shared by all tokens (and one more in backward). When there are
    too few tokens to repay the d^3 (:func:`one_product_is_cheaper`: base size at batch 1), the official three
    products ``x + eta (x D - (x D^T) D)`` run instead. Both are identical in exact arithmetic (tests compare them
    with the official three products); in floating point they differ by rounding, so which one runs depends on the
    batch's token count. Without autograd on the CPU, M is kept between calls and rebuilt only when D or eta has
    changed (:meth:`inference_step_matrix`), so feature extraction over a data set pays the d^3 product once.
    """

    def __init__(self, dim: int, step_size: float = 0.1, lambd: float = 0.5):
        super().__init__()
        self.dictionary = nn.Parameter(torch.empty(dim, dim))
        # The official FeedForward calls init.kaiming_uniform_(weight) with the default a = 0: U(-sqrt(6/d), sqrt(6/d)),
        # 2.45x wider than nn.Linear's a = sqrt(5). Checked against the official model at init (tests/models).
        nn.init.kaiming_uniform_(self.dictionary)
        self.step_size = step_size
        self.lambd = lambd
        # (D and eta as M was built from them, M): see inference_step_matrix. Not state: never saved or loaded.
        self._inference_cache: tuple[torch.Tensor, float, torch.Tensor] | None = None

    def step_matrix(self) -> torch.Tensor:
        """M = I + eta (D - D^T D), so that ISTA(x) = relu(x M - eta lambda) in rows."""
        return StepMatrix.apply(self.dictionary, self.step_size)

    def inference_step_matrix(self) -> torch.Tensor:
        """M without autograd, built once and reused until D or eta changes: over many batches the d^3 product runs
        once. D is compared by value with the copy M was built from, not by its version counter, which fused AdamW
        and writes through ``.data`` leave unchanged. The same floats as :meth:`step_matrix`."""
        D, eta = self.dictionary.detach(), self.step_size
        cache = self._inference_cache
        if not (
            cache is not None
            and cache[1] == eta
            and (cache[0].shape, cache[0].dtype, cache[0].device) == (D.shape, D.dtype, D.device)
            and torch.equal(cache[0], D)
        ):
            with torch.autocast(D.device.type, enabled=False):  # M in D's dtype: autocast casts it where it is used
                cache = self._inference_cache = (D.clone(), eta, StepMatrix.forward(D, eta))
        return cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        D, eta = self.dictionary, self.step_size
        backward = torch.is_grad_enabled() and (D.requires_grad or x.requires_grad)
        if backward:
            self._inference_cache = None  # D is being trained: a kept M would only hold memory
        # The cache only on the CPU: on an accelerator the d^3 product takes microseconds, while torch.equal would
        # wait for the device at every layer. Not under torch.compile, which traces the computation instead.
        if not backward and x.device.type == "cpu" and not torch.compiler.is_compiling():
            y = torch.matmul(x, self.inference_step_matrix())
        elif one_product_is_cheaper(x.numel() // max(x.shape[-1], 1), D.shape[0], backward):
            y = torch.matmul(x, self.step_matrix())
        else:
            y = x + eta * (torch.matmul(x, D) - torch.matmul(torch.matmul(x, D.t()), D))
        return F.relu(y - eta * self.lambd)

    def extra_repr(self) -> str:
        return f"step_size={self.step_size}, lambd={self.lambd}"


class InverseISTA(nn.Module):
    """The decoder's linear step that partly inverts ISTA: Y' = W Y (square, bias-free)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.kaiming_uniform_(self.weight)  # a = 0, as the official decoder FeedForward (see ISTA)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def sincos_pos_embed(embed_dim: int, grid_size: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """The fixed 2-D sin-cos position table of MAE, (cls + h*w, d), row 0 (cls) all zeros.

    The first half of the channels encodes the column index, the second half the row index, each as
    [sin(pos * omega), cos(pos * omega)] with omega_i = 10000^(-i / (d/4)). Computed in float64 like the
    official numpy code, so a table for the training grid equals the stored official table bit for bit.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim={embed_dim} must be divisible by 4 for the 2-D sin-cos position table")
    h, w = grid_size
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")

    def one_dim(pos: np.ndarray) -> np.ndarray:
        omega = np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([one_dim(cols), one_dim(rows)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros([1, embed_dim]), table], axis=0)
    return torch.from_numpy(table).float()
