"""Small utilities shared by every stage."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

from .device import autocast_dtype, default_device

__all__ = ["atomic_write", "autocast_dtype", "default_device", "file_sha256", "parse_key_values"]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], None]) -> Path:
    """Write a file so that readers see either the old or the complete new version, never a torn one.

    ``write_fn(tmp_path)`` writes a temporary file in the same directory; it is fsynced and renamed over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def parse_key_values(items: list[str], form: str = "KEY=VALUE") -> dict:
    """``KEY=VALUE`` strings -> dict, values parsed as YAML (ints, floats, booleans, lists, null).
    ``form`` names the expected shape in the error message."""
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not {form}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out
