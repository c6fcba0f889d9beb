"""The transfer data sets of the CRATE-MAE linear-probe table, found under one root as torchvision keeps them on disk
(or as ImageFolder trees), read without checksums or downloads.

| name | torchvision folder under the root | fit on | test on |
|---|---|---|---|
| ``cifar10`` | ``cifar-10-batches-py/`` (python-pickle batches) | train | test |
| ``cifar100`` | ``cifar-100-python/`` | train | test |
| ``flowers102`` | ``flowers-102/`` with ``jpg/``, ``imagelabels.mat``, ``setid.mat`` | train + val | test |
| ``pets`` | ``oxford-iiit-pet/`` with ``images/`` and ``annotations/{trainval,test}.txt`` | trainval | test |

Any data set (these four or another name) may instead be an ImageFolder tree ``<root>/<name>/<split>/<class>/`` (or
a path given for it), fit on ``fit_splits`` and tested on ``test_split``.

torchvision's ``CIFAR10`` / ``Flowers102`` readers refuse files whose md5 sums differ from the originals, so the
batches and ``.mat`` files are read here (the CIFAR batches by :mod:`.cifar`). ``OxfordIIITPet`` checks no sums, but
it decodes with a bare ``Image.open``, so one truncated JPEG would stop a whole suite; its list files are read here
with its rules (labels ``class_id - 1``, class names from the image ids) and the images through :class:`ImageFiles`,
which skips and counts unreadable files. Tests check both readers against torchvision's on generated replicas.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch.utils.data import Dataset
from torchvision.datasets import Flowers102

from .cifar import CIFARBatches, find_cifar_dir
from .folder import ImageFiles, ImageFolderDataset


@dataclass(frozen=True)
class TransferSet:
    """One data set of the book's table: its row title, torchvision's folder name and the standard splits."""

    name: str
    title: str
    folder: str
    fit: tuple[str, ...]
    test: str


TRANSFER_SETS = {
    "cifar10": TransferSet("cifar10", "CIFAR-10", "cifar-10-batches-py", ("train",), "test"),
    "cifar100": TransferSet("cifar100", "CIFAR-100", "cifar-100-python", ("train",), "test"),
    "flowers102": TransferSet("flowers102", "Oxford Flowers-102", "flowers-102", ("train", "val"), "test"),
    "pets": TransferSet("pets", "Oxford-IIIT Pets", "oxford-iiit-pet", ("trainval",), "test"),
}
DEFAULT_TRANSFER = tuple(TRANSFER_SETS)
PARTS = ("fit", "test")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TransferData:
    """Where one data set was found (``kind``: a name of :data:`TRANSFER_SETS` or ``"imagefolder"``) and the
    splits it is fit and tested on."""

    name: str
    kind: str
    path: Path
    fit_splits: tuple[str, ...]
    test_split: str

    def splits(self, part: str) -> tuple[str, ...]:
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        return self.fit_splits if part == "fit" else (self.test_split,)

    def build(self, part: str, transform: Callable | None = None, strict: bool = False) -> Dataset:
        """The ``fit`` or ``test`` part as a Dataset of ``(image, label)`` with ``.classes``; image files that cannot
        be read are skipped and counted (:class:`ImageFiles`), or raise with ``strict``."""
        splits = self.splits(part)
        if self.kind in ("cifar10", "cifar100"):
            return CIFARBatches(self.path, split=splits[0], kind=self.kind, transform=transform)
        if self.kind == "flowers102":
            samples, classes = read_flowers102(self.path, splits)
        elif self.kind == "pets":
            samples, classes = read_pets(self.path, splits[0])
        else:
            return _image_folders(self.path, splits, transform, strict)
        return ImageFiles(self.path, samples, classes, transform, strict)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "fit_splits": list(self.fit_splits),
            "test_split": self.test_split,
        }


def find_transfer_data(
    name: str,
    root: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    fit_splits: Sequence[str] = ("train",),
    test_split: str = "test",
) -> TransferData:
    """Find data set ``name`` at ``path`` (its own folder), else under ``root``.

    A name of :data:`TRANSFER_SETS` is looked for first in torchvision's layout (``root/<folder>``, or ``path`` /
    ``path/<folder>``) and then read with its standard splits; otherwise, and for any other name, the folder
    (``path``, or ``root/<name>``) must be an ImageFolder tree holding ``fit_splits`` and ``test_split``.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"data set name {name!r} must be letters, digits, '_', '.' or '-' (it names cache files)")
    if path is None and root is None:
        raise ValueError(f"data set {name}: give a root folder (--root) or a path ({name}=PATH)")
    base = Path(path if path is not None else root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"data set {name}: folder not found: {base}")
    looked = []
    known = TRANSFER_SETS.get(name)
    if known is not None:
        for cand in (base, base / known.folder) if path is not None else (base / known.folder,):
            looked.append(str(cand))
            if _is_layout(known.name, cand):
                return TransferData(name, known.name, cand, known.fit, known.test)
    folder = base if path is not None else base / name
    fit_splits, looked = tuple(fit_splits), looked + [f"{folder}/<split>/<class>/"]
    if not fit_splits:
        raise ValueError(f"data set {name}: fit_splits is empty")
    if folder.is_dir() and any((folder / s).is_dir() for s in (*fit_splits, test_split)):
        missing = [str(folder / s) for s in (*fit_splits, test_split) if not (folder / s).is_dir()]
        if missing:
            present = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise FileNotFoundError(
                f"data set {name}: split folder not found: {missing[0]} (sub-folders of "
                f"{folder}: {present or 'none'}; choose the splits with --fit-splits / "
                "--test-split)"
            )
        return TransferData(name, "imagefolder", folder, fit_splits, test_split)
    where = f"torchvision's layout ({TRANSFER_SETS[name].folder}) or " if known else ""
    raise FileNotFoundError(
        f"data set {name}: found neither {where}an ImageFolder tree; looked for " + ", ".join(looked)
    )


