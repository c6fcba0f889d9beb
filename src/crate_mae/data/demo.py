"""The embedded demo data: natural photos that ship inside scikit-image, cut into random crops.

Only ``skimage.data`` images stored in the scikit-image wheel itself are used (checked to load with no network and
without ``pooch``); the ones scikit-image would download on first use (eagle, lily, skin, ...) are not. So
``pip install crate-mae`` is all the demo needs.

- :func:`demo_photos` -> the photos as ``(name, H x W x 3 uint8)`` (greyscale ones replicated to RGB).
- :class:`DemoPhotos` -> a Dataset of square random crops; crop ``i`` depends only on ``(seed, i)``, so every run,
  worker and process sees the same images. Its label is the index of the source photo (``.classes`` = photo names),
  which makes a tiny "which photo is this crop from" probe possible.
- :func:`demo_images` -> a fixed, normalised batch of centre crops for pictures and reports.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .transforms import IMAGENET_MEAN, IMAGENET_STD, check_img_size, check_mean_std, to_normalized_tensor

# Our name -> the skimage.data function; every one reads a file inside the scikit-image wheel (no download).
_PHOTOS: dict[str, str] = {
    "astronaut": "astronaut",
    "camera": "camera",
    "chelsea": "chelsea",
    "coffee": "coffee",
    "rocket": "rocket",
    "hubble_deep_field": "hubble_deep_field",
    "immunohistochemistry": "immunohistochemistry",
    "retina": "retina",
    "motorcycle": "stereo_motorcycle",  # returns (left, right, disparity); the left view is used
    "moon": "moon",
    "coins": "coins",
    "grass": "grass",
    "gravel": "gravel",
    "brick": "brick",
}
PHOTO_NAMES: tuple[str, ...] = tuple(_PHOTOS)


def _as_rgb_uint8(name: str, a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name} returned dtype {a.dtype}, expected uint8")
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    elif a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"skimage.data.{name} has shape {a.shape}, expected H x W (x 3)")
    return a


@functools.lru_cache(maxsize=4)
def _photos(max_side: int | None) -> tuple[tuple[str, np.ndarray], ...]:
    out = []
    import skimage
    import skimage.data

    for name, fn in _PHOTOS.items():
        try:
            a = getattr(skimage.data, fn)()
            a = _as_rgb_uint8(name, a[0] if isinstance(a, tuple) else a)
        except (ImportError, OSError, AttributeError) as e:  # a stripped-down or unusual scikit-image install
            raise FileNotFoundError(
                f"scikit-image {skimage.__version__} could not load its bundled photo "
                f"skimage.data.{name} ({type(e).__name__}: {e}); reinstall scikit-image"
            ) from e
        if max_side is not None and max(a.shape[:2]) > max_side:
            img = Image.fromarray(a)
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)  # keeps the aspect ratio
            a = np.asarray(img)
        a = np.ascontiguousarray(a)
        a.setflags(write=False)  # shared by every caller through the cache
        out.append((name, a))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def _pil_photos(max_side: int | None) -> tuple[Image.Image, ...]:
    return tuple(Image.fromarray(np.asarray(a)) for _, a in _photos(max_side))


def demo_photos(max_side: int | None = None) -> list[tuple[str, np.ndarray]]:
    """The demo photos as ``[(name, H x W x 3 uint8 array), ...]`` in a fixed order (read-only arrays, cached).

    ``max_side`` shrinks photos whose longer side exceeds it (Lanczos, aspect kept); None returns the originals."""
    return list(_photos(max_side))


class DemoPhotos(Dataset):
    """``num_samples`` square random crops of the demo photos, resized to ``img_size`` (bicubic, antialiased).

    Sample ``i`` is cut from photo ``i % P`` (so the P photos are equally represented); its side is
    ``sqrt(u) * min(H, W)`` with ``u ~ U(scale)`` and its position uniform, both drawn from
    ``numpy.random.default_rng([seed, i])``: the crop is a pure function of ``(seed, i)``. ``ds[i]`` returns
    ``(transform(crop), i % P)``; the default transform is ToTensor + Normalize(mean, std). A random
    ``transform`` (e.g. :func:`~crate_mae.data.pretrain_transform`) augments *on top of* the fixed crop, with the
    torch RNG as usual.
    """

    def __init__(
        self,
        num_samples: int = 2048,
        img_size: int = 64,
        transform: Callable | None = None,
        seed: int = 0,
        scale: tuple[float, float] = (0.1, 1.0),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        max_side: int = 512,
    ):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        lo, hi = (float(s) for s in scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {tuple(scale)}")
        self.num_samples, self.img_size, self.seed, self.scale = num_samples, check_img_size(img_size), seed, (lo, hi)
        mean, std = check_mean_std(mean, std)
        self.transform = transform if transform is not None else v2.Compose(to_normalized_tensor(mean, std))
        self.max_side = max_side
        self.classes = [name for name, _ in _photos(max_side)]
        self.samples = [
            (f"skimage.data.{self.classes[i % len(self.classes)]}#crop{i}", i % len(self.classes))
            for i in range(num_samples)
        ]
        self.targets = [label for _, label in self.samples]

    @property
    def _images(self) -> tuple[Image.Image, ...]:
        # PIL copies of the (shrunk) photos, cached per process rather than stored on the instance, so pickling the
        # dataset into DataLoader workers stays small; crops are cut from them with resize(box=...).
        return _pil_photos(self.max_side)

    def __len__(self) -> int:
        return self.num_samples

    def crop_box(self, index: int) -> tuple[int, tuple[int, int, int, int]]:
        """``(photo index, (left, top, right, bottom))`` of sample ``index`` in the (shrunk) photo."""
        label = index % len(self._images)
        w, h = self._images[label].size
        rng = np.random.default_rng([self.seed, index])
        side = max(1, round(math.sqrt(rng.uniform(*self.scale)) * min(w, h)))
        left = int(rng.integers(0, w - side + 1))
        top = int(rng.integers(0, h - side + 1))
        return label, (left, top, left + side, top + side)

    def crop(self, index: int) -> Image.Image:
        """Sample ``index`` as an ``img_size`` x ``img_size`` RGB PIL image (before ``transform``)."""
        label, box = self.crop_box(index)
        return self._images[label].resize((self.img_size, self.img_size), Image.Resampling.BICUBIC, box=box)

    def __getitem__(self, index: int):
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for DemoPhotos of {self.num_samples} samples")
        index %= self.num_samples
        return self.transform(self.crop(index)), index % len(self._images)

    def __repr__(self) -> str:
        return (
            f"DemoPhotos(num_samples={self.num_samples}, img_size={self.img_size}, seed={self.seed}, "
            f"photos={len(self.classes)})"
        )


def demo_images(
    img_size: int = 224, n: int = 8, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """A fixed ``(n, 3, img_size, img_size)`` normalised batch: image ``i`` is the centre square of photo
    ``i % P``, zoomed in ``2 ** (i // P)`` times when ``n`` exceeds the number of photos ``P``."""
    check_img_size(img_size)
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    mean, std = check_mean_std(mean, std)
    to_tensor = v2.Compose(to_normalized_tensor(mean, std))
    photos = _photos(512)
    out = []
    for i in range(n):
        name, a = photos[i % len(photos)]
        h, w = a.shape[:2]
        side = max(1, min(h, w) >> (i // len(photos)))
        left, top = (w - side) // 2, (h - side) // 2
        img = Image.fromarray(np.asarray(a)).resize(
            (img_size, img_size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
        )
        out.append(to_tensor(img))
    return torch.stack(out)
