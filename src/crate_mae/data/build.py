"""``build_dataset``: one entry point for every on-disk format, with the format detected when asked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from .cifar import CIFARBatches, find_cifar_dir
from .folder import FlatImageFolder, ImageFolderDataset, is_image_file
from .shards import MANIFEST_NAME, ShardDataset, find_manifest, tar_hint

DATA_KINDS = ("auto", "imagefolder", "folder", "cifar10", "cifar100", "shards")


def _split_dir(path: Path, split: str | None) -> Path:
    """``path/split`` (or ``path`` when split is None), which must be an existing directory."""
    if not path.exists():
        raise FileNotFoundError(f"data directory not found: {path}")
    if not path.is_dir():
        raise FileNotFoundError(f"data path is not a directory: {path}")
    if split is None:
        return path
    root = path / split
    if not root.is_dir():
        subdirs = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise FileNotFoundError(
            f"split folder not found: {root} (sub-folders of {path}: {subdirs or 'none'}; "
            "pass split=None to read the path itself)"
        )
    return root


def detect_kind(path: str | os.PathLike, split: str | None = None) -> str:
    """The ``kind`` that ``build_dataset(path, split, kind='auto')`` uses.

    - ``cifar10`` / ``cifar100`` when ``path`` is, or directly contains, a CIFAR pickle-batch folder;
    - ``imagefolder`` when ``path/split`` has no image files of its own but sub-folders (the classes) that do;
    - ``folder`` when it has image files at its top level, or no sub-folder contains any;
    - ``shards`` when ``path`` is a shard manifest or ``path/split`` holds ``shards.json`` (:mod:`.shards`).
    """
    path = Path(path).expanduser()
    if find_manifest(path, split) is not None:
        return "shards"
    found = find_cifar_dir(path) if path.is_dir() else None
    if found is not None:
        return found[0]
    root = _split_dir(path, split)
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    if any(e.is_file() and is_image_file(e.name) for e in entries):
        return "folder"
    for e in entries:
        if e.is_dir() and not e.name.startswith(".") and _has_image(e.path):
            return "imagefolder"
    raise FileNotFoundError(f"no image files found under {root} (and no CIFAR batches in {path}){tar_hint(root)}")


def _has_image(directory: str) -> bool:
    seen = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(is_image_file(f) for f in filenames):
            return True
    return False


class Repeated(Dataset):
    """``dataset`` read ``times`` over: sample ``i`` is ``dataset[i % len(dataset)]``. With pretraining's per-sample
    seeds each repetition of an image gets its own random crop, so a small folder of photos gives an epoch of
    enough batches (config key ``data.repeat``)."""

    def __init__(self, dataset: Dataset, times: int):
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be a positive integer, got {times!r}")
        self.dataset, self.times = dataset, times
        self.classes = getattr(dataset, "classes", [])

    def __len__(self) -> int:
        return self.times * len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


CACHE_MODES = (True, False, "auto")


def build_dataset(
    path: str | os.PathLike,
    split: str | None = None,
    transform: Callable | None = None,
    kind: str = "auto",
    strict: bool = False,
    cache: bool | str = False,
    max_size: int | None = None,
) -> Dataset:
    """A Dataset of ``(image_tensor, label)`` read from ``path``; ``label = -1`` for unlabelled data.

    ``kind``:
      - ``"imagefolder"``: torchvision layout ``<path>/<split>/<class>/<image>`` (:class:`ImageFolderDataset`);
      - ``"folder"``: every image under ``<path>/<split>``, recursively, unlabelled (:class:`FlatImageFolder`);
      - ``"cifar10"`` / ``"cifar100"``: the original python-pickle batches in ``path`` (or ``path/cifar-10-batches-py``,
        ``path/cifar-100-python``); ``split`` is ``"train"`` (default) or ``"test"`` (``"val"`` is an alias);
      - ``"shards"``: WebDataset shards written by ``crate-mae make-shards`` (:class:`ShardDataset`): ``path`` is
        their manifest, or ``<path>/<split>`` holds ``shards.json``; needs ``pip install 'crate-mae[shards]'``;
      - ``"auto"``: :func:`detect_kind`.
    ``split=None`` reads ``path`` itself (image kinds). ``transform`` maps a PIL RGB image to a tensor (default:
    float32 in [0, 1]). ``strict=True`` raises on the first unreadable image file instead of skipping it (image kinds).
    ``cache`` (image-file kinds): decode every image once at construction and keep it in memory
    (:meth:`~.folder.ImageFiles.decode_all`); ``"auto"`` does so when the decoded images would take at most
    :func:`cache_budget` bytes. CIFAR batches are held in memory anyway; shards are never cached (``cache=True``
    raises ValueError). ``max_size`` (image-file kinds): shrink images whose shorter side is longer to that many
    pixels when decoding them (:class:`~.folder.ShrinkingLoader`; JPEGs decode at a reduced scale, far faster for
    large photos, and a cache holds the shrunk pixels); CIFAR images are 32 px; shards refuse it.

    The result has ``.classes`` (empty when unlabelled) and ``len``; all but shards also ``.samples`` (``(source,
    label)`` pairs).
    Missing or empty directories and unknown kinds raise FileNotFoundError / ValueError naming the path.
    """
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {kind!r} for {path}; choose one of {DATA_KINDS}")
    path = Path(path).expanduser()
    if kind == "auto":
        kind = detect_kind(path, split)
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be true, false or 'auto', got {cache!r}")
    if kind == "shards":
        if cache is True:
            raise ValueError(
                f"{path}: shards are read from disk by index and cannot be cached in memory; use "
                "cache=false (or 'auto'), or the image folder the shards were written from"
            )
        if max_size is not None:
            raise ValueError(
                f"{path}: max_size applies to image files; shards are decoded as stored (shrink the "
                "folder before make-shards)"
            )
        manifest = find_manifest(path, split)
        if manifest is None:
            raise FileNotFoundError(
                f"no shard manifest: {(path / split if split else path) / MANIFEST_NAME} does not exist"
            )
        return ShardDataset(manifest, transform=transform, strict=strict)
    if kind in ("cifar10", "cifar100"):
        return CIFARBatches(path, split=split, kind=kind, transform=transform)
    root = _split_dir(path, split)
    cls = ImageFolderDataset if kind == "imagefolder" else FlatImageFolder
    ds = cls(root, transform=transform, strict=strict, max_size=max_size)
    if cache is True or (cache == "auto" and ds.decoded_bytes_estimate() <= cache_budget()):
        ds.decode_all()
    return ds


def cache_budget() -> int:
    """Bytes of decoded images ``cache='auto'`` keeps in memory: a quarter of the memory available now, shared by
    the processes ``torchrun`` starts on this machine (each holds its own copy)."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 0
    return available // 4 // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
