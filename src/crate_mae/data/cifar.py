"""CIFAR-10 / CIFAR-100 from the original python-pickle batches in a local directory (no download).

Layouts (https://www.cs.toronto.edu/~kriz/cifar.html), given either the batch folder itself or its parent:

- CIFAR-10  ``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5`` (train), ``test_batch``, ``batches.meta``
- CIFAR-100 ``cifar-100-python/``: ``train``, ``test``, ``meta`` (fine labels are used)

Each batch is a pickled dict ``{b"data": uint8 (N, 3072) rows of R, G, B planes of 32x32, b"labels" or
b"fine_labels": [int]}``. torchvision's CIFAR classes insist on their md5 sums and directory name, so the batches are
read here with a *restricted* unpickler that only rebuilds numpy arrays: a tampered file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .transforms import to_tensor_transform

CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
SPLIT_ALIASES = {"train": "train", "test": "test", "val": "test"}  # CIFAR has no val split: the test set serves


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (what the CIFAR batches contain)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold only numpy arrays")
        return super().find_class(module, name)


def load_cifar_pickle(path: str | os.PathLike) -> dict:
    """One CIFAR batch/meta file as a dict with ``str`` keys (the files were written by Python 2, hence bytes)."""
    try:
        with open(path, "rb") as f:
            raw = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a CIFAR python-pickle batch: {type(e).__name__}: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a CIFAR python-pickle batch (unpickled a {type(raw).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def find_cifar_dir(path: str | os.PathLike) -> tuple[str, Path] | None:
    """``(kind, batch_dir)`` if ``path`` is (or directly contains) a CIFAR-10/100 batch folder, else None."""
    path = Path(path).expanduser()
    for base in (path, path / CIFAR_DIRS["cifar10"], path / CIFAR_DIRS["cifar100"]):
        if (base / "test_batch").is_file() or (base / "data_batch_1").is_file():
            return "cifar10", base
        if (base / "train").is_file() and (base / "test").is_file():
            return "cifar100", base
    return None


class CIFARBatches(Dataset):
    """CIFAR-10/100 from local pickle batches. ``ds[i] -> (transform(PIL RGB 32x32), label)``.

    ``split``: ``"train"``, ``"test"`` or ``"val"`` (= test, CIFAR has no separate validation set); ``None`` means
    train. ``.classes`` come from the meta file (``label_names`` / ``fine_label_names``), or are ``"0".."K-1"``
    without one. ``.samples`` are ``("<batch file>[row]", label)`` pairs, ``.data`` the (N, 32, 32, 3) uint8 array.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        kind: str = "cifar10",
        transform: Callable | None = None,
    ):
        if kind not in CIFAR_DIRS:
            raise ValueError(f"kind must be 'cifar10' or 'cifar100', got {kind!r}")
        split = "train" if split is None else split
        if split not in SPLIT_ALIASES:
            raise ValueError(f"CIFAR split must be one of {sorted(SPLIT_ALIASES)}, got {split!r}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"CIFAR directory not found: {root}")
        found = find_cifar_dir(root)
        if found is None:
            expect = "data_batch_1..5 / test_batch" if kind == "cifar10" else "train / test"
            raise FileNotFoundError(
                f"no {kind} python-pickle batches ({expect}) in {root} or {root / CIFAR_DIRS[kind]}"
            )
        if found[0] != kind:
            raise ValueError(f"{found[1]} holds {found[0]} batches, not {kind}; use kind={found[0]!r} or 'auto'")
        self.root, self.kind, self.split = str(found[1]), kind, SPLIT_ALIASES[split]
        files = self._batch_files(found[1])
        data, labels, samples = [], [], []
        label_key = "labels" if kind == "cifar10" else "fine_labels"
        for f in files:
            batch = load_cifar_pickle(f)
            if "data" not in batch or label_key not in batch:
                raise ValueError(
                    f"{f} lacks the 'data' / '{label_key}' entries of a {kind} batch (keys: {sorted(map(str, batch))})"
                )
            x = np.asarray(batch["data"], dtype=np.uint8)
            y = [int(v) for v in batch[label_key]]
            if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != x.shape[0]:
                raise ValueError(
                    f"{f}: data of shape {x.shape} with {len(y)} labels; expected (N, 3072) uint8 rows "
                    "and one label per row"
                )
            data.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(y)
            samples.extend((f"{f}[{r}]", label) for r, label in enumerate(y))
        if not labels:
            raise ValueError(f"{self.kind} {self.split} batches in {self.root} hold no images")
        self.data = np.ascontiguousarray(np.concatenate(data))
        self.targets = labels
        self.samples = samples
        self.classes = self._class_names(found[1], max(labels) + 1)
        if max(labels) >= len(self.classes) or min(labels) < 0:
            raise ValueError(
                f"{self.root}: labels span [{min(labels)}, {max(labels)}] but there are {len(self.classes)} class names"
            )
        self.transform = transform if transform is not None else to_tensor_transform()

    def _batch_files(self, base: Path) -> list[Path]:
        if self.kind == "cifar100":
            files = [base / self.split]
        elif self.split == "test":
            files = [base / "test_batch"]
        else:  # data_batch_1 .. data_batch_5, in numeric order
            files = sorted(
                (p for p in base.iterdir() if re.fullmatch(r"data_batch_\d+", p.name)),
                key=lambda p: int(p.name.rsplit("_", 1)[1]),
            )
        missing = [str(f) for f in files if not f.is_file()]
        if not files or missing:
            raise FileNotFoundError(
                f"{self.kind} {self.split} batches missing in {base}: {missing or 'no data_batch_<k> file'}"
            )
        return files

    def _class_names(self, base: Path, num_labels: int) -> list[str]:
        meta, key = (
            (base / "batches.meta", "label_names") if self.kind == "cifar10" else (base / "meta", "fine_label_names")
        )
        if meta.is_file():
            names = load_cifar_pickle(meta).get(key)
            if names:
                return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        return [str(i) for i in range(max(num_labels, 10 if self.kind == "cifar10" else 100))]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]

    def __repr__(self) -> str:
        return f"CIFARBatches(root={self.root!r}, kind={self.kind}, split={self.split}, samples={len(self)})"
