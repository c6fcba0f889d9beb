"""Frozen-encoder features, computed once and cached in a safetensors file.

For every image of a labelled split the encoder runs on the *unmasked* image (``model.forward_features``: encoder +
final norm, no masking, no dropout) and two pooled vectors are kept:

    cls  = Z[:, 0]                 the class token (the paper's linear-probe feature)
    mean = mean_i Z[:, 1 + i]      the mean of the patch tokens

optionally also for intermediate encoder layers (the block outputs Z^{l+1}, before the final norm). The file
stores labels, class names and provenance (checkpoint sha256, dataset, split, transform) so that probes can refuse
to mix features of different checkpoints or label sets.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Subset

from .._version import __version__
from ..data import ImageFiles, build_dataset, eval_transform, resolve_data_config
from ..engine.distributed import DistInfo, agree
from ..io import load_model
from ..models.base import Capabilities, layer_index
from ..utils import amp_dtype, atomic_write, default_device, state_sha256
from ..utils.progress import Progress

POOLS = ("cls", "mean")


@dataclass
class FeatureSet:
    """Pooled features of one labelled split.

    cls, mean: (N, D) float32; labels: (N,) int64; classes: class names, ``labels`` index into them;
    layers: encoder layer index -> {"cls": (N, D), "mean": (N, D)}; meta: provenance (JSON-serialisable).
    """

    cls: torch.Tensor
    mean: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    layers: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def get(self, pool: str = "cls", layer: int | None = None) -> torch.Tensor:
        """The (N, D) features of ``pool`` ('cls' | 'mean') at the final output (``layer=None``) or a stored layer."""
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if layer is None:
            return getattr(self, pool)
        if layer not in self.layers:
            raise ValueError(
                f"layer {layer} is not in this feature file (stored layers: {sorted(self.layers)}); "
                "re-extract with --layers"
            )
        return self.layers[layer][pool]

    @property
    def checkpoint_sha256(self) -> str | None:
        return self.meta.get("checkpoint_sha256")

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically as safetensors; class names and provenance go into the header metadata."""
        tensors = {"cls": self.cls, "mean": self.mean, "labels": self.labels}
        for layer, pools in self.layers.items():
            for pool, t in pools.items():
                tensors[f"layer{layer}.{pool}"] = t
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        metadata = {
            "classes": json.dumps(self.classes),
            "meta": json.dumps(self.meta, default=str),
            "format": "crate_mae.features/1",
        }
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSet:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature file not found: {path}")
        try:
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(str(path))
        except Exception as e:
            raise ValueError(f"cannot read {path} as a safetensors feature file: {e}") from None
        if metadata.get("format") != "crate_mae.features/1" or not {"cls", "mean", "labels"} <= set(tensors):
            raise ValueError(
                f"{path} is not a feature file written by `crate-mae features` "
                f"(keys {sorted(tensors)[:6]}, format {metadata.get('format')!r})"
            )
        layers: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("layer"):
                name, pool = k.split(".")
                layers.setdefault(int(name[len("layer") :]), {})[pool] = v
        meta = json.loads(metadata.get("meta", "{}"))
        meta.setdefault("path", str(path))
        return cls(
            cls=tensors["cls"],
            mean=tensors["mean"],
            labels=tensors["labels"],
            classes=json.loads(metadata["classes"]),
            layers=dict(sorted(layers.items())),
            meta=meta,
        )


def read_feature_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance of a feature file, read from its header without loading the tensors."""
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("meta", "{}"))
    except Exception as e:
        raise ValueError(f"cannot read {path} as a safetensors feature file: {e}") from None


def encoder_blocks(model: nn.Module) -> nn.Module:
    """The encoder's transformer blocks of any supported model (CrateMAE, CrateEncoder, ViTMAE, timm ViT)."""
    # a foreign nn.Module (outside the contract of models/base.py) may still keep them where timm's ViT does
    blocks = model.encoder_blocks() if isinstance(model, Capabilities) else getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise ValueError(f"{type(model).__name__} has no encoder blocks; cannot read intermediate layers")
    return blocks


