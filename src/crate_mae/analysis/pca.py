"""PCA pictures of patch features: which patches a layer represents alike.

Features (``kind``):
  * ``"mssa"`` (default) -- the MSSA projection U^T LN(Z^l) of encoder layer l, all heads concatenated (d values per
    patch). In CRATE this single projection is query, key and value at once; the CRATE authors' PCA script uses the
    same tensor (their "key" facet) of the last layer.
  * ``"output"`` -- the layer output Z^{l+1} (the sparse ISTA code).
The cls token is excluded; features come from the unmasked image.

Two-stage recipe (as DINOv2 / CRATE ``vis_utils/pca_visualization.py``):
  1. Fit a 1-component PCA jointly on all patches of all images. Min-max normalise the component per image and keep
     patches above ``fg_threshold`` (default 0.5, the CRATE script's value) as foreground; holes are filled
     (``scipy.ndimage.binary_fill_holes``). A principal component has no sign, so the sign is chosen such that the
     foreground touches the image border less than the background does (objects are usually central); pass
     ``foreground=False`` to skip stage 1 and use every patch.
  2. Fit a 3-component PCA jointly on the foreground patches of all images (so colours mean the same thing across
     images); min-max normalise each component over those patches and show components 1-3 as R, G, B. Background
     patches are black.

``style="official"`` reproduces what the CRATE authors' ``pca_visualization.py`` draws instead: one 4-component PCA
fitted jointly on every patch of every image (no foreground stage unless the user supplies masks, which we do not),
each component min-max normalised *per image*, components 2-4 shown as RGB (component 1, which mostly separates
object from background, is shown on its own). Their foreground masks threshold a component whose sign they pick by
hand; we do not imitate that step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..models.crate_mae import CrateMAE
from ..models.tracing import LayerRecorder
from .attention import crop_to_patch_multiple, upsample_nearest
from .figures import clean_axis, pyplot, save_figure, to_hwc
from .inputs import Normalization, full_precision

FEATURE_KINDS = ("mssa", "output")
PCA_STYLES = ("two_stage", "official")


@torch.no_grad()
def patch_features(model: nn.Module, imgs: torch.Tensor, layer: int = -1, kind: str = "mssa") -> torch.Tensor:
    """(N, L, d) patch features of encoder layer ``layer`` (see module docstring), cls dropped, float32."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"kind must be one of {FEATURE_KINDS}, got {kind!r}")
    encoder = model.encoder if isinstance(model, CrateMAE) else model
    blocks = encoder.blocks
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"encoder layer {layer} out of range for {len(blocks)} layers")
    layer %= len(blocks)
    with full_precision(), LayerRecorder(model, parts=("encoder",)) as rec:
        encoder.forward_features(imgs)
        trace = rec.collect()[("encoder", layer)]
    feats = blocks[layer].attn.qkv(trace.mssa_in) if kind == "mssa" else trace.z_out
    return feats[:, 1:].float()


@dataclass
class PCAResult:
    rgb: np.ndarray  # (N, h, w, 3) in [0, 1], background black
    foreground: np.ndarray  # (N, h, w) bool
    first: np.ndarray  # (N, h, w) stage-1 component, min-max normalised per image (sign-corrected)
    explained_variance_ratio: np.ndarray  # stage-2, 3 values


def two_stage_pca(
    feats: torch.Tensor, grid: tuple[int, int], fg_threshold: float = 0.5, foreground: bool = True
) -> PCAResult:
    """The two-stage PCA of the module docstring on features (N, h*w, d)."""
    from scipy.ndimage import binary_fill_holes
    from sklearn.decomposition import PCA

    if not 0.0 <= fg_threshold < 1.0:
        raise ValueError(f"fg_threshold must be in [0, 1), got {fg_threshold}")
    N, L, d = feats.shape
    h, w = grid
    if h * w != L:
        raise ValueError(f"grid {grid} does not match {L} patches")
    x = feats.reshape(N * L, d).double().cpu().numpy()
    pc1 = PCA(n_components=1).fit_transform(x).reshape(N, h, w)
    lo, hi = pc1.min(axis=(1, 2), keepdims=True), pc1.max(axis=(1, 2), keepdims=True)
    first = (pc1 - lo) / np.maximum(hi - lo, 1e-12)
    border = np.zeros((h, w), bool)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    if h > 2 and w > 2 and first[:, border].mean() > first[:, ~border].mean():
        first = 1.0 - first  # the foreground is the side that touches the border less
    if foreground:
        fg = np.stack([binary_fill_holes(f > fg_threshold) for f in first])
        if fg.sum() < 3:  # degenerate (e.g. constant features): fall back to every patch
            fg = np.ones_like(fg)
    else:
        fg = np.ones((N, h, w), bool)
    sel = x[fg.reshape(-1)]
    n_comp = min(3, sel.shape[0], d)
    pca = PCA(n_components=n_comp).fit(sel)
    comps = pca.transform(sel)
    comps = (comps - comps.min(0)) / np.maximum(comps.max(0) - comps.min(0), 1e-12)
    rgb = np.zeros((N * L, 3))
    rgb[fg.reshape(-1), :n_comp] = comps
    ratio = np.zeros(3)
    ratio[:n_comp] = pca.explained_variance_ratio_
    return PCAResult(rgb.reshape(N, h, w, 3), fg, first, ratio)


