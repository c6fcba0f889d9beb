"""The paper's other two tables: reconstruction loss on a val set (its Table 1) and a mask-ratio sweep (its Table 4).

Every image gets fixed masking noise, drawn once for the whole split from ``mask_seed`` (row i of an (N, L) draw is
image i's), so two checkpoints, or two runs, are scored on the same masks whatever the batch size. The loss is the
mean squared error over masked patches, in two units:

- ``pixel``: against the patches of the model's input, i.e. normalised pixels ``(x - mean) / std`` (the training
  loss of a model trained without ``norm_pix_loss``);
- ``normpix``: against each patch standardised by its own mean and variance (MAE's ``norm_pix_loss`` target).

A model predicts in one of the two; its prediction is carried into the other with the *target* patch's mean and
variance (MAE's convention for showing norm-pix reconstructions), so both numbers exist for every model. Table 4
of the paper varies the *pretraining* mask ratio; :func:`mask_ratio_sweep` varies the ratio a checkpoint is scored
at (run it on each checkpoint of a pretraining sweep to rebuild the table), and with ``probe`` fits the paper's
linear probe on the cls token of the encoder's output for the masked view.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..data import build_dataset
from ..io import load_model
from ..models.masking import normalize_patches
from ..utils import amp_dtype, default_device, state_sha256
from ..utils.progress import Progress
from .features import EachSampleOnce, check_same_classes, collate_each_once, eval_view
from .linear import DEFAULT_CS, logistic_probe
from .results import make_result

SWEEP_RATIOS = (0.25, 0.4, 0.5, 0.6, 0.75, 0.9)
UNITS = ("pixel", "normpix")


def fixed_noise(num_images: int, num_patches: int, seed: int = 0) -> torch.Tensor:
    """The (N, L) masking noise of a split: image i keeps its patches of lowest noise, whatever the batching."""
    return torch.rand(num_images, num_patches, generator=torch.Generator().manual_seed(seed))


def masked_errors(
    model: nn.Module, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-image sums of the per-patch MSE over masked patches, in ``pixel`` and ``normpix`` units (see module)."""
    target = model.patchify(imgs).float()
    pred = pred.float()
    mean, scale = target.mean(dim=-1, keepdim=True), (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
    if model.norm_pix_loss:
        pix, norm = pred * scale + mean, pred
    else:
        pix, norm = pred, (pred - mean) / scale
    m = mask.float()
    return {
        "pixel": ((pix - target).pow(2).mean(-1) * m).sum(1),
        "normpix": ((norm - normalize_patches(target)).pow(2).mean(-1) * m).sum(1),
    }


@torch.no_grad()
def _score(
    model: nn.Module,
    dataset: Dataset,
    ratio: float,
    noise: torch.Tensor,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    dtype,
    want_loss: bool,
    want_cls: bool,
    desc: str,
    progress: bool,
) -> dict[str, Any]:
    """One pass at ``ratio``: summed masked errors and/or the cls token of the masked view, plus labels."""
    loader = DataLoader(
        EachSampleOnce([dataset]),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_each_once,
    )
    sums = {u: 0.0 for u in UNITS}
    patches, cls, labels, skipped = 0, [], [], []
    bar = Progress(len(dataset), desc, "img", enabled=progress)
    try:
        for imgs, y, idx, bad in loader:
            skipped += bad
            if imgs is None:
                continue
            imgs = imgs.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = model(imgs, mask_ratio=ratio, noise=noise[idx].to(device))
            if want_loss:
                for u, v in masked_errors(model, imgs, out.pred, out.mask).items():
                    sums[u] += float(v.sum())
                patches += int(out.mask.sum())
            if want_cls:
                cls.append(out.latent[:, 0].float().cpu())
                labels.append(y)
            bar.update(imgs.shape[0])
    finally:
        bar.close()
    if patches == 0 and want_loss:
        raise ValueError(f"no readable image in {len(dataset)} (or no patch masked at ratio {ratio})")
    res: dict[str, Any] = {"skipped_files": skipped}
    if want_loss:
        res.update({u: sums[u] / patches for u in UNITS}, num_images=len(dataset) - len(skipped))
    if want_cls:
        res.update(cls=torch.cat(cls), labels=torch.cat(labels))
    return res


def _setup(source, seed, overrides, device, img_size, crop_pct, fingerprint):
    if isinstance(source, nn.Module):
        model, sha, name = source.eval(), fingerprint or state_sha256(source), fingerprint or "<module>"
    else:
        model, sha = load_model(source, seed=seed, **(overrides or {}))
        name = str(source)
    if not model.has_decoder:
        raise ValueError(
            f"{name} is an encoder without a decoder ({model.config.architecture}); the "
            "reconstruction loss needs a masked autoencoder checkpoint"
        )
    device = torch.device(device) if device is not None else default_device()
    model = model.to(device).eval()
    transform, view = eval_view(model, img_size, crop_pct)
    return model, sha, name, device, transform, view


def _split(data, split, transform, kind, limit):
    ds = build_dataset(data, split=split, transform=transform, kind=kind)
    if limit is not None and limit < len(ds):
        ds = Subset(ds, torch.linspace(0, len(ds) - 1, limit).round().long().tolist())
    return ds


def _check_ratios(ratios: Sequence[float]) -> list[float]:
    ratios = [float(r) for r in ratios]
    if not ratios or any(not 0 < r < 1 for r in ratios):
        raise ValueError(f"mask ratios must be in (0, 1), got {ratios}")
    return ratios


def mask_ratio_sweep(
    source: str | os.PathLike | nn.Module,
    data: str | os.PathLike,
    split: str = "val",
    *,
    ratios: Sequence[float] = SWEEP_RATIOS,
    mask_seed: int = 0,
    probe: bool = False,
    train_split: str = "train",
    Cs: Sequence[float] = DEFAULT_CS,
    holdout: float = 0.1,
    max_iter: int = 1000,
    kind: str = "auto",
    seed: int = 0,
    overrides: dict | None = None,
    fingerprint: str | None = None,
    img_size: int | None = None,
    crop_pct: float | None = None,
    batch_size: int = 128,
    num_workers: int = 2,
    device=None,
    limit: int | None = None,
    progress: bool = True,
    task: str = "mask_sweep",
) -> dict[str, Any]:
    """Masked reconstruction loss of ``split`` at each mask ratio (fixed masks), in pixel and norm-pix units; with
    ``probe``, also the paper's logistic probe (C chosen on held-out ``train_split``) on the cls token of the
    masked view, fit on ``train_split`` and scored on ``split``, each image masked with fixed noise.

    Returns a ``crate_mae.result/1`` dict: metrics ``loss_pixel@R``, ``loss_normpix@R`` (and ``top1@R``,
    ``top5@R``) for each ratio R; ``details["rows"]`` holds one row per ratio."""
    ratios = _check_ratios(ratios)
    model, sha, name, device, transform, view = _setup(source, seed, overrides, device, img_size, crop_pct, fingerprint)
    dtype = amp_dtype("auto", device)
    val = _split(data, split, transform, kind, limit)
    train = _split(data, train_split, transform, kind, limit) if probe else None
    if train is not None:
        check_same_classes(_classes(train), _classes(val), f"train split ({train_split})", f"split {split}")
    size = view["img_size"]
    h, w = model.grid_size(torch.zeros(1, model.config.in_chans, size, size))
    noise = {"val": fixed_noise(len(val), h * w, mask_seed)}
    if train is not None:
        noise["train"] = fixed_noise(len(train), h * w, mask_seed + 1)  # a stream of its own, unlike val's
    common = dict(batch_size=batch_size, num_workers=num_workers, device=device, dtype=dtype, progress=progress)
    rows, metrics, skipped = [], {}, []
    t0 = time.perf_counter()
    for r in ratios:
        v = _score(model, val, r, noise["val"], want_loss=True, want_cls=probe, desc=f"mask {r:g}: {split}", **common)
        skipped = v["skipped_files"]
        row: dict[str, Any] = {
            "mask_ratio": r,
            "loss_pixel": v["pixel"],
            "loss_normpix": v["normpix"],
            "num_images": v["num_images"],
        }
        if probe:
            t = _score(
                model,
                train,
                r,
                noise["train"],
                want_loss=False,
                want_cls=True,
                desc=f"mask {r:g}: {train_split}",
                **common,
            )
            p = logistic_probe(
                t["cls"], t["labels"], v["cls"], v["labels"], Cs=Cs, holdout=holdout, max_iter=max_iter, seed=seed
            )
            row.update(top1=p["top1"], top5=p["top5"], C=p["C"], num_train=len(t["labels"]))
        rows.append(row)
        for k in ("loss_pixel", "loss_normpix", "top1", "top5"):
            if k in row:
                metrics[f"{k}@{r:g}"] = row[k]
    config = {
        "mask_ratios": ratios,
        "mask_seed": mask_seed,
        "split": split,
        "probe": probe,
        "train_split": train_split if probe else None,
        "transform": view,
        "seed": seed,
        "norm_pix_loss_model": bool(model.norm_pix_loss),
        "precision": {"device": device.type, "dtype": str(dtype or torch.float32).replace("torch.", "")},
    }
    if probe:
        config.update(Cs=[float(c) for c in Cs], holdout=holdout, max_iter=max_iter)
    dataset = {"path": str(data), "val": split, "num_val": rows[0]["num_images"], "skipped_files": skipped}
    return make_result(
        task,
        metrics,
        checkpoint=name,
        checkpoint_sha256=sha,
        dataset=dataset,
        config=config,
        details={"rows": rows, "seconds": time.perf_counter() - t0},
    )


def reconstruction_loss(
    source: str | os.PathLike | nn.Module,
    data: str | os.PathLike,
    split: str = "val",
    *,
    mask_ratio: float = 0.75,
    **kwargs,
) -> dict[str, Any]:
    """Masked reconstruction loss of ``split`` at ``mask_ratio`` with fixed masks (the paper's Table 1 entry), as
    a result with metrics ``loss_pixel`` and ``loss_normpix``. Keywords as :func:`mask_ratio_sweep` (no probe)."""
    if kwargs.get("probe"):
        raise ValueError("reconstruction_loss has no probe; use mask_ratio_sweep(..., probe=True)")
    res = mask_ratio_sweep(source, data, split, ratios=[mask_ratio], task="recon", **kwargs)
    row = res["details"]["rows"][0]
    res["metrics"] = {"loss_pixel": row["loss_pixel"], "loss_normpix": row["loss_normpix"]}
    return res


def _classes(ds) -> list[str]:
    while isinstance(ds, Subset):
        ds = ds.dataset
    return list(ds.classes)


def sweep_markdown(result: dict[str, Any]) -> str:
    """The sweep as a Markdown table, one row per mask ratio."""
    rows = result["details"]["rows"]
    probe = "top1" in rows[0]
    head = "| mask ratio | masked loss (pixel) | masked loss (norm-pix) |" + (
        " probe top-1 | probe top-5 |" if probe else ""
    )
    lines = [head, "|---:|---:|---:|" + ("---:|---:|" if probe else "")]
    for r in rows:
        lines.append(
            f"| {r['mask_ratio']:.2f} | {r['loss_pixel']:.4f} | {r['loss_normpix']:.4f} |"
            + (f" {r['top1']:.2f} | {r['top5']:.2f} |" if probe else "")
        )
    return "\n".join(lines)
