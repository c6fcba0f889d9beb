"""Writing WebDataset tar shards from an image folder (``crate-mae make-shards``); the layout is described in
:mod:`crate_mae.data.shards`, which reads them. Separate from the reader because it needs the folder readers and
kind detection of :mod:`.build`, which itself reads shards."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
from pathlib import Path
from typing import Callable, Generator, Iterator

from PIL import Image
from tqdm import tqdm

from .._version import __version__
from ..utils import atomic_write
from ..utils.extras import require
from .build import detect_kind
from .folder import DECODE_ERRORS, FlatImageFolder, ImageFolderDataset, UnreadableImageError, pil_rgb_loader
from .shards import DEFAULT_SHARD_SIZE, FORMAT, MANIFEST_NAME, SHARD_PATTERN, SOURCES_NAME, log

# Formats whose original bytes are stored as they are (when 8-bit RGB or grey): the reader's decode then equals the
# folder reader's. Anything else is stored as the folder reader's RGB result, re-encoded losslessly as PNG.
_KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def _encode_file(path: str) -> tuple[bytes, str]:
    """``(bytes, extension)`` to store for one image file, after decoding it fully the way the folder readers do."""
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        fmt, mode = im.format, im.mode
    rgb = pil_rgb_loader(path)
    if fmt in _KEEP_FORMATS and mode in ("RGB", "L"):
        return data, _KEEP_FORMATS[fmt]
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return buf.getvalue(), "png"


def _encode_safe(item: tuple[str, int]) -> tuple[str, int, bytes | None, str]:
    path, label = item
    try:
        data, ext = _encode_file(path)
    except DECODE_ERRORS as e:
        return path, label, None, f"{type(e).__name__}: {e}"
    return path, label, data, ext


def make_shards(
    src: str | os.PathLike,
    out: str | os.PathLike,
    shard_size: int = DEFAULT_SHARD_SIZE,
    kind: str = "auto",
    strict: bool = False,
    workers: int = 0,
    progress: bool | None = None,
) -> dict:
    """Write the images of ``src`` (an ImageFolder tree or a flat folder) as WebDataset shards into ``out``.

    ``out`` must not exist or be empty (nothing is overwritten). Every file is decoded first, as the folder readers
    decode it; unreadable ones are skipped, logged and listed in the manifest (``strict=True``: UnreadableImageError
    naming the first, and nothing is left behind but the shards already written, without a manifest). Each shard and
    the manifest are written atomically, the manifest last: a folder without ``shards.json`` is incomplete.
    ``workers > 0`` decodes in that many processes. Returns the manifest dict.
    """
    wds = require("webdataset", "shards", "writing WebDataset shards")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size <= 0:
        raise ValueError(f"shard size must be a positive integer (samples per shard), got {shard_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    kind = detect_kind(src) if kind == "auto" else kind
    if kind not in ("imagefolder", "folder"):
        raise ValueError(f"make-shards reads image folders (ImageFolder tree or flat folder); {src} is {kind!r}")
    ds = ImageFolderDataset(src) if kind == "imagefolder" else FlatImageFolder(src)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(
            f"output folder {out} already exists and is not empty; choose a new folder (nothing is overwritten)"
        )
    out.mkdir(parents=True, exist_ok=True)

    items = _encoded(ds.samples, workers)

    bar = tqdm(
        total=len(ds.samples),
        desc=f"make-shards {src.name}",
        unit="img",
        disable=None if progress is None else not progress,
    )  # None: only on a terminal
    shardlist, sources, skipped, counts = [], [], [], [0] * len(ds.classes)

    def readable() -> Iterator[tuple[str, int, bytes, str]]:
        """The readable samples in order, skipping and recording unreadable files."""
        for path, label, data, info in items:
            bar.update(1)
            if data is not None:
                yield path, label, data, info
            elif strict:
                raise UnreadableImageError(
                    f"cannot read image file {path}: {info} (strict mode; set strict=False to skip unreadable files)"
                )
            else:
                log.warning("skipping unreadable image %s (%s)", path, info)
                skipped.append(os.path.relpath(path, src))

    stream = readable()
    head = None  # one sample of look-ahead, so that no empty shard is started

    def write(tmp: str) -> None:
        """The next shard: up to ``shard_size`` samples streamed from the decoder into the tar (bounded memory)."""
        nonlocal head
        first = len(sources)
        with open(tmp, "wb") as f, wds.TarWriter(f, mtime=0, user="crate-mae", group="crate-mae") as w:
            while head is not None and len(sources) - first < shard_size:
                path, label, data, ext = head
                sample = {"__key__": f"{len(sources):09d}", ext: data}
                if label >= 0:
                    sample["cls"] = label
                    counts[label] += 1
                w.write(sample)
                sources.append(os.path.relpath(path, src))
                head = next(stream, None)

    try:
        head = next(stream, None)
        while head is not None:
            name = SHARD_PATTERN.format(len(shardlist))
            before = len(sources)
            atomic_write(out / name, _readable(write))
            shardlist.append({"url": name, "nsamples": len(sources) - before, "filesize": (out / name).stat().st_size})
    finally:
        bar.close()
        items.close()  # a generator: ends the worker pool now, not when it is collected
    if not shardlist:
        raise UnreadableImageError(
            f"none of the {len(ds.samples)} image files under {src} can be read; no shards written"
        )
    desc = {
        "wids_version": 1,
        "name": src.name,
        "shardlist": shardlist,
        "crate_mae": {
            "format": FORMAT,
            "classes": list(ds.classes),
            "class_counts": counts if ds.classes else [],
            "num_samples": len(sources),
            "shard_size": shard_size,
            "source": {"path": str(src.resolve()), "kind": kind, "files": len(ds.samples)},
            "skipped": skipped,
            "created_by": f"crate-mae {__version__}",
        },
    }
    listing = "".join(f"{s}\n" for s in sources)
    atomic_write(out / SOURCES_NAME, _readable(lambda tmp: Path(tmp).write_text(listing)))
    text = json.dumps(desc, indent=1)
    atomic_write(out / MANIFEST_NAME, _readable(lambda tmp: Path(tmp).write_text(text)))
    return desc


def _readable(write: Callable[[str], None]) -> Callable[[str], None]:
    """``write`` followed by the permissions of a normally created file: atomic_write's temporary file is private
    (0600), but shards are usually read by other users and by every rank of a job."""

    def wrapped(tmp: str) -> None:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)

    return wrapped


def _encoded(samples: list[tuple[str, int]], workers: int) -> Generator[tuple[str, int, bytes | None, str], None, None]:
    """``_encode_safe`` over the samples, in order, in this process or a pool of ``workers``."""
    if workers == 0:
        yield from map(_encode_safe, samples)
        return

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_encode_safe, samples, chunksize=16)
