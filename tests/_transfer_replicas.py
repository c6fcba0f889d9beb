"""Small generated replicas of the transfer data sets in torchvision's on-disk layouts (tests/data and
tests/evaluation use them): CIFAR-10/100 pickle batches, flowers-102 (jpg/, imagelabels.mat, setid.mat written with
scipy.io.savemat as the originals are: 1-based (1, N) arrays) and oxford-iiit-pet (images/, annotations/*.txt).

Images of class k are noise tinted towards colour channel k % 3 with brightness by k // 3, so a probe can separate
them."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

PET_BREEDS = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1)]  # (image id prefix, species 1 cat 2 dog)


def tinted(rng: np.random.Generator, k: int, size: int = 32) -> np.ndarray:
    img = rng.integers(0, 96, (size, size, 3))
    img[..., k % 3] += 120 + 30 * (k // 3 % 2)
    return img.astype(np.uint8)


def write_cifar(root: Path, kind: str = "cifar10", classes: int = 3, per_class: int = 6, seed: int = 0) -> Path:
    """``cifar-10-batches-py/`` (data_batch_1, data_batch_2, test_batch, batches.meta) or ``cifar-100-python/``
    (train, test, meta) with ``per_class`` images of each of ``classes`` labels per split."""
    rng = np.random.default_rng(seed)
    base = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    base.mkdir(parents=True)
    key = b"labels" if kind == "cifar10" else b"fine_labels"

    def batch(labels: list[int]) -> dict:
        data = np.stack([tinted(rng, k).transpose(2, 0, 1).reshape(-1) for k in labels])
        return {b"data": data, key: labels}

    train = [k for k in range(classes) for _ in range(per_class)]
    test = [k for k in range(classes) for _ in range(per_class // 2)]
    if kind == "cifar10":
        files = {"data_batch_1": train[::2], "data_batch_2": train[1::2], "test_batch": test}
        meta = ("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    else:
        files = {"train": train, "test": test}
        meta = ("meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    for name, labels in files.items():
        with open(base / name, "wb") as f:
            pickle.dump(batch(labels), f, protocol=2)
    with open(base / meta[0], "wb") as f:
        pickle.dump(meta[1], f, protocol=2)
    return base


def write_flowers(root: Path, classes: int = 3, per_split: int = 2, seed: int = 1) -> Path:
    """``flowers-102/`` with labels 1..classes and ``per_split`` images of each class in train, val and test."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    for key in ids:
        for k in range(classes):
            for _ in range(per_split):
                labels.append(k + 1)
                ids[key].append(len(labels))
                Image.fromarray(tinted(rng, k, 40)).save(base / "jpg" / f"image_{len(labels):05d}.jpg", quality=95)
    savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in ids.items()})
    return base


def write_pets(root: Path, per_split: dict[str, int] | None = None, seed: int = 2) -> Path:
    """``oxford-iiit-pet/`` with ``images/<Breed>_<i>.jpg`` and ``annotations/{trainval,test}.txt``."""
    rng = np.random.default_rng(seed)
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    i = 0
    for split, n in (per_split or {"trainval": 4, "test": 2}).items():
        lines = []
        for k, (breed, species) in enumerate(PET_BREEDS):
            for _ in range(n):
                i += 1
                Image.fromarray(tinted(rng, k, 48)).save(base / "images" / f"{breed}_{i}.jpg", quality=95)
                lines.append(f"{breed}_{i} {k + 1} {species} {i}")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return base


def write_image_folder(
    root: Path, splits=("train", "val"), classes: int = 3, per_class: int = 4, seed: int = 3
) -> Path:
    rng = np.random.default_rng(seed)
    for split in splits:
        for k in range(classes):
            d = root / split / f"class{k}"
            d.mkdir(parents=True)
            for j in range(per_class):
                Image.fromarray(tinted(rng, k)).save(d / f"{j}.png")
    return root


def write_all(root: Path) -> Path:
    """All four layouts under ``root``."""
    write_cifar(root, "cifar10")
    write_cifar(root, "cifar100")
    write_flowers(root)
    write_pets(root)
    return root


def truncate(path: Path) -> Path:
    """Cut an image file to half its bytes: it opens but cannot be decoded."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
