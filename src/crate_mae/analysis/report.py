"""One self-contained HTML page about a checkpoint: model card, layer-wise curves, reconstructions (for a classifier:
its top-5 predictions), attention heads and PCA, every figure embedded as a base64 PNG (the page is a single file
that can be mailed or archived).

``write_report(model_or_ckpt, out_dir)`` is what ``crate-mae report`` and the end of ``crate-mae demo`` call. It
works on a randomly initialised model too (the page then says so), so it doubles as a smoke test of every picture.
Besides ``index.html`` the folder gets ``layerwise.json`` / ``.csv`` / ``.png`` with the numbers behind the curves.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from .._version import __version__
from ..data import resolve_data_config
from ..io import load_model
from ..utils import atomic_write, default_device
from .attention import plot_attention
from .figures import pyplot
from .inputs import demo_images, find_images, load_images, model_normalization
from .layerwise import METRIC_LABELS, METRICS, measure_layers
from .pca import plot_pca
from .predictions import class_names, is_classifier, plot_predictions, top_predictions
from .reconstruction import plot_reconstructions, reconstruction_panels

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.k{text-align:left}img{max-width:100%;border:1px solid #eee}
.warn{background:#fff4e0;border-left:4px solid #f0a000;padding:.5em 1em}.note{color:#555;font-size:.9em}
figure{margin:1em 0}figcaption{font-size:.85em;color:#444}"""


