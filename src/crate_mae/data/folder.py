"""Image-file datasets: a torchvision ImageFolder tree (labelled) and a flat folder of images (unlabelled).

Both read files lazily and survive bad files. A corrupt, truncated or unreadable image is *skipped*: ``ds[i]``
returns the next readable sample ``(i + 1) % len, (i + 2) % len, ...`` instead, so an epoch never dies halfway.
Each bad file is logged once (``logging`` warning on ``crate_mae.data``) and recorded in ``ds.skipped_files`` /
``ds.num_skipped``. With ``strict=True`` the first bad file raises :class:`UnreadableImageError` naming it.

The bookkeeping lives in the dataset object, so with DataLoader workers each worker process keeps its own copy:
the counts and "once per file" hold per process (a bad file may be reported once by each worker that meets it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from .transforms import to_tensor_transform

log = logging.getLogger("crate_mae.data")

# What PIL raises on bad files: OSError (truncated / unidentified / unreadable / vanished), SyntaxError ("broken PNG
# file"), ValueError and EOFError (malformed headers, pixel values without a scale), DecompressionBombError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class UnreadableImageError(ValueError):
    """An image file could not be decoded (raised in strict mode, or when no file of a dataset can be read)."""


def is_image_file(path: str) -> bool:
    """An image extension torchvision knows (case-insensitive), not a hidden file (e.g. macOS ``._x.jpg`` forks)."""
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def pil_rgb_loader(path: str) -> Image.Image:
    """Open and fully decode ``path`` as 8-bit RGB (decoding here, not lazily, so truncation surfaces inside the
    guard). Images with more than 8 bits per channel are scaled, not clipped (see :func:`to_rgb`)."""
    with open(path, "rb") as f:
        return to_rgb(Image.open(f), path)


class ShrinkingLoader:
    """:func:`pil_rgb_loader` that shrinks an image whose shorter side exceeds ``max_size`` to that size (bicubic,
    aspect kept). A JPEG is decoded at a reduced scale first (``Image.draft``), so a 12-megapixel photo costs a
    fraction of a full decode; other formats are decoded in full, then shrunk."""

    def __init__(self, max_size: int):
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a positive integer (pixels), got {max_size!r}")
        self.max_size = max_size

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) an image of this size is shrunk to (itself when small enough)."""
        short = min(width, height)
        if short <= self.max_size:
            return width, height
        return max(1, round(width * self.max_size / short)), max(1, round(height * self.max_size / short))

    def __call__(self, path: str) -> Image.Image:
        with open(path, "rb") as f:
            img = Image.open(f)
            target = self.size_for(*img.size)
            if target != img.size:
                img.draft("RGB", target)  # JPEG: decode at the smallest scale >= target; others: no effect
            img = to_rgb(img, path)
        target = self.size_for(*img.size)
        return img if target == img.size else img.resize(target, Image.BICUBIC)


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """8-bit RGB. ``convert("RGB")`` clips 16/32-bit integer pixels to 255 (a 16-bit PNG turns white) and float
    pixels in [0, 1] to 0 or 1 (a float TIFF turns black), so those modes are rescaled first: 16-bit integers by
    1/257, floats in [0, 1] by 255. Integers above 16 bits or floats outside [0, 1] have no agreed scale and are
    refused (ValueError naming the file; a dataset skips it like any unreadable file)."""

    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img.convert("RGB")
    a = np.asarray(img, dtype=np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode == "F":
        if not (0.0 <= lo and hi <= 1.0):
            raise ValueError(
                f"{name}: float image with values in [{lo:g}, {hi:g}], not [0, 1]; convert it to 8 or 16 bits"
            )
        scale = 255.0
    else:
        if not (0 <= lo and hi <= 65535):
            raise ValueError(
                f"{name}: {img.mode} image with values in [{lo:g}, {hi:g}], beyond 16 bits; convert it to 8 or 16 bits"
            )
        scale = 1 / 257
    return Image.fromarray(np.round(a * scale).astype(np.uint8)).convert("RGB")


def walk_images(root: str | os.PathLike, seen: set[tuple[int, int]] | None = None) -> list[str]:
    """Image files under ``root``, recursively and sorted, following symlinks, skipping hidden folders.

    A symlinked folder that leads to a folder already walked (a loop such as ``a/b -> ..``, or a second way into the
    same folder) is skipped with one warning naming the link: following it would list the same files again.
    ``seen`` (``(st_dev, st_ino)`` of folders) is shared across calls to keep several walks apart; ``root`` itself
    is always walked."""
    seen = set() if seen is None else seen
    paths = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen and dirpath != str(root):
            log.warning(
                "skipping %s: it leads to a folder already read (%s), e.g. a symlink loop",
                dirpath,
                os.path.realpath(dirpath),
            )
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(f))
    return sorted(paths)


def _identity(path: str | os.PathLike) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


