"""The linear-probe transfer table of CRATE-MAE in one call: features of each data set once, the paper's probe, a
probe grid on the same features, and a table beside the published numbers.

Protocol (the authors' book, ``../shared/reference/paper-digest.md`` §5.1), for each data set:

1. features: the cls token of the final normed encoder output (``model.forward_features(x)[:, 0]``) of the
   unmasked centre-crop view at the model's resolution (resize the shorter side to 256/224 of it, crop);
2. probe: multinomial logistic regression on standardised features, C chosen on a stratified held-out part of the
   fit split (:func:`.linear.logistic_probe`, as ``crate-mae linprobe``), refit on all of it, scored on test.

The grid (DINOv2's linear-evaluation grid, on the same cached features, no further forward pass) crosses
{cls token, mean of the patch tokens} x {last layer, last 4 layers concatenated} x C. Its best cell is chosen by
held-out top-1 like the paper's C, and reported in its own column: it never replaces the paper-protocol number.
"Last 4" is the final normed output concatenated with the outputs of the three blocks before the last (DINOv2
applies the final norm to all four; ours are block outputs before it; the probe standardises every dimension).

Features are cached per data set and checkpoint (``<out>/features``), results per data set (``<out>/results``):
a killed suite, run again, recomputes neither. Under ``torchrun`` the ranks share out each data set's images; rank 0
probes and writes ``suite.json`` and ``suite.md``.

    from crate_mae.evaluation.suite import run_suite
    suite = run_suite("runs/my/model", root="/data", datasets=["cifar10", "pets"], out="results/suite")
    suite["datasets"]["cifar10"]["top1"], suite["datasets"]["cifar10"]["grid"]["best"]["top1"]
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from joblib import Parallel, delayed

from .._version import __version__
from ..data import DEFAULT_TRANSFER, TRANSFER_SETS, TransferData, find_transfer_data
from ..engine.distributed import cleanup_distributed, init_distributed
from ..io import load_model
from ..models.base import layer_index
from ..utils import amp_dtype, atomic_write, usable_cores
from .features import (
    FeatureSet,
    check_compatible,
    encoder_blocks,
    eval_view,
    extract_dataset,
    feature_meta,
    read_feature_meta,
)
from .linear import DEFAULT_CS, holdout_indices, logistic_probe
from .results import SUITE_FORMAT, write_result

FORMAT = SUITE_FORMAT
PAPER_CROP_PCT = 224 / 256  # resize to 256/224 of the resolution, centre-crop the resolution
GRID_POOLS = ("cls", "mean")
GRID_LAYERS = ("last", "last4")

# The authors' book, table tab:crate_mae_linear_probing: ImageNet-1K pretraining, cls token, scikit-learn
# (../shared/reference/paper-digest.md §5.1). Reference values, not measured here.
BOOK_MODELS = (("CRATE-MAE-S", "25.4M"), ("CRATE-MAE-B", "44.6M"), ("ViT-MAE-S", "47.6M"), ("ViT-MAE-B", "143.8M"))
BOOK_TOP1 = {
    "cifar10": (79.4, 80.9, 79.9, 87.9),
    "cifar100": (56.6, 60.1, 62.3, 68.0),
    "flowers102": (57.7, 61.8, 66.8, 66.4),
    "pets": (40.6, 46.2, 51.8, 80.1),
}


def parse_datasets(datasets: str | Sequence[str]) -> list[tuple[str, str | None]]:
    """``"cifar10,pets=/data/pets"`` or ``["cifar10", "pets=/data/pets"]`` -> ``[(name, path or None), ...]``."""
    items = datasets.split(",") if isinstance(datasets, str) else list(datasets)
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, _, path = item.partition("=")
        out.append((name.strip(), path.strip() or None))
    names = [n for n, _ in out]
    if not out:
        raise ValueError("no data sets given (e.g. --datasets cifar10,cifar100,flowers102,pets)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"data set named twice: {', '.join(dup)}")
    return out


def last4_layers(model: torch.nn.Module) -> list[int]:
    """Block indices whose outputs join the final normed output in the grid's "last 4" features: the (up to)
    three blocks before the last."""
    depth = len(encoder_blocks(model))
    return [layer_index(i, depth) for i in range(-min(4, depth), -1)]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def run_suite(
    ckpt: str | os.PathLike,
    root: str | os.PathLike | None = None,
    datasets: str | Sequence[str] = DEFAULT_TRANSFER,
    out: str | os.PathLike = "suite",
    *,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    fit_splits: Sequence[str] = ("train",),
    test_split: str = "test",
    img_size: int | None = None,
    crop_pct: float = PAPER_CROP_PCT,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    grid: bool = True,
    grid_Cs: Sequence[float] = DEFAULT_CS,
    holdout: float = 0.1,
    max_iter: int = 1000,
    batch_size: int = 128,
    num_workers: int = 4,
    device: torch.device | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    probe_jobs: int | None = None,
    strict: bool = False,
    limit: int | None = None,
    label: str | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Run the transfer suite of checkpoint ``ckpt`` (anything ``--ckpt`` takes; a model name is a random init
    with ``seed`` and ``overrides``) on ``datasets`` (names, or ``name=PATH``) found under ``root``
    (:func:`crate_mae.data.find_transfer_data`; ImageFolder trees use ``fit_splits`` / ``test_split``).

    Writes ``<out>/suite.json`` and ``<out>/suite.md`` and returns the suite dict (None on ranks other than 0).
    ``Cs``: the paper protocol's C candidates; ``grid_Cs``: the grid's; ``probe_jobs``: parallel probe fits
    (default: the cores this process may use); ``limit``: N evenly spaced images per split (smoke tests)."""
    entries = parse_datasets(datasets)
    for name, values in (("Cs", Cs), ("grid_Cs", grid_Cs)):
        if not values or any(float(c) <= 0 for c in values):
            raise ValueError(f"{name} must be positive numbers, got {list(values)}")
    if limit is not None and limit < 2:
        raise ValueError(f"limit must be >= 2 images per split, got {limit}")
    found = [find_transfer_data(n, root, p, fit_splits, test_split) for n, p in entries]
    owned = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = init_distributed(device)
    try:
        model, sha = load_model(ckpt, seed=seed, **dict(overrides or {}))
        transform, view = eval_view(model, img_size, crop_pct, mean, std)
        dtype = amp_dtype("auto", info.device)
        layers = last4_layers(model)  # stored with or without the grid, so that either reuses the other's cache
        out, cache = Path(out), Path(cache_dir) if cache_dir is not None else Path(out) / "features"
        probe = {
            "Cs": [float(c) for c in Cs],
            "grid": bool(grid),
            "grid_Cs": [float(c) for c in grid_Cs],
            "holdout": holdout,
            "max_iter": max_iter,
            "seed": seed,
        }
        plans = []
        for d in found:
            key = {
                "checkpoint_sha256": sha,
                "data": d.describe(),
                "view": view,
                "layers": layers,
                "limit": limit,
                "precision": {"device": info.device.type, "dtype": str(dtype or torch.float32)},
            }
            digest = _digest(key)[:12]
            files = {part: cache / f"{d.name}-{sha[:12]}-{digest}.{part}.safetensors" for part in ("fit", "test")}
            plans.append(
                {
                    "data": d,
                    "key": _digest(key),
                    "files": files,
                    "result": out / "results" / f"{d.name}.json",
                    "result_key": _digest([key, probe]),
                }
            )
        # phase 1, every rank: features of what is neither probed nor cached yet (rank 0 decides: the others might
        # not see its files, and every rank must take part in each extraction)
        todo = [
            [
                i
                for i, plan in enumerate(plans)
                if not _done(plan) and not all(_cached(f, plan["key"]) for f in plan["files"].values())
            ]
            if info.is_main
            else None
        ]
        if info.enabled:
            torch.distributed.broadcast_object_list(todo, src=0)
        for i in todo[0]:
            _extract(
                plans[i],
                model,
                sha,
                str(ckpt),
                transform,
                view,
                layers,
                dtype,
                info,
                batch_size,
                num_workers,
                strict,
                limit,
                progress,
            )
    finally:
        if owned:
            cleanup_distributed()  # the probes run on rank 0 alone: the others are done
    if not info.is_main:
        return None
    ckpt_info = {
        "checkpoint": str(ckpt),
        "checkpoint_sha256": sha,
        "label": label or _label(ckpt, model, seed),
        "model": model.model_name,
        "architecture": model.config.architecture,
        "random_init": bool(model.provenance.get("random_init")),
    }
    suite = {"format": FORMAT, **ckpt_info, "protocol": _protocol(view, probe, layers), "datasets": {}}
    for plan in plans:  # phase 2, rank 0: probes
        d = plan["data"]
        if not _done(plan):
            fit, test = (FeatureSet.load(plan["files"][p]) for p in ("fit", "test"))
            _say(
                f"{d.name}: probing {len(fit)} fit / {len(test)} test images"
                + (f" (grid of {2 * len(GRID_POOLS) * len(GRID_LAYERS) * len(grid_Cs)} fits more)" if grid else "")
            )
            result = probe_dataset(
                fit,
                test,
                d,
                Cs=Cs,
                grid=grid,
                grid_Cs=grid_Cs,
                holdout=holdout,
                max_iter=max_iter,
                seed=seed,
                jobs=probe_jobs,
            )
            result.update(key=plan["result_key"], **{k: ckpt_info[k] for k in ("checkpoint", "checkpoint_sha256")})
            write_result(result, plan["result"])
        result = json.loads(plan["result"].read_text())
        suite["datasets"][d.name] = result
        _say(
            f"{d.name}: top-1 {result['top1']:.2f} (paper protocol)"
            + (
                f", {result['grid']['best']['top1']:.2f} (best grid cell: {_cell(result['grid']['best'])})"
                if grid
                else ""
            )
            + f"; {result['seconds']['total']:.0f} s"
        )
    suite.update(
        crate_mae_version=__version__, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    write_result(suite, out / "suite.json")
    text = suite_markdown(suite)
    atomic_write(out / "suite.md", lambda tmp: Path(tmp).write_text(text))
    return suite


def _label(ckpt, model, seed: int) -> str:
    if model.provenance.get("random_init"):
        return f"{ckpt} (random init, seed {seed})"
    return Path(str(ckpt)).name if Path(str(ckpt)).name != "model" else str(ckpt)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _done(plan: dict) -> bool:
    try:
        return json.loads(plan["result"].read_text()).get("key") == plan["result_key"]
    except (OSError, ValueError):
        return False


def _cached(path: Path, key: str) -> bool:
    try:
        return read_feature_meta(path).get("suite_key") == key
    except (OSError, ValueError):
        return False


def _extract(
    plan, model, sha, ckpt_name, transform, view, layers, dtype, info, batch_size, num_workers, strict, limit, progress
) -> None:
    d: TransferData = plan["data"]
    parts = [d.build(p, transform, strict=strict) for p in ("fit", "test")]
    classes = [list(p.classes) for p in parts]
    if classes[0] != classes[1]:
        raise ValueError(
            f"{d.name}: the fit and test splits have different class lists ({len(classes[0])} and "
            f"{len(classes[1])} classes)"
        )
    if limit is not None:
        parts = [
            torch.utils.data.Subset(
                p, torch.linspace(0, len(p) - 1, min(limit, len(p))).round().long().unique().tolist()
            )
            for p in parts
        ]
    sizes = [len(p) for p in parts]
    t0 = time.perf_counter()
    raw = extract_dataset(
        model,
        parts,
        layers=layers,
        batch_size=batch_size,
        num_workers=num_workers,
        device=info.device,
        amp_dtype=dtype,
        progress=progress,
        desc=f"{d.name} ({sizes[0]} fit + {sizes[1]} test)",
        dist=info,
    )
    seconds = time.perf_counter() - t0
    if raw is None:  # not rank 0
        return
    for k, part in enumerate(("fit", "test")):
        rows = (raw["index"] >= sum(sizes[:k])) & (raw["index"] < sum(sizes[: k + 1]))
        sub = {
            "cls": raw["cls"][rows],
            "mean": raw["mean"][rows],
            "labels": raw["labels"][rows],
            "layers": {i: {p: t[rows] for p, t in v.items()} for i, v in raw["layers"].items()},
            "skipped": [f for f in raw["skipped"] if _in_part(f, parts[k])],
        }
        meta = feature_meta(model, ckpt_name, sha, str(d.path), "+".join(d.splits(part)), view, sub, info.device, dtype)
        meta.update(
            suite_key=plan["key"],
            suite_dataset=d.name,
            suite_part=part,
            seconds=seconds,
            images_total=sum(sizes),
            world_size=info.world_size,
        )
        if not len(sub["labels"]):
            raise ValueError(f"{d.name}: no readable image in the {part} split")
        FeatureSet(
            cls=sub["cls"], mean=sub["mean"], labels=sub["labels"], classes=classes[k], layers=sub["layers"], meta=meta
        ).save(plan["files"][part])


def _in_part(name: str, part) -> bool:
    while isinstance(part, torch.utils.data.Subset):
        part = part.dataset
    return any(s[0] == name for s in getattr(part, "samples", ()))


# -- probes -----------------------------------------------------------------------------------------------------------
def grid_features(fs: FeatureSet, pool: str, layers: str) -> torch.Tensor:
    """The (N, D) or (N, 4D) features of one grid row: ``pool`` of the final output (``"last"``), or concatenated
    with the stored block outputs (``"last4"``)."""
    x = fs.get(pool)
    if layers == "last":
        return x
    if layers != "last4":
        raise ValueError(f"layers must be one of {GRID_LAYERS}, got {layers!r}")
    return torch.cat([fs.get(pool, i) for i in sorted(fs.layers)] + [x], dim=1)


def probe_dataset(
    fit: FeatureSet,
    test: FeatureSet,
    data: TransferData | None = None,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    grid: bool = True,
    grid_Cs: Sequence[float] = DEFAULT_CS,
    holdout: float = 0.1,
    max_iter: int = 1000,
    seed: int = 0,
    jobs: int | None = None,
) -> dict[str, Any]:
    """The paper-protocol probe (cls, last layer, C chosen on held-out fit) and, with ``grid``, every cell of the
    grid (holdout and test top-1 / top-5 of each) and its best cell by holdout top-1 (ties: the earlier cell,
    i.e. cls before mean, last before last4, the smaller C). Fits run in ``jobs`` processes."""
    check_compatible(fit, test)
    t0 = time.perf_counter()
    y, yt = fit.labels.numpy(), test.labels.numpy()
    combos = [(p, layer) for p in GRID_POOLS for layer in GRID_LAYERS] if grid else []
    feats = {c: (grid_features(fit, *c).numpy(), grid_features(test, *c).numpy()) for c in combos}
    # numpy arrays: joblib hands large ones to its worker processes as shared memory maps
    tasks = [
        delayed(logistic_probe)(
            fit.get("cls").numpy(), y, test.get("cls").numpy(), yt, Cs=Cs, holdout=holdout, max_iter=max_iter, seed=seed
        )
    ]
    if grid:
        a, b = holdout_indices(y, holdout, seed)  # the rows logistic_probe fits on and holds out to choose C
        for c in combos:
            x, xt = feats[c]
            for C in grid_Cs:
                tasks.append(delayed(logistic_probe)(x[a], y[a], x[b], y[b], Cs=[C], max_iter=max_iter, seed=seed))
                tasks.append(delayed(logistic_probe)(x, y, xt, yt, Cs=[C], max_iter=max_iter, seed=seed))
    if jobs is None:
        jobs = usable_cores()
    outs = Parallel(n_jobs=max(1, min(jobs, len(tasks))))(tasks)
    paper = outs[0]
    name = data.name if data is not None else fit.meta.get("suite_dataset")
    result: dict[str, Any] = {
        "name": name,
        "title": TRANSFER_SETS[name].title if name in TRANSFER_SETS else name,
        "dataset": {
            **(data.describe() if data else {}),
            "num_train": len(fit),
            "num_test": len(test),
            "num_classes": len(fit.classes),
            "skipped_files": {"fit": fit.meta.get("skipped_files", []), "test": test.meta.get("skipped_files", [])},
        },
        "top1": paper["top1"],
        "top5": paper["top5"],
        "top1_ci95": paper["top1_ci95"],
        "C": paper["C"],
        "sweep_holdout_top1": {str(c): a for c, a in paper["sweep"].items()},
        "n_iter": paper["n_iter"],
        "converged": paper["converged"],
    }
    if grid:
        cells, k = [], 1
        for pool, layers in combos:
            for C in grid_Cs:
                h, t = outs[k], outs[k + 1]
                k += 2
                cells.append(
                    {
                        "pool": pool,
                        "layers": layers,
                        "C": float(C),
                        "holdout_top1": h["top1"],
                        "top1": t["top1"],
                        "top5": t["top5"],
                        "top1_ci95": t["top1_ci95"],
                        "converged": t["converged"],
                    }
                )
        best = max(enumerate(cells), key=lambda ic: (ic[1]["holdout_top1"], -ic[0]))[1]
        result["grid"] = {
            "best": best,
            "cells": cells,
            "Cs": [float(c) for c in grid_Cs],
            "last4_blocks": sorted(fit.layers),
        }
    probe_s = time.perf_counter() - t0
    feat_s = float(fit.meta.get("seconds", 0.0))
    n_images = int(fit.meta.get("images_total", len(fit) + len(test)))
    result["seconds"] = {
        "features": feat_s,
        "probe": probe_s,
        "total": feat_s + probe_s,
        "features_per_1000_images": 1000 * feat_s / max(n_images, 1),
    }
    result["features"] = {
        "precision": fit.meta.get("precision"),
        "world_size": fit.meta.get("world_size", 1),
        "transform": fit.meta.get("transform"),
    }
    return result


def _cell(c: Mapping[str, Any]) -> str:
    return f"{c['pool']}, {c['layers']}, C={c['C']:g}"


def _protocol(view: dict, probe: dict, layers: list[int]) -> dict[str, Any]:
    resize = int(view["img_size"] / view["crop_pct"] + 1e-6)
    return {
        "features": "cls token of the final normed encoder output, unmasked",
        "view": {**view, "resize": resize},
        "probe": "multinomial logistic regression (scikit-learn, L-BFGS) on standardised features; C chosen "
        "by top-1 on a stratified held-out part of the fit split, refit on all of it, scored on test",
        **probe,
        "grid_axes": {"pool": list(GRID_POOLS), "layers": list(GRID_LAYERS), "last4_blocks": layers},
    }


# -- the table --------------------------------------------------------------------------------------------------------
def _f(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def suite_markdown(suite: Mapping[str, Any]) -> str:
    """``suite.md``: our numbers beside the book's four columns, then details and the grid per data set."""
    label, sha = suite["label"], suite["checkpoint_sha256"]
    proto = suite["protocol"]
    v = proto["view"]
    grid = proto["grid"]
    lines = [
        f"# Linear-probe transfer suite: {label}",
        "",
        f"Checkpoint `{suite['checkpoint']}` (sha256 `{sha[:12]}`), model `{suite.get('model')}`"
        f" ({suite.get('architecture')}). Features: {proto['features']}; view: resize to {v['resize']} px, "
        f"centre crop {v['img_size']} px (crop_pct {v['crop_pct']:.4f}), mean {v['mean']}, std {v['std']}. "
        f"Probe: {proto['probe']} (C in {proto['Cs']}, held-out fraction {proto['holdout']}).",
        "",
    ]
    head = ["data set", "fit / test images", f"**{label}**: paper protocol top-1"]
    if grid:
        head += [f"{label}: best grid cell top-1", "best grid cell"]
    head += [f"{m} ({p}, book)" for m, p in BOOK_MODELS]
    lines += [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---:", "---:"] + (["---:", "---"] if grid else []) + ["---:"] * len(BOOK_MODELS)) + "|",
    ]
    for name, r in suite["datasets"].items():
        ds = r["dataset"]
        book = BOOK_TOP1.get(name, (None,) * len(BOOK_MODELS))
        title = r.get("title") or name
        row = [
            title if title == name else f"{title} (`{name}`)",
            f"{ds['num_train']:,} / {ds['num_test']:,}",
            _f(r["top1"], 2),
        ]
        if grid:
            row += [_f(r["grid"]["best"]["top1"], 2), _cell(r["grid"]["best"])]
        row += [_f(b) for b in book]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Book columns: the authors' book (table `tab:crate_mae_linear_probing`), models pretrained on "
        "ImageNet-1K at 224 px, cls token, scikit-learn linear classifier; quoted, not measured here. "
        "A row with `–` is a data set the book does not report.",
    ]
    if grid:
        lines += [
            f"Best grid cell: of {{cls, mean}} x {{last, last4}} x C in {proto['grid_Cs']}, the cell with the "
            "best held-out top-1 (chosen like the paper's C, never on test), scored on test; `last4` is the "
            f"final normed output with the outputs of blocks {proto['grid_axes']['last4_blocks']}."
        ]
    lines += [
        "",
        "## Details",
        "",
        "| data set | read from | top-1 95 % interval (paper) | top-5 (paper) | top-5 (grid best) | C (paper) | "
        "unreadable images skipped | features s | s per 1,000 images | probe s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in suite["datasets"].items():
        s, skipped, ds = r["seconds"], r["dataset"]["skipped_files"], r["dataset"]
        source = (
            f"`{ds.get('path')}` ({ds.get('kind')}: fit {'+'.join(ds.get('fit_splits', []))}, test "
            f"{ds.get('test_split')})"
        )
        ci = r.get("top1_ci95")
        lines.append(
            f"| {name} | {source} | {f'{ci[0]:.1f}-{ci[1]:.1f}' if ci else '–'} | {_f(r['top5'], 2)} | "
            f"{_f(r['grid']['best']['top5'], 2) if grid else '–'} | "
            f"{r['C']:g} | {len(skipped['fit']) + len(skipped['test'])} | {s['features']:.1f} | "
            f"{s['features_per_1000_images']:.1f} | {s['probe']:.1f} |"
        )
    if grid:
        for name, r in suite["datasets"].items():
            Cs = r["grid"]["Cs"]
            lines += [
                "",
                f"### Grid: {name} (test top-1; held-out top-1 in brackets)",
                "",
                "| pool | layers | " + " | ".join(f"C={c:g}" for c in Cs) + " |",
                "|---|---|" + "---:|" * len(Cs),
            ]
            for pool in GRID_POOLS:
                for layers in GRID_LAYERS:
                    cells = {c["C"]: c for c in r["grid"]["cells"] if c["pool"] == pool and c["layers"] == layers}
                    lines.append(
                        f"| {pool} | {layers} | "
                        + " | ".join(f"{cells[c]['top1']:.2f} ({cells[c]['holdout_top1']:.1f})" for c in Cs)
                        + " |"
                    )
    return "\n".join(lines) + "\n"
