"""Small utilities shared by every stage."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml

from .device import amp_dtype, default_device, usable_cores

__all__ = [
    "NoSpaceError",
    "amp_dtype",
    "atomic_write",
    "default_device",
    "file_sha256",
    "parse_key_values",
    "state_sha256",
    "torch_load",
    "usable_cores",
    "writing",
]


class NoSpaceError(RuntimeError):
    """The disk (or quota) filled up while writing ``path``; whatever was being replaced is left intact."""


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_sha256(model: torch.nn.Module) -> str:
    """sha256 over the names and raw bytes of a model's state dict: the fingerprint of unsaved weights (equal on
    every rank of a healthy DDP run, across reruns of deterministic training, and for the same name + seed)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk or quota, however the writer reports it, into one :class:`NoSpaceError` naming ``path``.

    Writers in Rust (safetensors) and C++ (torch) do not raise OSError, so their messages are matched too."""
    try:
        yield
    except NoSpaceError:
        raise
    except Exception as e:
        text = str(e)
        full = (
            (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
            or "No space left" in text
            or "os error 28" in text
            or "StorageFull" in text
        )
        if not full:
            raise
        raise NoSpaceError(f"no space left on device while writing {path}") from None


def _umask() -> int:
    # Reading /proc avoids os.umask's set-and-restore, which races with files created by other threads.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], object]) -> Path:
    """Write a file so that readers see either the old or the complete new version, never a torn one.

    ``write_fn(tmp_path)`` writes a temporary file in the same directory; it is fsynced and renamed over ``path``.
    The file gets the permissions a plain ``open(path, "w")`` would give (mkstemp's are owner-only). A full disk
    raises :class:`NoSpaceError` and leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            write_fn(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    fsync_dir(path.parent)  # make the rename itself durable
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors naming the file.

    A file holding Python objects is refused without torch's advice to pass ``weights_only=False``: for a file of
    unknown origin that advice is how code gets run."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise ValueError(
                f"{path} holds Python objects ({found.group(1)}), not only tensors; refusing to unpickle "
                "it (it was not written by crate-mae, or was altered)"
            ) from None
        raise ValueError(
            f"{path} cannot be read as tensors only: it holds other Python objects, is damaged, or is "
            "not a PyTorch file; refusing to unpickle it"
        ) from None
    except Exception as e:
        raise ValueError(
            f"{path} is damaged (truncated or corrupt): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def parse_key_values(items: list[str], form: str = "KEY=VALUE") -> dict:
    """``KEY=VALUE`` strings -> dict, values parsed as YAML (ints, floats, booleans, lists, null).
    ``form`` names the expected shape in the error message."""

    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not {form}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({yaml_problem(e)})") from None
    return out


def yaml_problem(e: Exception) -> str:
    """A YAML error in one line: what is wrong and where (line, column), without the quoted source."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
