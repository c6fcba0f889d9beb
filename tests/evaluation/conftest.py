from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def make_image_folder(root: Path, splits: dict[str, list[str]], per_class: int = 10, seed: int = 0) -> Path:
    """``root/split/class/i.png``: 32x32 noise images, class ``k`` tinted towards a different colour channel."""
    rng = np.random.default_rng(seed)
    for split, classes in splits.items():
        for k, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 128, (32, 32, 3))
                img[..., k % 3] += 127
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two classes, 10 train and 10 val images each."""
    return make_image_folder(tmp_path / "data", {"train": ["cat", "dog"], "val": ["cat", "dog"]})


@pytest.fixture(autouse=True)
def _few_threads():
    # Tiny models: thread start-up costs more than it saves, and CI runs several test files on 2 cores.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def make_folder():
    """The :func:`make_image_folder` builder, for tests that need their own class lists."""
    return make_image_folder
