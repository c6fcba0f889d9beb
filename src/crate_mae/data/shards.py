"""WebDataset tar shards: written from an image folder by :func:`make_shards`, read by global index by
:class:`ShardDataset` (optional extra: ``pip install 'crate-mae[shards]'``, i.e. ``webdataset`` + ``wids``).

Layout of a shard folder (one per split)::

    OUT/shards.json            the manifest: a wids dataset descriptor (``wids_version: 1``, ``shardlist`` of
                               ``{url, nsamples, filesize}`` relative to the folder) plus our ``crate_mae`` section
                               (class names, counts, source, skipped files)
    OUT/shard-000000.tar ...   WebDataset layout: sample ``k`` is ``{k:09d}.jpg|png|webp`` and, when labelled,
                               ``{k:09d}.cls`` (the class index as ASCII)
    OUT/sources.txt            line ``k``: the source file of sample ``k`` (relative to the source folder)

Samples keep the source folder's order (:class:`ImageFolderDataset` / :class:`FlatImageFolder`: sorted classes, then
sorted paths), so sample ``k`` of the shards is sample ``k`` of the folder unless make-shards skipped unreadable
files. Because :class:`ShardDataset` is indexed (``ds[k]`` decodes exactly one stored sample), the per-sample
seeding of pretraining (``engine.sampling``: EpochSampler + SeededSamples) works unchanged: data order,
augmentation and masks are functions of (seed, epoch, index), whichever rank, worker or restart reads them.

Unreadable data never crashes an epoch (the policy of :mod:`crate_mae.data.folder`): an undecodable sample is
skipped (``ds[k]`` returns the next readable one, cyclically), an unreadable shard (truncated, corrupt, or holding
a different number of samples than the manifest says) has all its samples skipped; each is logged once and listed in
``ds.skipped_files``. ``strict=True`` raises :class:`UnreadableImageError` naming the shard and sample instead.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import logging
import os
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from PIL import Image
from torch.utils.data import Dataset

from ..utils.extras import require
from .folder import DECODE_ERRORS, UnreadableImageError
from .transforms import to_tensor_transform

log = logging.getLogger("crate_mae.data")

MANIFEST_NAME = "shards.json"
SOURCES_NAME = "sources.txt"
SHARD_PATTERN = "shard-{:06d}.tar"
FORMAT = "crate-mae-shards-v1"
DEFAULT_SHARD_SIZE = 5000
# Image members a shard sample may carry (WebDataset extensions); the first present is decoded.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "bmp", "tif", "tiff", "gif")
# What a corrupt tar makes wids' mmap indexer raise (bad octal sizes, short headers, an empty file).
_SHARD_ERRORS = (OSError, ValueError, struct.error, AssertionError, IndexError, KeyError)


# -- finding and reading the manifest ---------------------------------------------------------------------------------
def find_manifest(path: str | os.PathLike, split: str | None = None) -> Path | None:
    """The shard manifest that ``build_dataset(path, split)`` reads, or None when ``path`` is not a shard folder.

    ``path`` is either a manifest file (``*.json``; then ``split`` must be None) or a folder whose ``split``
    sub-folder (or itself, for ``split=None``) holds ``shards.json``.
    """
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".json":
        if split is not None:
            raise ValueError(
                f"{path} is a shard manifest, so split={split!r} cannot apply to it; pass split=None "
                "(data.split=null), or the folder that holds the split"
            )
        return path
    root = path / split if split is not None else path
    manifest = root / MANIFEST_NAME
    return manifest if manifest.is_file() else None


def tar_hint(root: str | os.PathLike) -> str:
    """A hint for a folder that holds ``.tar`` files but no manifest (an interrupted make-shards, or foreign shards)."""
    root = Path(root)
    try:
        n = sum(1 for p in root.iterdir() if p.suffix == ".tar")
    except OSError:
        return ""
    if not n:
        return ""
    return (
        f"; it holds {n} .tar file(s) but no {MANIFEST_NAME}: write shards with `crate-mae make-shards` "
        "(an interrupted run leaves no manifest: remove the folder and run it again)"
    )


def read_manifest(manifest: str | os.PathLike) -> dict:
    """The manifest as a dict with ``shardlist`` URLs resolved to absolute local paths; ValueError naming the file
    and the problem when it is not a wids v1 descriptor of local shards."""
    manifest = Path(manifest).expanduser()
    if not manifest.is_file():
        raise FileNotFoundError(f"shard manifest not found: {manifest}")
    try:
        desc = json.loads(manifest.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{manifest} is not a JSON shard manifest: {e}") from None
    if not isinstance(desc, dict) or desc.get("wids_version") != 1:
        raise ValueError(f"{manifest} is not a wids dataset descriptor (expected a JSON object with wids_version 1)")
    shards = desc.get("shardlist")
    if not isinstance(shards, list) or not shards:
        raise ValueError(f"{manifest} lists no shards (its 'shardlist' is missing or empty)")
    resolved = []
    for i, s in enumerate(shards):
        url = s.get("url") if isinstance(s, dict) else None
        n = s.get("nsamples") if isinstance(s, dict) else None
        if not isinstance(url, str) or isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"{manifest}: shardlist[{i}] = {s!r} needs a 'url' string and a positive 'nsamples'")
        if "://" in url or url.startswith("pipe:"):
            raise ValueError(
                f"{manifest}: shard {url!r} is not a local file; crate-mae reads local shards only "
                "(copy them to local disk and list relative paths)"
            )
        resolved.append({**s, "url": str((manifest.parent / url).resolve())})
    section = desc.get("crate_mae") if isinstance(desc.get("crate_mae"), dict) else {}
    classes = section.get("classes", desc.get("classes", []))
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{manifest}: 'classes' must be a list of class names, got {classes!r}")
    return {**desc, "shardlist": resolved, "classes": classes}


# -- reading -----------------------------------------------------------------------------------------------------------
def _open_shard(path: str):
    from wids.wids import IndexedTarSamples

    # wids prints the offending header to stdout before raising on a corrupt one; the error says enough.
    with contextlib.redirect_stdout(io.StringIO()):
        return IndexedTarSamples(path=path)


def decode_sample(sample: dict, num_classes: int) -> tuple[Image.Image, int]:
    """``(RGB image, label)`` of one WebDataset sample (``{".jpg": stream, ".cls": stream, ...}``); label -1 without
    a ``.cls`` member. Raises ValueError for a sample without an image or with a label outside the classes, and
    PIL's errors for undecodable bytes."""
    ext = next((e for e in IMAGE_EXTENSIONS if f".{e}" in sample), None)
    if ext is None:
        raise ValueError(f"no image member ({', '.join(IMAGE_EXTENSIONS)}) among {sorted(sample)}")
    img = Image.open(sample[f".{ext}"])
    img = img.convert("RGB")  # decodes fully here, inside the caller's guard
    label = -1
    if ".cls" in sample:
        label = int(sample[".cls"].read().decode("ascii").strip())
        if num_classes and not 0 <= label < num_classes:
            raise ValueError(f"label {label} outside the {num_classes} classes of the manifest")
    return img, label