def _is_layout(kind: str, folder: Path) -> bool:
    if not folder.is_dir():
        return False
    if kind in ("cifar10", "cifar100"):
        found = find_cifar_dir(folder)
        return found is not None and found[0] == kind and found[1] == folder
    if kind == "flowers102":
        return (folder / "jpg").is_dir() or (folder / "setid.mat").is_file()
    return (folder / "images").is_dir() or (folder / "annotations").is_dir()


def _image_folders(folder: Path, splits: Sequence[str], transform, strict: bool) -> Dataset:
    parts = [ImageFolderDataset(folder / s, transform=transform, strict=strict) for s in splits]
    if len(parts) == 1:
        return parts[0]
    for p in parts[1:]:
        if p.classes != parts[0].classes:
            raise ValueError(
                f"class folders differ between {parts[0].root} and {p.root}; splits fit together "
                "must hold the same classes"
            )
    return ImageFiles(folder, [s for p in parts for s in p.samples], parts[0].classes, transform, strict)


# -- Oxford Flowers-102 ---------------------------------------------------------------------------------------------
FLOWERS_SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}


def read_flowers102(folder: str | os.PathLike, splits: Sequence[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """``(samples, classes)`` of the given splits of ``flowers-102/``: image ids from ``setid.mat`` (``trnid``,
    ``valid``, ``tstid``; 1-based), labels from ``imagelabels.mat`` (1..102, stored as 0..101), files
    ``jpg/image_<id:05d>.jpg``; class names are torchvision's. A listed image that is missing is skipped and
    counted when read, like an unreadable one."""
    from scipy.io import loadmat

    folder = Path(folder)
    for f in (folder / "jpg", folder / "imagelabels.mat", folder / "setid.mat"):
        if not f.exists():
            raise FileNotFoundError(f"Oxford Flowers-102 file not found: {f}")
    labels = np.atleast_1d(_mat_entry(loadmat, folder / "imagelabels.mat", "labels")).astype(np.int64)
    setid = folder / "setid.mat"
    classes = list(Flowers102.classes)
    if labels.min() < 1 or labels.max() > len(classes):
        raise ValueError(f"{folder / 'imagelabels.mat'}: labels span [{labels.min()}, {labels.max()}], not 1..102")
    samples = []
    for split in splits:
        if split not in FLOWERS_SPLIT_KEYS:
            raise ValueError(f"Flowers-102 split must be one of {sorted(FLOWERS_SPLIT_KEYS)}, got {split!r}")
        ids = np.atleast_1d(_mat_entry(loadmat, setid, FLOWERS_SPLIT_KEYS[split])).astype(np.int64)
        if ids.size and (ids.min() < 1 or ids.max() > len(labels)):
            raise ValueError(
                f"{setid}: {FLOWERS_SPLIT_KEYS[split]} holds image ids in [{ids.min()}, {ids.max()}] "
                f"but imagelabels.mat labels {len(labels)} images"
            )
        samples += [(str(folder / "jpg" / f"image_{i:05d}.jpg"), int(labels[i - 1]) - 1) for i in ids.tolist()]
    return samples, classes


def _mat_entry(loadmat, path: Path, key: str) -> np.ndarray:
    try:
        mat = loadmat(path, squeeze_me=True)
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError... for a damaged file
        raise ValueError(f"cannot read {path} as a MATLAB file: {type(e).__name__}: {e}") from None
    if key not in mat:
        raise ValueError(f"{path} has no '{key}' entry (entries: {sorted(k for k in mat if not k.startswith('__'))})")
    return mat[key]


# -- Oxford-IIIT Pets -------------------------------------------------------------------------------------------------
PETS_SPLITS = ("trainval", "test")


def read_pets(folder: str | os.PathLike, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """``(samples, classes)`` of ``oxford-iiit-pet/annotations/<split>.txt`` (lines ``<image id> <class id 1..37>
    <species> <breed id>``; label = class id - 1; file ``images/<image id>.jpg``). Class names as torchvision's
    ``OxfordIIITPet`` makes them (``american_pit_bull_terrier_12`` -> ``American Pit Bull Terrier``), from both
    list files so that the labels of both splits index the same list."""
    if split not in PETS_SPLITS:
        raise ValueError(f"Oxford-IIIT Pets split must be one of {PETS_SPLITS}, got {split!r}")
    folder = Path(folder)
    if not (folder / "images").is_dir():
        raise FileNotFoundError(f"Oxford-IIIT Pets image folder not found: {folder / 'images'}")
    split_file = folder / "annotations" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"Oxford-IIIT Pets split file not found: {split_file}")
    names: dict[int, str] = {}
    samples: list[tuple[str, int]] = []
    for s in PETS_SPLITS:
        f = folder / "annotations" / f"{s}.txt"
        if not f.is_file():
            continue
        for image_id, label in _pet_lines(f):
            names.setdefault(label, " ".join(part.title() for part in image_id.rsplit("_", 1)[0].split("_")))
            if s == split:
                samples.append((str(folder / "images" / f"{image_id}.jpg"), label))
    if not samples:
        raise ValueError(f"{split_file} lists no images")
    classes = [names.get(i, str(i)) for i in range(max(names) + 1)]
    return samples, classes


def _pet_lines(path: Path):
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) < 1:
            raise ValueError(f"{path}:{n}: expected '<image id> <class id >= 1> <species> <breed id>', got {line!r}")
        yield parts[0], int(parts[1]) - 1