def official_pca(feats: torch.Tensor, grid: tuple[int, int]) -> PCAResult:
    """The CRATE authors' display (``style="official"`` in the module docstring) on features (N, h*w, d): 4 components
    fitted on all patches, each min-max normalised per image; ``first`` is component 1, ``rgb`` components 2-4."""
    from sklearn.decomposition import PCA

    N, L, d = feats.shape
    h, w = grid
    if h * w != L:
        raise ValueError(f"grid {grid} does not match {L} patches")
    n_comp = min(4, N * L, d)
    pca = PCA(n_components=n_comp).fit(feats.reshape(N * L, d).double().cpu().numpy())
    comps = pca.transform(feats.reshape(N * L, d).double().cpu().numpy()).reshape(N, L, n_comp)
    lo, hi = comps.min(axis=1, keepdims=True), comps.max(axis=1, keepdims=True)
    comps = (comps - lo) / np.maximum(hi - lo, 1e-12)
    rgb = np.zeros((N, L, 3))
    rgb[..., : max(0, n_comp - 1)] = comps[..., 1:]
    ratio = np.zeros(3)
    ratio[: max(0, n_comp - 1)] = pca.explained_variance_ratio_[1:]
    return PCAResult(rgb.reshape(N, h, w, 3), np.ones((N, h, w), bool), comps[..., 0].reshape(N, h, w), ratio)


def plot_pca(
    model: nn.Module,
    imgs: torch.Tensor,
    norm: Normalization,
    layer: int = -1,
    kind: str = "mssa",
    fg_threshold: float = 0.5,
    foreground: bool = True,
    style: str = "two_stage",
):
    """One row per image: photo | stage-1 component | foreground mask | components 1-3 as RGB (``two_stage``), or
    photo | component 1 | all patches | components 2-4 as RGB (``official``)."""
    if style not in PCA_STYLES:
        raise ValueError(f"style must be one of {PCA_STYLES}, got {style!r}")
    plt = pyplot()
    imgs = crop_to_patch_multiple(imgs, model.patch_size)
    grid = model.grid_size(imgs)
    feats = patch_features(model, imgs, layer, kind)
    if style == "official":
        res, foreground = official_pca(feats, grid), False
    else:
        res = two_stage_pca(feats, grid, fg_threshold, foreground)
    p = model.patch_size
    up = lambda a: upsample_nearest(
        torch.from_numpy(np.ascontiguousarray(a)).float().unsqueeze(1)
        if a.ndim == 3
        else torch.from_numpy(a).float().permute(0, 3, 1, 2),
        p,
    )  # noqa: E731
    first = up(res.first)[:, 0].numpy()
    fgm = up(res.foreground.astype(np.float32))[:, 0].numpy()
    rgb = up(res.rgb).permute(0, 2, 3, 1).numpy()
    photos = to_hwc(norm.denormalize(imgs))
    n = imgs.shape[0]
    encoder = model.encoder if isinstance(model, CrateMAE) else model
    layer_no = layer % len(encoder.blocks) + 1
    what = "U^T LN(Z) (MSSA projection)" if kind == "mssa" else "layer output Z^{l+1}"
    cols = [
        "photo",
        "1st component (stage 1)",
        f"foreground (> {fg_threshold:g})" if foreground else "all patches",
        "PCA 1-3 as RGB (stage 2)",
    ]
    if style == "official":
        cols = ["photo", "component 1 (per-image min-max)", "all patches", "components 2-4 as RGB"]
    fig, axes = plt.subplots(n, 4, figsize=(8.5, 2.2 * n + 0.5), squeeze=False)
    for i in range(n):
        for j, (img, kw) in enumerate(
            ((photos[i], {}), (first[i], {"cmap": "viridis"}), (fgm[i], {"cmap": "gray"}), (rgb[i], {}))
        ):
            ax = axes[i][j]
            ax.imshow(img, interpolation="nearest", **kw)
            clean_axis(ax)
            if i == 0:
                ax.set_title(cols[j], fontsize=8)
    ev = ", ".join(f"{v:.2f}" for v in res.explained_variance_ratio)
    shown = "explained variance of the RGB components" if style == "official" else "stage-2 explained variance"
    fig.suptitle(f"PCA of encoder layer {layer_no} features {what}; {shown} {ev}", fontsize=8)
    fig.subplots_adjust(wspace=0.04, hspace=0.06)  # tight_layout is slow on image grids
    return fig


def save_pca(
    model: nn.Module,
    imgs: torch.Tensor,
    norm: Normalization,
    path: str | Path,
    layer: int = -1,
    kind: str = "mssa",
    fg_threshold: float = 0.5,
    foreground: bool = True,
    style: str = "two_stage",
) -> Path:
    return save_figure(plot_pca(model, imgs, norm, layer, kind, fg_threshold, foreground, style), path)
