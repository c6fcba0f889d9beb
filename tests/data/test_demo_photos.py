from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from crate_mae.data import demo, denormalize, pretrain_transform
from crate_mae.data.demo import PHOTO_NAMES, DemoPhotos, demo_images, demo_photos


def test_photos_load_offline(monkeypatch):
    """Every photo comes from the scikit-image wheel itself: with the network cut, loading still works."""

    def no_network(*args, **kwargs):
        raise OSError("network access attempted by the demo data")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    demo._photos.cache_clear()
    try:
        photos = demo_photos()
    finally:
        demo._photos.cache_clear()
    assert [n for n, _ in photos] == list(PHOTO_NAMES) and len(photos) >= 10
    for name, a in photos:
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 100, name
        assert not a.flags.writeable
    assert len({a.tobytes()[:4096] for _, a in photos}) == len(photos)  # no duplicated photo


def test_shrunk_photos_keep_aspect():
    full = dict(demo_photos())
    for name, a in demo_photos(max_side=256):
        h, w = full[name].shape[:2]
        assert max(a.shape[:2]) <= 256
        assert abs(a.shape[0] / a.shape[1] - h / w) < 0.02, name


def test_crops_are_a_function_of_seed_and_index():
    a = DemoPhotos(num_samples=40, img_size=16, seed=1)
    b = DemoPhotos(num_samples=40, img_size=16, seed=1)
    c = DemoPhotos(num_samples=40, img_size=16, seed=2)
    P = len(a.classes)
    order = [37, 3, 3, 20]  # any access order gives the same samples
    for i in order:
        xa, ya = a[i]
        xb, yb = b[i]
        assert xa.shape == (3, 16, 16) and torch.equal(xa, xb) and ya == yb == i % P
    assert not torch.equal(a[3][0], c[3][0])
    assert a.classes == list(PHOTO_NAMES) and a.targets == [i % P for i in range(40)]
    for i in range(40):
        label, (left, t, r, btm) = a.crop_box(i)
        w, h = a._images[label].size
        assert 0 <= left < r <= w and 0 <= t < btm <= h and r - left == btm - t


def test_random_transform_on_top_follows_torch_seed():
    ds = DemoPhotos(num_samples=8, img_size=32, transform=pretrain_transform(32), seed=0)
    torch.manual_seed(7)
    x1 = ds[2][0]
    torch.manual_seed(7)
    x2 = ds[2][0]
    torch.manual_seed(8)
    x3 = ds[2][0]
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)


def test_default_transform_is_normalised_rgb():
    x, _ = DemoPhotos(num_samples=4, img_size=24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))[0]
    assert x.shape == (3, 24, 24) and x.min() >= -1 and x.max() <= 1 and x.std() > 0.05


def test_demo_images_fixed_centre_crops():
    a = demo_images(32, n=3)
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, demo_images(32, n=3))
    pix = denormalize(a)
    assert pix.min() >= 0 and pix.max() <= 1 and pix.std() > 0.1
    more = demo_images(16, n=len(PHOTO_NAMES) + 1)  # beyond P photos: a zoomed-in centre of photo 0
    assert more.shape[0] == len(PHOTO_NAMES) + 1 and not torch.equal(more[0], more[-1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_samples=0), "num_samples"),
        (dict(seed=-1), "seed"),
        (dict(img_size=0), "img_size"),
        (dict(scale=(0, 1)), "scale"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoPhotos(**kwargs)


def test_pickles_small_for_worker_processes():
    """Spawned DataLoader workers receive the dataset pickled: the photos are not part of it (each process loads
    them from scikit-image once), and the copy yields identical samples."""
    import pickle

    ds = DemoPhotos(num_samples=8, img_size=16, seed=3)
    blob = pickle.dumps(ds)
    assert len(blob) < 100_000
    assert torch.equal(pickle.loads(blob)[5][0], ds[5][0])