class ImageFiles(Dataset):
    """A list of ``(path, label)`` samples read with ``loader`` and mapped by ``transform``; skips bad files.

    ``ds[i] -> (image, label)`` with ``label = -1`` for unlabelled data. ``transform=None`` yields float32
    ``(3, H, W)`` tensors in [0, 1] at the file's own size.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        samples: list[tuple[str, int]],
        classes: list[str],
        transform: Callable | None = None,
        strict: bool = False,
        loader: Callable[[str], Image.Image] = pil_rgb_loader,
    ):
        if not samples:
            raise FileNotFoundError(f"no image files ({', '.join(IMG_EXTENSIONS)}) found under {root}")
        self.root = str(root)
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.transform = transform if transform is not None else to_tensor_transform()
        self.strict = strict
        self.loader = loader
        self.shrink = loader if isinstance(loader, ShrinkingLoader) else None  # decode_all replaces the loader
        self.skipped_files: list[str] = []  # in the order this process met them
        self._bad: set[int] = set()  # sample indices known to be unreadable (skipped without re-reading)

    @property
    def num_skipped(self) -> int:
        """Distinct unreadable files this process has met (and skipped)."""
        return len(self.skipped_files)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        index %= n
        for k in range(n):
            sample = self.read((index + k) % n)
            if sample is not None:
                return sample
        raise UnreadableImageError(
            f"none of the {n} image files under {self.root} can be read (first: {self.samples[0][0]})"
        )

    def read(self, index: int):
        """Sample ``index`` itself as ``(image, label)``, or None when its file is unreadable (skipped and counted
        as ``ds[i]`` does; strict mode raises). Evaluation reads each sample once this way: the substitute that
        ``ds[i]`` returns would be scored twice."""
        if index in self._bad:
            return None
        path, label = self.samples[index]
        try:
            img = self.loader(path)
        except DECODE_ERRORS as e:
            if self.strict:
                raise UnreadableImageError(
                    f"cannot read image file {path}: {type(e).__name__}: {e} "
                    "(strict mode; set strict=False to skip unreadable files)"
                ) from e
            self._skip(index, path, e)
            return None
        return self.transform(img), label

    def decoded_bytes_estimate(self, probes: int = 32) -> int:
        """Bytes :meth:`decode_all` would hold, from the image headers of up to ``probes`` evenly spaced files
        (nothing is decoded)."""
        step = max(1, len(self.samples) // probes)
        pixels = []
        size_for = self.shrink.size_for if self.shrink is not None else _same_size
        for path, _ in self.samples[::step][:probes]:
            try:
                with Image.open(path) as img:
                    w, h = size_for(img.width, img.height)
                    pixels.append(w * h)
            except DECODE_ERRORS:
                continue
        return int(3 * len(self.samples) * sum(pixels) / max(len(pixels), 1))

    def decode_all(self) -> int:
        """Decode every image now and keep it in memory as uint8 RGB, so that reading a sample costs neither file
        access nor decoding (about a third of the per-sample cost of 32-px JPEG pretraining, docs/data.md). Samples
        are the same pixels as before; unreadable files fail again, and are skipped or reported, when read. Forked
        DataLoader workers share the decoded images. Returns the bytes held."""

        decoded: dict[str, object] = {}
        for path, _ in self.samples:
            try:
                decoded[path] = np.asarray(self.loader(path))
            except DECODE_ERRORS as e:
                decoded[path] = e
        self.loader = _Decoded(decoded)
        return sum(a.nbytes for a in decoded.values() if isinstance(a, np.ndarray))

    def _skip(self, j: int, path: str, err: BaseException) -> None:
        self._bad.add(j)
        self.skipped_files.append(path)
        log.warning(
            "skipping unreadable image %s (%s: %s); %d file(s) skipped so far in this process",
            path,
            type(err).__name__,
            err,
            len(self.skipped_files),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={self.root!r}, samples={len(self)}, classes={len(self.classes)}, "
            f"strict={self.strict})"
        )


class _Decoded:
    """The loader of :meth:`ImageFiles.decode_all`: PIL images from the decoded pixels, or the decode error again."""

    def __init__(self, decoded: dict[str, object]):
        self.decoded = decoded

    def __call__(self, path: str) -> Image.Image:
        pixels = self.decoded[path]
        if isinstance(pixels, BaseException):
            raise pixels.with_traceback(None)
        return Image.fromarray(pixels)


class ImageFolderDataset(ImageFiles):
    """torchvision ImageFolder layout ``root/<class>/**/<image>``: classes are the sorted sub-folder names, labels
    their indices. Class folders with no image are kept in ``classes`` (so label indices agree across splits) and
    reported with a warning."""

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        strict: bool = False,
        max_size: int | None = None,
    ):
        root = _existing_dir(root)
        try:
            classes, class_to_idx = find_classes(str(root))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no class sub-folders in {root} (ImageFolder layout is root/<class>/<image>; "
                "use kind='folder' for a flat folder of unlabelled images)"
            ) from None
        # A link inside one class folder must not lead back into the tree (another class, or the root).
        seen = {_identity(root), *(_identity(root / c) for c in classes)}
        samples = [(p, class_to_idx[c]) for c in classes for p in walk_images(root / c, seen)]
        if samples:
            empty = sorted(set(classes) - {classes[label] for _, label in samples})
            if empty:
                log.warning("ImageFolder %s: %d class folder(s) without images: %s", root, len(empty), empty[:10])
        super().__init__(root, samples, classes, transform, strict, _loader(max_size))


class FlatImageFolder(ImageFiles):
    """Every image file under ``root`` (recursively, sorted paths, following symlinks), unlabelled (label -1)."""

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        strict: bool = False,
        max_size: int | None = None,
    ):
        root = _existing_dir(root)
        super().__init__(root, [(p, -1) for p in walk_images(root)], [], transform, strict, _loader(max_size))


def _same_size(width: int, height: int) -> tuple[int, int]:
    return width, height


def _loader(max_size: int | None) -> Callable[[str], Image.Image]:
    return pil_rgb_loader if max_size is None else ShrinkingLoader(max_size)


def _existing_dir(root: str | os.PathLike) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data directory not found: {root}")
    if not root.is_dir():
        raise FileNotFoundError(f"data path is not a directory: {root}")
    return root
