"""Layer-wise compression and sparsity of a CRATE / CRATE-MAE model on a batch of images.

For every encoder layer l (and every decoder layer of a CRATE-MAE), per image:

    rc_mssa_in  R^c(LN(Z^l)     | U^l_[K])   compression of the MSSA input on the layer's own subspaces
    rc_z_half   R^c(Z^{l+1/2}   | U^l_[K])   the same for the half step (encoder: Z^l + MSSA(LN(Z^l));
                                             decoder: Y' = W LN(Y^l), the tensor its MSSA step compresses)
    rate_out    R(Z^{l+1})                   coding rate of the layer output
    sparsity    #zeros(Z^{l+1}) / (N d)      exact zeros of the layer output (encoder: the ISTA/ReLU output)
    l0          ||Z^{l+1}||_0 / (N d)        = 1 - sparsity (what the CRATE figures plot)

U^l_[K] are the heads of the layer's ``attn.qkv`` (U^T), so U_k^T z is ``attn.project(z)``. Rates use the named
:class:`~crate_mae.analysis.coding_rate.RateConvention`. Tokens: cls + all patches (N = 1 + L, as the official
script's n = 197); with ``mask_ratio > 0`` the masked positions hold the mask token, as the CRATE-MAE encoder sees
them. The decoder has no ReLU, so its sparsity is ~0 by construction; it is reported for completeness.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.tracing import LayerRecorder, crate_blocks
from .coding_rate import RateConvention, coding_rate, compression_rate, sparsity
from .figures import pyplot, save_figure
from .inputs import full_precision

METRICS = ("rc_mssa_in", "rc_z_half", "rate_out", "sparsity", "l0")
METRIC_LABELS = {
    "rc_mssa_in": "R^c(LN(Z^l) | U^l)",
    "rc_z_half": "R^c(Z^{l+1/2} | U^l)",
    "rate_out": "R(Z^{l+1})",
    "sparsity": "zeros(Z^{l+1})/(Nd)",
    "l0": "||Z^{l+1}||_0/(Nd)",
}


@dataclass
class LayerwiseStats:
    """Per-image measurements: ``values[(part, layer)][metric]`` is an array over images."""

    values: dict[tuple[str, int], dict[str, np.ndarray]]
    meta: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[tuple[str, int]]:
        order = {"encoder": 0, "decoder": 1}
        return sorted(self.values, key=lambda k: (order[k[0]], k[1]))

    def series(self, part: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) over images for each layer of ``part``, in layer order."""
        keys = [k for k in self.layers if k[0] == part]
        vals = [self.values[k][metric] for k in keys]
        return np.array([v.mean() for v in vals]), np.array([v.std() for v in vals])

    def rows(self) -> list[dict]:
        """One summary row per layer: part, layer (1-based, as in the papers' figures), mean/std of every metric."""
        out = []
        for part, i in self.layers:
            row = {"part": part, "layer": i + 1}
            for m in METRICS:
                v = self.values[(part, i)][m]
                row[f"{m}_mean"], row[f"{m}_std"] = float(v.mean()), float(v.std())
            out.append(row)
        return out

    def to_dict(self) -> dict:
        return {
            "meta": self.meta,
            "summary": self.rows(),
            "per_image": [
                {"part": p, "layer": i + 1, **{m: self.values[(p, i)][m].tolist() for m in METRICS}}
                for p, i in self.layers
            ],
        }

    def save(self, out_dir: str | Path, stem: str = "layerwise") -> dict[str, Path]:
        """Write ``stem.json`` (meta, summary, per-image values), ``stem.csv`` (summary) and ``stem.png``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2))
        rows = self.rows()
        with open(paths["csv"], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        save_figure(self.plot(), paths["png"], dpi=110)
        return paths

    def format_table(self) -> str:
        lines = [f"{'part':8s} {'layer':>5s} " + " ".join(f"{METRIC_LABELS[m]:>24s}" for m in METRICS)]
        for r in self.rows():
            cells = " ".join(f"{r[m + '_mean']:>14.4g} ± {r[m + '_std']:<7.2g}" for m in METRICS)
            lines.append(f"{r['part']:8s} {r['layer']:>5d} {cells}")
        return "\n".join(lines)

    def plot(self):
        """Three panels (R^c, R, ||Z||_0/(Nd)); x = layer, encoder then decoder on one axis, mean ± std over images."""
        fig, axes = pyplot().subplots(1, 3, figsize=(15, 4))
        parts = [p for p in ("encoder", "decoder") if any(k[0] == p for k in self.layers)]
        n_enc = sum(1 for k in self.layers if k[0] == "encoder")
        colors = {"encoder": "tab:blue", "decoder": "tab:orange"}
        panels = [
            (
                axes[0],
                [("rc_mssa_in", "-o", "MSSA input LN(Z)"), ("rc_z_half", "--s", "half step")],
                "compression R^c(Z | U_[K])",
            ),
            (axes[1], [("rate_out", "-o", "layer output")], "coding rate R(Z)"),
            (axes[2], [("l0", "-o", "layer output")], "||Z||_0 / (N d)  (1 - fraction of zeros)"),
        ]
        for ax, metrics, title in panels:
            for part in parts:
                offset = 0 if part == "encoder" else n_enc
                for metric, style, what in metrics:
                    mean, std = self.series(part, metric)
                    x = np.arange(1, len(mean) + 1) + offset
                    ax.errorbar(
                        x,
                        mean,
                        yerr=std,
                        fmt=style,
                        color=colors[part],
                        capsize=2,
                        ms=4,
                        label=f"{part}: {what}",
                        alpha=0.9 if style.startswith("-") else 0.6,
                    )
            if "decoder" in parts:
                ax.axvline(n_enc + 0.5, color="gray", ls=":", lw=1)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("layer (encoder 1..L, then decoder)" if "decoder" in parts else "encoder layer")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        m = self.meta
        fig.suptitle(
            f"{m.get('model', 'model')}: {m.get('num_images', '?')} images, mask ratio "
            f"{m.get('mask_ratio', 0)}, convention {m.get('convention_description', '')}",
            fontsize=10,
        )
        fig.tight_layout()
        return fig


@torch.no_grad()
def measure_layers(
    model: nn.Module,
    images: torch.Tensor | Iterable[torch.Tensor],
    mask_ratio: float = 0.0,
    convention: str = "official",
    eps: float = 0.1,
    batch_size: int = 16,
    seed: int = 0,
    parts: tuple[str, ...] = ("encoder", "decoder"),
) -> LayerwiseStats:
    """Measure every CRATE layer (see module docstring) on ``images``: a normalised (N, C, H, W) tensor or an
    iterable of such batches. Runs in eval mode on the model's device, TF32 off (:func:`.inputs.full_precision`);
    masks are drawn from a ``seed``-ed generator."""
    conv = RateConvention.make(convention, eps)
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    stacks = crate_blocks(model)
    is_mae = "decoder" in stacks
    if mask_ratio > 0 and not is_mae:
        raise ValueError("mask_ratio > 0 needs a CRATE-MAE model (an encoder-only classifier has no mask token)")
    device = next(model.parameters()).device
    batches = _batches(images, batch_size)
    gen = torch.Generator().manual_seed(seed)
    acc: dict[tuple[str, int], dict[str, list[np.ndarray]]] = {}
    was_training = model.training
    model.eval()
    n_images, tokens = 0, None
    try:
        with full_precision(), LayerRecorder(model, parts) as rec:
            for imgs in batches:
                imgs = imgs.to(device)
                if is_mae:
                    h, w = model.grid_size(imgs)
                    noise = torch.rand(imgs.shape[0], h * w, generator=gen).to(device)
                    model(imgs, mask_ratio=mask_ratio, noise=noise)
                else:
                    model(imgs)
                for key, tr in rec:
                    attn = stacks[key[0]][key[1]].attn
                    vals = {
                        "rc_mssa_in": compression_rate(_project(attn, tr.mssa_in), conv),
                        "rc_z_half": compression_rate(_project(attn, tr.z_half), conv),
                        "rate_out": coding_rate(tr.z_out, conv),
                        "sparsity": sparsity(tr.z_out),
                    }
                    vals["l0"] = 1.0 - vals["sparsity"]
                    for m, v in vals.items():
                        acc.setdefault(key, {}).setdefault(m, []).append(v.cpu().numpy())
                tokens = tr.z_out.shape[1]
                n_images += imgs.shape[0]
                rec.clear()
    finally:
        model.train(was_training)
    if n_images == 0:
        raise ValueError("no images to measure")
    values = {k: {m: np.concatenate(v) for m, v in d.items()} for k, d in acc.items()}
    meta = dict(
        model=model.model_name or type(model).__name__,
        convention=conv.name,
        eps=conv.eps if conv.name == "raw" else None,
        eps_sq=conv.eps_sq,
        convention_description=conv.describe(),
        mask_ratio=mask_ratio,
        num_images=n_images,
        tokens_per_image=tokens,
        seed=seed,
        metrics=METRIC_LABELS,
    )
    return LayerwiseStats(values, meta)


def _project(attn: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """U_k^T z for every head in float64: (B, N, d) -> (B, K, N, p)."""
    B, N, _ = z.shape
    w = F.linear(z.double(), attn.qkv.weight.double())
    return w.view(B, N, attn.num_heads, attn.head_dim).transpose(1, 2)


def _batches(images, batch_size: int):
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
        return images.split(max(1, batch_size))
    return (b[0] if isinstance(b, (list, tuple)) else b for b in images)