@torch.no_grad()
def extract_features(
    model: nn.Module,
    batches: Iterable,
    layers: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    total: int | None = None,
    desc: str = "features",
) -> dict[str, Any]:
    """Run ``model.forward_features`` over ``(images, labels)`` batches; return pooled features.

    Returns ``{"cls": (N, D), "mean": (N, D), "labels": (N,), "layers": {l: {"cls", "mean"}}}`` (float32, CPU).
    Intermediate layers (negative indices count from the end) are read with forward hooks on the encoder blocks,
    so the output of block ``l`` is ``Z^{l+1}`` before the final norm. The model is put in eval mode.
    """
    device = torch.device(device) if device is not None else default_device()
    model = model.to(device).eval()
    blocks = encoder_blocks(model) if layers else None
    wanted = sorted({layer_index(i, len(blocks)) for i in layers}) if layers else []
    captured: dict[int, torch.Tensor] = {}
    hooks = [blocks[i].register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out)) for i in wanted]
    out: dict[str, list] = {"cls": [], "mean": [], "labels": []}
    per_layer: dict[int, dict[str, list]] = {i: {"cls": [], "mean": []} for i in wanted}
    bar = Progress(total, desc, "img", enabled=progress)
    try:
        for imgs, labels in batches:
            imgs = imgs.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                z = model.forward_features(imgs)
            _pool_into(out, z)
            out["labels"].append(torch.as_tensor(labels).long().cpu())
            for i in wanted:
                _pool_into(per_layer[i], captured[i])
            bar.update(imgs.shape[0])
    finally:
        for h in hooks:
            h.remove()
        bar.close()
    if not out["labels"]:
        raise ValueError("no images: the dataset is empty")
    return {
        "cls": torch.cat(out["cls"]),
        "mean": torch.cat(out["mean"]),
        "labels": torch.cat(out["labels"]),
        "layers": {i: {k: torch.cat(v) for k, v in d.items()} for i, d in per_layer.items()},
    }


def _pool_into(store: dict[str, list], z: torch.Tensor) -> None:
    z = z.float()
    store["cls"].append(z[:, 0].cpu())
    store["mean"].append(z[:, 1:].mean(dim=1).cpu())


# -- a dataset -> features, each sample once, sharded over torchrun ranks --------------------------------------------
class EachSampleOnce(Dataset):
    """The samples of ``parts`` (datasets, one after another) as ``(image or None, label, index, name)``: an image
    file that cannot be read gives None (it is skipped and counted by its :class:`ImageFiles`) instead of the next
    readable sample, which a probe would score twice."""

    def __init__(self, parts: Sequence[Dataset]):
        self.parts = list(parts)
        self.offsets = [0]
        for p in self.parts:
            self.offsets.append(self.offsets[-1] + len(p))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int):
        k = next(k for k in range(len(self.parts)) if index < self.offsets[k + 1])
        part, j = self.parts[k], index - self.offsets[k]
        while isinstance(part, Subset):
            part, j = part.dataset, part.indices[j]
        if isinstance(part, ImageFiles):
            sample = part.read(j)
            if sample is None:
                return None, part.samples[j][1], index, part.samples[j][0]
            return (*sample, index, "")
        return (*part[j], index, "")


def collate_each_once(batch: list) -> tuple:
    """``(images or None, labels, indices, unreadable file names)`` of a batch of :class:`EachSampleOnce`."""
    kept = [b for b in batch if b[0] is not None]
    imgs = torch.stack([b[0] for b in kept]) if kept else None
    return (
        imgs,
        torch.tensor([int(b[1]) for b in kept], dtype=torch.long),
        torch.tensor([b[2] for b in kept], dtype=torch.long),
        [b[3] for b in batch if b[0] is None],
    )