def _png(fig) -> str:
    """Render a matplotlib figure to a data: URI and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(uri: str, alt: str, caption: str) -> str:
    return f'<figure><img src="{uri}" alt="{html.escape(alt)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _table(rows: Sequence[Sequence], header: Sequence[str] | None = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for r in rows:
        out.append(
            "<tr>"
            + "".join(f'<td class="{"k" if j == 0 else ""}">{html.escape(str(c))}</td>' for j, c in enumerate(r))
            + "</tr>"
        )
    return "".join(out) + "</table>"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


@torch.no_grad()
def write_report(
    model_or_ckpt: nn.Module | str | Path,
    out_dir: str | Path,
    images: str | Path | Sequence[str | Path] | torch.Tensor | None = None,
    num_images: int = 4,
    mask_ratio: float = 0.75,
    seed: int = 0,
    convention: str = "official",
    eps: float = 0.1,
    attention_layer: int = -1,
    attention_threshold: float = 0.6,
    pca_layer: int = -1,
    device: torch.device | str | None = None,
    strict: bool = False,
) -> Path:
    """Write ``out_dir/index.html`` (plus the layer-wise tables) and return its path.

    model_or_ckpt: a model, a checkpoint path (any format ``crate_mae.load_checkpoint`` reads) or a preset name
    (randomly initialised). images: a folder / files of photos, a normalised (N, 3, H, W) tensor, or None for the
    library's embedded photos. Photos are resized (shorter side) and centre-cropped to the model's image size and
    normalised with the checkpoint's saved statistics (ImageNet's when none were saved); an unreadable photo is
    skipped with a warning naming it (``strict``: refused).
    """
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model_or_ckpt, nn.Module):  # the caller's model stays where it is unless a device is asked for
        model = (model_or_ckpt.to(device) if device is not None else model_or_ckpt).eval()
    else:
        model = load_model(model_or_ckpt, device=device or default_device())[0]
    source = str(model.provenance.get("checkpoint", "in-memory model"))
    device = next(model.parameters()).device
    norm = model_normalization(model)
    size = resolve_data_config(model)["img_size"]
    labels: list[str] | None = None  # what each image row is called (its file, when there is one)
    if images is None:
        imgs, img_source = demo_images(size, num_images, norm), "centre crops of the embedded scikit-image photos"
    elif isinstance(images, torch.Tensor):
        imgs, img_source = images[:num_images], "an in-memory batch"
    else:
        files = find_images(images, num_images)
        imgs, img_source = load_images(files, size, norm, strict=strict), ", ".join(f.name for f in files)
        if len(files) == imgs.shape[0]:  # none skipped: rows can name their file (and its class folder)
            labels = [f"{f.parent.name}/{f.name}" for f in files]
    imgs = imgs.to(device)
    labels = labels or [f"image {i + 1}" for i in range(imgs.shape[0])]
    cfg = {**model.config.to_dict(), **({"model": model.model_name} if model.model_name is not None else {})}
    name = model.model_name or model.config.architecture

    body = [
        f"<h1>crate-mae report: {html.escape(str(name))}</h1>",
        f'<p class="note">checkpoint: {html.escape(source)} &middot; images: {html.escape(img_source)} '
        f"({imgs.shape[0]} at {imgs.shape[-2]}x{imgs.shape[-1]}) &middot; crate-mae {__version__} &middot; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
    ]
    if model.provenance.get("random_init"):
        body.append(
            '<p class="warn">This model is <b>randomly initialised</b> (no checkpoint was loaded): the '
            "pictures show what an untrained network does, useful as a baseline, not as a result.</p>"
        )

    # -- model card
    counts = []
    for conv in ("trainable", "official"):
        try:
            counts.append((f"parameters ({conv})", f"{model.num_params(conv):,}"))
        except ValueError:  # no official count for this architecture
            pass
    card = counts + [("normalisation mean / std", f"{list(norm.mean)} / {list(norm.std)}")]
    card += [(k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in sorted(cfg.items())]
    body += [
        "<h2>Model card</h2>",
        _table(card, ["field", "value"]),
        '<p class="note">"official" parameter count follows the Ma-Lab-Berkeley/CRATE code, which also counts '
        "its frozen sin-cos tables and an unused decoder_embed layer.</p>",
    ]

    # -- layer-wise measurements
    body.append("<h2>Layer-wise compression and sparsity</h2>")
    if not model.white_box:
        body.append(
            f'<p class="note">{type(model).__name__} is not a white-box (CRATE) model: its layers have no '
            "coding-rate or ISTA sparsity to measure.</p>"
        )
    else:
        stats = measure_layers(model, imgs, mask_ratio=0.0, convention=convention, eps=eps, seed=seed)
        curves = stats.save(out, "layerwise")["png"]  # drawn once: embedded below and kept beside the page
        uri = "data:image/png;base64," + base64.b64encode(curves.read_bytes()).decode("ascii")
        body.append(
            _figure(
                uri,
                "layer-wise curves",
                f"Unmasked images, convention {stats.meta['convention_description']}; mean ± std over "
                f"{stats.meta['num_images']} images, {stats.meta['tokens_per_image']} tokens each "
                "(cls + patches). Tables: layerwise.json / .csv / .png beside this page.",
            )
        )
        header = ["part", "layer"] + [METRIC_LABELS[m] for m in METRICS]
        rows = [
            [r["part"], r["layer"]] + [f"{_fmt(r[m + '_mean'])} ± {_fmt(r[m + '_std'])}" for m in METRICS]
            for r in stats.rows()
        ]
        body.append(_table(rows, header))
        body.append(
            '<p class="note">The paper\'s claim: through the encoder R^c falls (tokens are compressed '
            "against each layer's subspaces) and ||Z||_0/(Nd) falls (codes become sparser). The decoder has "
            "no ReLU, so its outputs are dense by construction.</p>"
        )

    # -- reconstructions, or what a classifier predicts
    if is_classifier(model):
        body.append("<h2>Predictions</h2>")
        names, names_from = class_names(model)
        body.append(
            _figure(
                _png(plot_predictions(model, imgs, norm, k=5, labels=labels)),
                "top-5 predictions",
                f"Top-5 classes of each image with their softmax probabilities; class names: {names_from}.",
            )
        )
        probs, idx = top_predictions(model, imgs, k=5)
        rows = [
            [labels[i]] + [f"{names[j]} ({p:.1%})" for p, j in zip(probs[i].tolist(), idx[i].tolist())]
            for i in range(imgs.shape[0])
        ]
        body.append(_table(rows, ["image"] + [f"#{r + 1}" for r in range(probs.shape[1])]))
    elif model.has_decoder:
        body.append("<h2>Masked completion</h2>")
        mse = reconstruction_panels(model, imgs, norm, mask_ratio, seed)["loss"].item()
        body.append(
            _figure(
                _png(plot_reconstructions(model, imgs, norm, mask_ratio, seed)),
                "reconstructions",
                f"{mask_ratio:.0%} of patches masked (mask seed {seed}). Columns: masked input, "
                "prediction of every patch, prediction with the visible patches pasted back, original. "
                f"Masked-patch MSE {mse:.4f}: over the masked patches of these {imgs.shape[0]} images "
                f"({img_source}) in normalised pixels. It depends on the images (detailed photos score "
                "higher), so compare it only between models on the same images.",
            )
        )
    else:
        body.append("<h2>Masked completion</h2>")
        body.append(
            '<p class="note">encoder-only model without classes: no decoder, no reconstructions, no predictions.</p>'
        )

    # -- attention
    body.append("<h2>Attention heads</h2>")
    body.append(
        _figure(
            _png(plot_attention(model, imgs, norm, attention_layer, attention_threshold)),
            "attention",
            "cls-token attention of each head over the patches (upper rows, nearest-upsampled; last "
            f"column their mean), the smallest patch set holding {attention_threshold:.0%} of it (lower "
            "rows, DINO's recipe) and the union of those sets over heads (last column: the emergent "
            "segmentation).",
        )
    )

    # -- PCA
    body.append("<h2>PCA of patch features</h2>")
    if model.white_box:
        body.append(
            _figure(
                _png(plot_pca(model, imgs, norm, pca_layer)),
                "pca",
                "Two-stage PCA of U^T LN(Z) (the MSSA projection) fitted jointly over the images: the "
                "first component thresholded at 0.5 gives the foreground; a second PCA on foreground "
                "patches maps components 1-3 to RGB.",
            )
        )
    else:
        body.append('<p class="note">PCA pictures use CRATE\'s MSSA projection; not available for this model.</p>')

    body.append(f'<p class="note">generated in {time.time() - t0:.1f}s by crate_mae.analysis.report.write_report</p>')
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>crate-mae report: '
        f"{html.escape(str(name))}</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )
    path = out / "index.html"
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return path
