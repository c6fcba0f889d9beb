"""The real development sets in ../shared/data read through build_dataset (skipped when ../shared is absent)."""

from __future__ import annotations

import pytest
import torch

from crate_mae.data import build_dataset, detect_kind, eval_transform, pretrain_transform


@pytest.mark.parametrize(
    "name, split, n, num_classes, size",
    [
        ("cifar10-dev", "train", 10_000, 10, 32),
        ("cifar10-dev", "val", 2_000, 10, 32),
        ("flowers12", "train", 720, 12, 224),
        ("flowers12", "val", 240, 12, 224),
    ],
)
def test_shared_sets_readable(shared_dir, name, split, n, num_classes, size):
    root = shared_dir / "data" / name
    assert detect_kind(root, split) == "imagefolder"
    ds = build_dataset(root, split=split)
    assert len(ds) == n and len(ds.classes) == num_classes
    assert sorted(set(ds.targets)) == list(range(num_classes))
    for i in (0, n // 2, n - 1):  # a few images from different classes decode at their stored size
        x, y = ds[i]
        assert x.shape == (3, size, size) and 0 <= y < num_classes
    assert ds.num_skipped == 0


def test_shared_flowers_through_both_transforms(shared_dir):
    root = shared_dir / "data" / "flowers12"
    val = build_dataset(root, split="val", transform=eval_transform(64))
    train = build_dataset(root, split="train", transform=pretrain_transform(64))
    assert val.classes == train.classes
    xs = torch.stack([val[i][0] for i in range(0, 240, 40)])
    # ImageNet-normalised natural photos: per-channel means near 0, spread near 1 (loose bounds, real data).
    assert xs.shape == (6, 3, 64, 64) and xs.mean().abs() < 1.0 and 0.3 < xs.std() < 2.0
    assert train[0][0].shape == (3, 64, 64)