def extract_dataset(
    model: nn.Module,
    parts: Dataset | Sequence[Dataset],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 128,
    num_workers: int = 2,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "features",
    dist: DistInfo | None = None,
) -> dict[str, Any] | None:
    """:func:`extract_features` over the samples of ``parts`` (one dataset or several, one after another), each
    read once: unreadable image files are left out and listed. Adds ``"index"`` (N,), the position of each row in
    the concatenated parts (ascending), and ``"skipped"``, the unreadable files.

    Under torchrun (``dist.enabled``) rank r reads the r-th contiguous 1/world of the samples on its own device;
    rank 0 receives every row, in order, and the other ranks get None. An error on one rank is raised on all."""
    data = EachSampleOnce(parts if isinstance(parts, (list, tuple)) else [parts])
    world, rank = (dist.world_size, dist.rank) if dist is not None and dist.enabled else (1, 0)
    lo, hi = rank * len(data) // world, (rank + 1) * len(data) // world
    device = torch.device(device) if device is not None else default_device()
    loader = DataLoader(
        Subset(data, range(lo, hi)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_each_once,
    )
    index: list[torch.Tensor] = []
    skipped: list[str] = []

    def batches():
        for imgs, labels, idx, bad in loader:
            skipped.extend(bad)
            if imgs is not None:
                index.append(idx)
                yield imgs, labels

    run = lambda: extract_features(
        model,
        batches(),
        layers=layers,
        device=device,
        amp_dtype=amp_dtype,
        progress=progress and rank == 0,
        total=hi - lo,
        desc=desc if world == 1 else f"{desc} (rank 0 of {world})",
    )
    if world == 1:
        raw = run()
        raw.update(index=torch.cat(index), skipped=skipped)
        return raw
    raw, error = {"skipped": skipped}, None
    try:  # a rank that failed alone would leave the others waiting in the gather below
        if hi > lo:
            raw = {**run(), "index": None, "skipped": skipped}
            raw["index"] = torch.cat(index)
    except Exception as e:
        if len(skipped) < hi - lo:  # else every file of this shard was unreadable: an empty shard, not an error
            error = f"rank {rank}: {type(e).__name__}: {e}"
    error = agree(error, dist)
    if error is not None:
        raise ValueError(f"feature extraction failed on a rank: {error}")
    shards: list[Any] | None = [None] * world if rank == 0 else None
    torch.distributed.gather_object(raw, shards, dst=0)
    if rank != 0:
        return None
    full = [r for r in shards if "index" in r]
    if not full:
        raise ValueError("no images: every image file is unreadable")
    cat = lambda key: torch.cat([r[key] for r in full])
    out = {k: cat(k) for k in ("cls", "mean", "labels", "index")}
    out["layers"] = {i: {p: torch.cat([r["layers"][i][p] for r in full]) for p in POOLS} for i in full[0]["layers"]}
    out["skipped"] = [f for r in shards for f in r["skipped"]]
    return out


# -- checkpoint -> features --------------------------------------------------------------------------------------------
def default_crop_pct(img_size: int) -> float:
    """MAE's eval crop (resize to img/0.875, centre crop) for ImageNet-scale images; no crop for CIFAR-scale ones,
    where a 0.875 crop would throw away an eighth of a 32-pixel image."""
    return 0.875 if img_size >= 96 else 1.0


def eval_view(
    model: nn.Module,
    img_size: int | None = None,
    crop_pct: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """``(transform, description)`` of the deterministic eval view of ``model``'s images: resize to
    ``img_size / crop_pct``, centre crop, normalise; every default from the checkpoint (:func:`resolve_data_config`,
    :func:`default_crop_pct`). The description is what feature files record as ``transform``."""
    dc = resolve_data_config(model)
    img_size = img_size or dc["img_size"]
    crop_pct = crop_pct if crop_pct is not None else default_crop_pct(img_size)
    mean, std = list(mean or dc["mean"]), list(std or dc["std"])
    view = {"img_size": img_size, "crop_pct": crop_pct, "mean": mean, "std": std}
    return eval_transform(img_size, crop_pct=crop_pct, mean=mean, std=std), view


def feature_meta(
    model: nn.Module,
    checkpoint: str,
    sha: str,
    dataset: str,
    split: str | None,
    view: dict,
    raw: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype | None,
) -> dict[str, Any]:
    """The provenance a feature file carries (probes compare ``checkpoint_sha256``, ``precision``, classes)."""
    ours = isinstance(model, Capabilities)  # a foreign nn.Module has no config
    return {
        "checkpoint": checkpoint,
        "checkpoint_sha256": sha,
        "model": model.model_name if ours else None,
        "architecture": model.config.architecture if ours else None,
        "dataset": dataset,
        "split": split,
        "num_images": int(raw["labels"].shape[0]),
        "skipped_files": list(raw.get("skipped", [])),
        "transform": view,
        "layers": sorted(raw["layers"]),
        "crate_mae_version": __version__,
        "precision": {"device": device.type, "dtype": str(dtype or torch.float32).replace("torch.", "")},
    }


def compute_features(
    source: str | os.PathLike | nn.Module,
    data: str | os.PathLike,
    split: str | None = None,
    *,
    kind: str = "auto",
    layers: Sequence[int] | None = None,
    batch_size: int = 128,
    num_workers: int = 2,
    img_size: int | None = None,
    crop_pct: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    seed: int = 0,
    model_overrides: dict[str, Any] | None = None,
    fingerprint: str | None = None,
    limit: int | None = None,
) -> FeatureSet:
    """Features of the labelled split ``data``/``split`` under the deterministic eval transform (resize + centre
    crop + normalise; defaults from the checkpoint's pretraining data config). ``source`` is a checkpoint path, a
    registered model name (random init with ``seed``) or a model (then pass ``fingerprint`` to identify it).
    ``limit`` keeps N evenly spaced images (smoke tests). Unreadable image files are left out and listed in
    ``meta["skipped_files"]``."""
    if isinstance(source, nn.Module):
        model, sha, ckpt_name = source.eval(), fingerprint or state_sha256(source), fingerprint or "<module>"
    else:
        model, sha = load_model(source, seed=seed, **(model_overrides or {}))
        ckpt_name = str(source)
    transform, view = eval_view(model, img_size, crop_pct, mean, std)
    dataset = build_dataset(data, split=split, transform=transform, kind=kind)
    classes = list(dataset.classes)
    if limit is not None and limit < len(dataset):  # evenly spaced, so sorted class folders all contribute
        dataset = Subset(dataset, torch.linspace(0, len(dataset) - 1, limit).round().long().tolist())
    device = torch.device(device) if device is not None else default_device()
    dtype = amp_dtype("auto", device)
    raw = extract_dataset(
        model,
        dataset,
        layers=layers,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        amp_dtype=dtype,
        progress=progress,
    )
    meta = feature_meta(model, ckpt_name, sha, str(data), split, view, raw, device, dtype)
    return FeatureSet(
        cls=raw["cls"], mean=raw["mean"], labels=raw["labels"], classes=classes, layers=raw["layers"], meta=meta
    )


def check_compatible(train: FeatureSet, val: FeatureSet) -> None:
    """Refuse to probe with features of different checkpoints, label sets or transforms."""
    if train.checkpoint_sha256 != val.checkpoint_sha256:
        raise ValueError(
            f"feature files come from different checkpoints: train {train.meta.get('path', '')} has sha256 "
            f"{str(train.checkpoint_sha256)[:12]} ({train.meta.get('checkpoint')}), val {val.meta.get('path', '')} "
            f"has {str(val.checkpoint_sha256)[:12]} ({val.meta.get('checkpoint')})"
        )
    check_same_classes(train.classes, val.classes, "train features", "val features")
    a, b = train.meta.get("precision"), val.meta.get("precision")
    if a != b:  # bf16 features (CUDA autocast) sit measurably apart from fp32 ones (CPU) of the same images
        raise ValueError(
            f"feature files were computed differently: train {train.meta.get('path', '')} on "
            f"{_precision(a)}, val {val.meta.get('path', '')} on {_precision(b)}; extract both on the "
            "same kind of device (--device)"
        )
    if train.cls.shape[1] != val.cls.shape[1]:
        raise ValueError(f"feature widths differ: train {train.cls.shape[1]}, val {val.cls.shape[1]}")


def _precision(p: dict[str, str] | None) -> str:
    return f"{p['device']} in {p['dtype']}" if p else "an unrecorded device (written before crate-mae recorded it)"


def check_same_classes(a: Sequence[str], b: Sequence[str], name_a: str = "train", name_b: str = "val") -> None:
    """Labels index into class lists; two splits are comparable only if those lists are identical."""
    a, b = list(a), list(b)
    if a == b:
        return
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    detail = []
    if only_a:
        detail.append(f"only in {name_a}: {', '.join(only_a[:8])}")
    if only_b:
        detail.append(f"only in {name_b}: {', '.join(only_b[:8])}")
    if not detail:
        detail.append("same names in a different order")
    raise ValueError(
        f"class lists differ between {name_a} ({len(a)} classes) and {name_b} ({len(b)} classes): " + "; ".join(detail)
    )
