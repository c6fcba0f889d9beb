"""Symlink loops in data folders, and images with more than 8 bits per channel."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from _data_files import write_image
from PIL import Image

from crate_mae.data import build_dataset
from crate_mae.data.folder import pil_rgb_loader


@pytest.fixture
def looped(tmp_path):
    """11 images in train/a and train/b, plus train/a/up -> .. and train/b/self -> . (symlink loops)."""
    root = tmp_path / "d" / "train"
    for i in range(6):
        write_image(root / "a" / f"{i}.png", i)
    for i in range(5):
        write_image(root / "b" / f"{i}.png", 10 + i)
    os.symlink("..", root / "a" / "up")
    os.symlink(".", root / "b" / "self")
    return tmp_path / "d"


@pytest.mark.parametrize("kind", ["folder", "imagefolder"])
def test_a_symlink_loop_lists_each_file_once_with_a_warning(looped, kind, caplog):
    with caplog.at_level(logging.WARNING, logger="crate_mae.data"):
        ds = build_dataset(looped, split="train", kind=kind)
    assert len(ds) == 11
    assert "symlink loop" in caplog.text and str(looped / "train" / "b" / "self") in caplog.text
    if kind == "imagefolder":
        assert ds.classes == ["a", "b"] and sorted(ds.targets) == [0] * 6 + [1] * 5


def test_analysis_image_search_survives_a_loop(looped):
    from crate_mae.analysis.inputs import find_images

    assert len(find_images(looped / "train")) == 11


def _mid_grey(path, mode_array):
    Image.fromarray(mode_array).save(path)
    return path


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    a = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bits
    path = _mid_grey(tmp_path / "g16.png", a)
    assert Image.open(path).mode.startswith("I")
    assert np.asarray(pil_rgb_loader(str(path))).mean() == pytest.approx(127.5, abs=1)  # not 255 (all white)


def test_float_tiff_is_scaled_not_clipped(tmp_path):
    path = _mid_grey(tmp_path / "f.tif", np.full((8, 8), 0.5, dtype=np.float32))
    assert Image.open(path).mode == "F"
    assert np.asarray(pil_rgb_loader(str(path))).mean() == pytest.approx(127.5, abs=1)  # not 0 (all black)


def test_float_tiff_without_a_scale_is_skipped_like_a_corrupt_file(tmp_path, caplog):
    root = tmp_path / "imgs"
    root.mkdir()
    _mid_grey(root / "a_hdr.tif", np.full((8, 8), 300.0, dtype=np.float32))
    write_image(root / "b.png", 0)
    with caplog.at_level(logging.WARNING, logger="crate_mae.data"):
        ds = build_dataset(root, kind="folder")
        x, _ = ds[0]
    assert isinstance(x, torch.Tensor) and ds.skipped_files == [str(root / "a_hdr.tif")]
    assert "values in [300, 300], not [0, 1]" in caplog.text
