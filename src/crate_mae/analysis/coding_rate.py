"""Coding rates and sparsity of token sets, the quantities CRATE's layers are derived to optimise.

Tokens are rows: a set of N tokens of dimension d is a tensor (..., N, d) (the paper's Z in R^{d x N}, transposed).

    R_eps(Z)          = 1/2 logdet(I_N + d / (N eps^2) Z^T Z)                      (coding rate)
    R^c_eps(Z | U_[K]) = sum_k R_eps(U_k^T Z) = 1/2 sum_k logdet(I_N + p / (N eps^2) (U_k^T Z)^T (U_k^T Z))
    sparsity          = #{Z_ij == 0} / (N d);     ||Z||_0 / (N d) = 1 - sparsity

By Sylvester's identity logdet(I_N + a Z^T Z) = logdet(I_d + a Z Z^T), so we factor whichever Gram matrix is
smaller (p x p per head in practice), in float64 with a batched Cholesky (I + PSD is positive definite).

Two conventions, named in every output:

* ``official`` -- the CRATE authors' ``vis_utils/coding_rate.py``: every token's vector (per head for R^c, whole
  token for R) is l2-normalised, and 0.01 stands where eps^2 stands in the formula. Numbers are comparable with
  their layer-wise figures.
* ``raw`` -- the formula above on the tensors as they are, with a configurable eps (``eps`` is eps, not eps^2).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

CONVENTIONS = ("official", "raw")
OFFICIAL_EPS_SQ = 0.01  # the official script's `eps`, used in place of eps^2


@dataclass(frozen=True)
class RateConvention:
    """How tokens are prepared and which eps^2 is used. ``RateConvention.make("official")`` or ``("raw", eps)``."""

    name: str = "official"
    eps: float = 0.1  # only used by "raw"

    @staticmethod
    def make(name: str = "official", eps: float = 0.1) -> RateConvention:
        if name not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {name!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        return RateConvention(name, float(eps))

    @property
    def eps_sq(self) -> float:
        return OFFICIAL_EPS_SQ if self.name == "official" else self.eps**2

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        """float64 copy of the tokens; l2-normalised along the last axis under ``official``."""
        z = z.detach().to(torch.float64)
        return F.normalize(z, dim=-1) if self.name == "official" else z

    def describe(self) -> str:
        if self.name == "official":
            return "official (tokens l2-normalised per head, 0.01 in place of eps^2)"
        return f"raw (unnormalised tokens, eps={self.eps:g})"


@contextlib.contextmanager
def serial_factorizations(device: torch.device) -> Iterator[None]:
    """One CPU thread for the small LAPACK factorizations inside (restored on exit).

    torch factorizes a batch of matrices one after the other, each with all of MKL's threads; for the matrices here
    (d or N at most a few hundred) the threads mostly wait at the barriers of the blocked algorithm, and a thread
    that another process has descheduled stalls the rest: 16 Cholesky factorizations of 197 x 197 took 185 ms with
    torch's 2 threads on a loaded 2-core machine and 15 ms with one (``benchmarks/feature_throughput.py``).
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def logdet_identity_plus_gram(z: torch.Tensor, scale: float) -> torch.Tensor:
    """logdet(I + scale * Z^T Z) for tokens-as-rows z (..., N, d), batched over leading axes.

    Uses the (N x N) Gram ``z z^T`` or the (d x d) Gram ``z^T z``, whichever is smaller (equal by Sylvester), in
    float64. Cholesky of I + PSD never fails in exact arithmetic; a numerical failure falls back to slogdet. The
    factorizations run on one CPU thread (:func:`serial_factorizations`).
    """
    z = z.to(torch.float64)
    n, d = z.shape[-2:]
    gram = z @ z.transpose(-2, -1) if n <= d else z.transpose(-2, -1) @ z
    m = gram.mul_(scale)  # I + scale * gram in place: the same floats as eye + scale * gram, without a broadcast add
    m.diagonal(dim1=-2, dim2=-1).add_(1.0)
    with serial_factorizations(m.device):
        chol, info = torch.linalg.cholesky_ex(m)
        out = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        if bool((info != 0).any()):
            out = torch.where(info == 0, out, torch.linalg.slogdet(m).logabsdet)
    return out


def coding_rate(z: torch.Tensor, convention: RateConvention | str = "official") -> torch.Tensor:
    """R(Z) = 1/2 logdet(I + d/(N eps^2) Z^T Z) of token sets z (..., N, d) -> (...)."""
    conv = RateConvention.make(convention) if isinstance(convention, str) else convention
    _check_tokens(z, "z")
    z = conv.prepare(z)
    n, d = z.shape[-2:]
    return 0.5 * logdet_identity_plus_gram(z, d / (n * conv.eps_sq))


def compression_rate(w: torch.Tensor, convention: RateConvention | str = "official") -> torch.Tensor:
    """R^c(Z | U_[K]) = sum_k R(U_k^T Z) from the per-head projections w = (U_k^T Z)_k of shape (..., K, N, p) -> (...).

    For a CRATE layer, ``w = block.attn.project(x)`` gives the projections onto that layer's own subspaces.
    """
    conv = RateConvention.make(convention) if isinstance(convention, str) else convention
    if w.ndim < 3:
        raise ValueError(f"expected per-head projections (..., K, N, p), got shape {tuple(w.shape)}")
    _check_tokens(w, "w")
    w = conv.prepare(w)
    n, p = w.shape[-2:]
    return 0.5 * logdet_identity_plus_gram(w, p / (n * conv.eps_sq)).sum(-1)


def sparsity(z: torch.Tensor) -> torch.Tensor:
    """Fraction of exact zeros over the last two axes (N, d): (..., N, d) -> (...). ||Z||_0/(N d) = 1 - this."""
    _check_tokens(z, "z")
    return (z == 0).sum(dim=(-2, -1)).to(torch.float64) / (z.shape[-2] * z.shape[-1])  # exact: counts < 2^53


def _check_tokens(z: torch.Tensor, name: str) -> None:
    if not isinstance(z, torch.Tensor) or z.ndim < 2:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"{name} must be a tensor of tokens (..., N, d), got {shape}")
    if z.shape[-1] == 0 or z.shape[-2] == 0:
        raise ValueError(f"{name} has no tokens or zero dimension: shape {tuple(z.shape)}")
    # A NaN or inf entry makes the float64 sum non-finite, and finite float32 / bf16 entries cannot overflow it: one
    # cheap reduction decides; only a non-finite sum (or a float64 input that overflows it) needs the full check.
    if not torch.isfinite(z.sum(dtype=torch.float64)) and not torch.isfinite(z).all():
        raise ValueError(f"{name} contains NaN or inf")
