"""A plain folder of photos of any size (configs/pretrain_photos.yaml): shrinking on decode, repeats per epoch."""

import numpy as np
import pytest
from PIL import Image

from crate_mae.data import Repeated, build_dataset
from crate_mae.data.folder import ShrinkingLoader


def photo(path, size, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_large_photos_are_shrunk_to_max_size_on_their_shorter_side(tmp_path):
    photo(tmp_path / "wide.jpg", (800, 400))
    photo(tmp_path / "tall.png", (300, 900))
    photo(tmp_path / "small.jpg", (100, 60))
    ds = build_dataset(tmp_path, kind="folder", max_size=160)
    sizes = {p.split("/")[-1]: tuple(ds[i][0].shape[1:]) for i, (p, _) in enumerate(ds.samples)}
    assert sizes == {"small.jpg": (60, 100), "tall.png": (480, 160), "wide.jpg": (160, 320)}  # (H, W)


def test_a_shrunk_jpeg_matches_a_full_decode_shrunk_afterwards(tmp_path):
    """The reduced-scale JPEG decode is an implementation detail: the pixels stay close to decode-then-resize."""
    path = photo(tmp_path / "p.jpg", (1200, 800), seed=1)
    Image.open(path).convert("RGB").resize((480, 320), Image.BICUBIC).save(tmp_path / "ref.png")
    fast = np.asarray(ShrinkingLoader(320)(str(path)), dtype=np.float64)
    ref = np.asarray(Image.open(tmp_path / "ref.png"), dtype=np.float64)
    assert fast.shape == ref.shape == (320, 480, 3)
    assert np.abs(fast - ref).mean() < 20  # random pixels: the worst case for a resampling difference


def test_the_cache_holds_the_shrunk_pixels(tmp_path):
    photo(tmp_path / "big.jpg", (1000, 1000))
    ds = build_dataset(tmp_path, kind="folder", max_size=100, cache=True)
    assert ds.decoded_bytes_estimate() == 100 * 100 * 3
    assert tuple(ds[0][0].shape) == (3, 100, 100)


def test_bad_max_size_and_shards_are_refused(tmp_path):
    photo(tmp_path / "a.jpg", (10, 10))
    with pytest.raises(ValueError, match="max_size must be a positive integer"):
        build_dataset(tmp_path, kind="folder", max_size=0)
    with pytest.raises(ValueError, match="shards are decoded as stored"):
        build_dataset(tmp_path, kind="shards", max_size=64)


def test_repeated_reads_each_image_that_many_times(tmp_path):
    for i in range(3):
        photo(tmp_path / f"{i}.png", (8, 8), seed=i)
    ds = build_dataset(tmp_path, kind="folder")
    rep = Repeated(ds, 4)
    assert len(rep) == 12 and rep.classes == []
    assert all((rep[i][0] == ds[i % 3][0]).all() for i in range(12))
    with pytest.raises(ValueError, match="times must be a positive integer"):
        Repeated(ds, 0)