class ShardDataset(Dataset):
    """Local WebDataset shards listed in a manifest, read by global index: ``ds[k] -> (transform(image), label)``
    with ``label = -1`` for unlabelled data. Sample ``k`` is sample ``k - start`` of the shard whose range holds it
    (ranges follow the manifest order), so indices are stable across processes, workers and restarts.

    Each process (each DataLoader worker) memory-maps the shards it touches through wids and keeps up to
    ``max_open`` of them open (default: all, at most 512); with more shards than that, random access re-opens and
    re-indexes evicted shards. ``transform=None`` yields float32 ``(3, H, W)`` tensors in [0, 1].
    Attributes: ``classes``, ``class_to_idx``, ``shards`` (paths), ``lengths``, ``manifest``, ``skipped_files``.
    A missing shard file fails at construction (FileNotFoundError naming it); corrupt data is skipped or, with
    ``strict=True``, raises :class:`UnreadableImageError` (see the module docstring).
    """

    def __init__(
        self,
        manifest: str | os.PathLike,
        transform: Callable | None = None,
        strict: bool = False,
        max_open: int | None = None,
    ):
        require("wids", "shards", "reading WebDataset shards")
        self.manifest = Path(manifest).expanduser()
        desc = read_manifest(self.manifest)
        self.root = str(self.manifest.parent)
        self.shards = [s["url"] for s in desc["shardlist"]]
        self.lengths = [int(s["nsamples"]) for s in desc["shardlist"]]
        missing = [p for p in self.shards if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} shard file(s) listed in {self.manifest} are missing, first: {missing[0]}"
            )
        self._starts = [0]
        for n in self.lengths:
            self._starts.append(self._starts[-1] + n)
        self.classes = list(desc["classes"])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.transform = transform if transform is not None else to_tensor_transform()
        self.strict = strict
        if max_open is not None and (isinstance(max_open, bool) or not isinstance(max_open, int) or max_open < 1):
            raise ValueError(f"max_open must be a positive integer, got {max_open!r}")
        self.max_open = max_open or min(len(self.shards), 512)
        self.skipped_files: list[str] = []
        self._bad: set[int] = set()  # global indices of undecodable samples
        self._bad_shards: set[int] = set()  # shard indices that cannot be read at all
        self._open: OrderedDict[int, object] = OrderedDict()  # LRU of wids IndexedTarSamples, per process

    @property
    def num_skipped(self) -> int:
        """Distinct unreadable samples and shards this process has met (and skipped)."""
        return len(self.skipped_files)

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard number, index inside the shard)`` of global sample ``index``."""
        s = bisect.bisect_right(self._starts, index) - 1
        return s, index - self._starts[s]

    def __getitem__(self, index: int):
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        j, seen = index % n, 0
        while seen < n:
            s, inner = self.locate(j)
            if s in self._bad_shards or (s not in self._open and not self._try_open(s)):
                step = self.lengths[s] - inner  # the whole rest of an unreadable shard
                j, seen = (j + step) % n, seen + step
                continue
            if j not in self._bad:
                self._open.move_to_end(s)
                try:
                    img, label = decode_sample(self._open[s][inner], len(self.classes))
                except (*DECODE_ERRORS, *_SHARD_ERRORS) as e:
                    where = f"{self.shards[s]} sample {inner} (index {j})"
                    if self.strict:
                        raise UnreadableImageError(
                            f"cannot read {where}: {type(e).__name__}: {e} (strict mode; "
                            "set strict=False to skip unreadable samples)"
                        ) from e
                    self._bad.add(j)
                    self._skip(where, e)
                else:
                    return self.transform(img), label
            j, seen = (j + 1) % n, seen + 1
        raise UnreadableImageError(f"none of the {n} samples in the shards of {self.manifest} can be read")

    def _try_open(self, s: int) -> bool:
        path = self.shards[s]
        try:
            shard = _open_shard(path)
            if len(shard) != self.lengths[s]:
                shard.close()
                raise ValueError(f"holds {len(shard)} samples, the manifest says {self.lengths[s]}")
        except _SHARD_ERRORS as e:
            if self.strict:
                raise UnreadableImageError(
                    f"cannot read shard {path}: {type(e).__name__}: {e} (strict mode; set "
                    "strict=False to skip unreadable shards)"
                ) from e
            self._bad_shards.add(s)
            self._skip(f"{path} (all {self.lengths[s]} samples)", e)
            return False
        self._open[s] = shard
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return True

    def _skip(self, what: str, err: BaseException) -> None:
        self.skipped_files.append(what)
        log.warning(
            "skipping unreadable %s (%s: %s); %d item(s) skipped so far in this process",
            what,
            type(err).__name__,
            err,
            len(self.skipped_files),
        )

    def close(self) -> None:
        """Unmap every open shard (they are re-opened on the next access)."""
        while self._open:
            self._open.popitem()[1].close()

    def __getstate__(self) -> dict:
        # Memory maps do not pickle (spawned DataLoader workers); each process opens its own.
        return {**self.__dict__, "_open": OrderedDict()}

    def __repr__(self) -> str:
        return (
            f"ShardDataset(manifest={str(self.manifest)!r}, samples={len(self)}, shards={len(self.shards)}, "
            f"classes={len(self.classes)}, strict={self.strict})"
        )
