"""Small matplotlib helpers shared by the picture modules (headless backend, tensors -> HWC arrays, saving)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (works without a display)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def to_hwc(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) pixels in [0, 1] -> (N, H, W, C) float numpy for imshow."""
    return x.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()


def clean_axis(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save ``fig`` as PNG (creating folders) and close it."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
