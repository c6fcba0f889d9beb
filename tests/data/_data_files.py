"""Helpers for tests/data: tiny on-disk datasets in tmp_path (images via PIL, CIFAR batches via pickle)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: tuple[int, int] = (20, 16), fmt: str | None = None) -> Path:
    """A random RGB image (W x H = size) at ``path`` (format from the suffix unless ``fmt``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def write_truncated_jpeg(path: Path, seed: int = 99, size: tuple[int, int] = (64, 64)) -> Path:
    """A JPEG cut to half its bytes: the header parses, decoding fails with 'image file is truncated'."""
    write_image(path, seed, size)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_image_tree(tmp_path: Path) -> Path:
    """``root/{train,val}/{cat,dog}/`` with 3 + 2 train and 1 + 1 val images (mixed JPEG/PNG)."""
    root = tmp_path / "tree"
    k = 0
    for split, counts in (("train", {"cat": 3, "dog": 2}), ("val", {"cat": 1, "dog": 1})):
        for cls, n in counts.items():
            for i in range(n):
                write_image(root / split / cls / f"{cls}{i}.{'jpg' if i % 2 else 'png'}", k)
                k += 1
    return root


def write_cifar10(root: Path, n_per_batch: int = 4, num_train_batches: int = 2, meta: bool = True) -> Path:
    """CIFAR-10 python batches: ``{b'data': uint8 (N, 3072), b'labels': [...]}`` pickled with bytes keys."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, num_train_batches + 1)] + ["test_batch"]
    for j, name in enumerate(names):
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [(j * n_per_batch + r) % 10 for r in range(n_per_batch)]
        with open(base / name, "wb") as f:
            pickle.dump(
                {
                    b"batch_label": name.encode(),
                    b"data": data,
                    b"labels": labels,
                    b"filenames": [b"x.png"] * n_per_batch,
                },
                f,
                protocol=2,
            )
    if meta:
        with open(base / "batches.meta", "wb") as f:
            pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}, f, protocol=2)
    return base


def write_cifar100(root: Path, n: int = 5) -> Path:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("train", "test"):
        with open(base / name, "wb") as f:
            pickle.dump(
                {
                    b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                    b"fine_labels": [7 * r % 100 for r in range(n)],
                    b"coarse_labels": [0] * n,
                },
                f,
                protocol=2,
            )
    with open(base / "meta", "wb") as f:
        pickle.dump(
            {
                b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
            },
            f,
            protocol=2,
        )
    return base
