"""Shared utilities: file permissions, full disks, progress off and on a terminal."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from crate_mae.utils import NoSpaceError, atomic_write, writing
from crate_mae.utils.progress import Progress


def test_atomic_write_gives_the_permissions_of_a_plain_write(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("a"))
        (tmp_path / "b.txt").write_text("b")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        RuntimeError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        ),
    ],
)
def test_a_full_disk_is_named_with_the_path_and_the_old_file_survives(tmp_path, error):
    target = tmp_path / "x.bin"
    target.write_text("old")

    def fail(tmp):
        Path(tmp).write_text("half")
        raise error

    with pytest.raises(NoSpaceError, match=f"no space left on device while writing {target}"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    with pytest.raises(ValueError):  # other errors pass through unchanged
        with writing(target):
            raise ValueError("unrelated")


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_off_a_terminal_prints_a_plain_line_every_interval():
    out, clock = io.StringIO(), _Clock()
    bar = Progress(100, "features", "img", stream=out, every_s=30, clock=clock)
    for _ in range(100):
        clock.t += 1.0  # 1 s per update: lines at 30, 60 and 90 s, plus one at the end
        bar.update(1, loss="0.5")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in out.getvalue()
    assert lines[0] == "features: 30/100 img (30%), 1 img/s, loss 0.5"
    assert lines[-1].startswith("features: 100/100 img (100%)")


def test_progress_on_a_terminal_is_a_tqdm_bar():
    out = _Tty()
    bar = Progress(10, "epoch 1/2", stream=out)
    for _ in range(10):
        bar.update(1)
    bar.close()
    assert "\r" in out.getvalue() and "epoch 1/2" in out.getvalue()


def test_disabled_progress_writes_nothing():
    out = _Tty()
    bar = Progress(10, "x", stream=out, enabled=False)
    bar.update(5)
    bar.close()
    assert out.getvalue() == ""
