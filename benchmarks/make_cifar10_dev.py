"""Rebuild cifar10-dev, the 10,000 / 2,000-image CIFAR-10 development set the benchmarks and docs use, from the
official CIFAR-10 python batches (https://www.cs.toronto.edu/~kriz/cifar.html, ``cifar-10-python.tar.gz``).

    python benchmarks/make_cifar10_dev.py ~/data/cifar-10-batches-py data/cifar10-dev
    python benchmarks/make_cifar10_dev.py ~/data/cifar-10-batches-py data/cifar10-dev --compare OTHER_COPY

The rule (deterministic, no random numbers): take the CIFAR-10 *training* images in the order of ``data_batch_1`` ..
``data_batch_5``; for each class, its first 1,200 images in that order; the first 1,000 of them go to
``OUT/train/<class>/NNNN.jpg`` and the next 200 to ``OUT/val/<class>/NNNN.jpg``, where ``NNNN`` is the image's rank
among its class's images (0000-0999 train, 1000-1199 val) and ``<class>`` the name from ``batches.meta``. Every
image is written as a 32x32 RGB JPEG by Pillow at quality 75 with 4:2:0 chroma subsampling (Pillow's defaults). The
CIFAR-10 test batch is not used, so it stays untouched for final evaluations.

The layout, file names, sizes and JPEG settings are those of the development workspace's copy (checked: 1,000 /
200 files per class named 0000-1199, quality-75 quantisation tables, 4:2:0). Whether that copy was taken with this
exact rule could not be checked there: the official batches were not available offline. ``--compare DIR`` checks it
wherever they are: it decodes every rebuilt image and the file of the same name in ``DIR`` and reports how many are
byte-identical, how many decode to pixels within 2 levels (another libjpeg), and which differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from crate_mae.data import CIFARBatches

TRAIN_PER_CLASS, VAL_PER_CLASS = 1000, 200


def select(labels: list[int], num_classes: int) -> dict[str, list[tuple[int, int, int]]]:
    """``{"train": [(row, label, rank)], "val": [...]}``: the first 1,200 rows of each class in the batches' order."""
    out: dict[str, list[tuple[int, int, int]]] = {"train": [], "val": []}
    seen = [0] * num_classes
    for row, label in enumerate(labels):
        rank = seen[label]
        if rank < TRAIN_PER_CLASS:
            out["train"].append((row, label, rank))
        elif rank < TRAIN_PER_CLASS + VAL_PER_CLASS:
            out["val"].append((row, label, rank))
        seen[label] += 1
    short = [c for c in range(num_classes) if seen[c] < TRAIN_PER_CLASS + VAL_PER_CLASS]
    if short:
        raise ValueError(
            f"classes {short} have fewer than {TRAIN_PER_CLASS + VAL_PER_CLASS} training images: these "
            "are not the full CIFAR-10 training batches"
        )
    return out


def build(cifar_dir: str | Path, out: str | Path) -> int:
    """Write the split under ``out`` (which must not hold one already); returns the number of files."""
    ds = CIFARBatches(cifar_dir, split="train", kind="cifar10")
    out = Path(out)
    if any((out / split).exists() for split in ("train", "val")):
        raise FileExistsError(f"{out} already holds train/ or val/; choose a new folder")
    n = 0
    for split, rows in select(ds.targets, len(ds.classes)).items():
        for row, label, rank in rows:
            path = out / split / ds.classes[label] / f"{rank:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.data[row]).save(path, "JPEG", quality=75)
            n += 1
    return n


def compare(ours: str | Path, theirs: str | Path) -> dict[str, list[str]]:
    """Every JPEG under ``ours`` against the file of the same relative name under ``theirs``."""
    result: dict[str, list[str]] = {"identical": [], "close": [], "different": [], "missing": []}
    ours, theirs = Path(ours), Path(theirs)
    for path in sorted(ours.rglob("*.jpg")):
        rel = path.relative_to(ours)
        other = theirs / rel
        if not other.is_file():
            result["missing"].append(str(rel))
        elif path.read_bytes() == other.read_bytes():
            result["identical"].append(str(rel))
        else:
            a = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
            b = np.asarray(Image.open(other).convert("RGB"), dtype=np.int16)
            same = a.shape == b.shape and int(np.abs(a - b).max()) <= 2
            result["close" if same else "different"].append(str(rel))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cifar_dir", help="the folder with data_batch_1..5 and batches.meta (or its parent)")
    p.add_argument("out", help="new folder for train/ and val/")
    p.add_argument("--compare", metavar="DIR", help="an existing cifar10-dev to check the rebuilt one against")
    args = p.parse_args(argv)
    n = build(args.cifar_dir, args.out)
    print(f"wrote {n} JPEGs into {args.out}/train and {args.out}/val")
    if args.compare:
        res = compare(args.out, args.compare)
        print(", ".join(f"{k}: {len(v)}" for k, v in res.items()))
        for k in ("different", "missing"):
            for rel in res[k][:10]:
                print(f"  {k}: {rel}")
        return 0 if not res["different"] and not res["missing"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
