"""One run per folder: ``<output_dir>/.lock``, held by the run writing there (:class:`RunLock`)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"


class RunLock:
    """``<output_dir>/.lock``: an exclusive ``flock`` on a file that names its holder (pid, host, start time).

    The kernel drops the lock when its process dies, however it dies, so a lock file whose lock can be taken again
    was left by a run that ended without cleaning up: it is reported as stale and taken over. Where ``flock`` is
    unsupported (some network file systems) a holder on this host is checked by pid instead; one on another host
    cannot be checked and is refused, naming the file to delete."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a stale lock was taken over. ValueError when another run holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held_by_kernel = True
            except BlockingIOError:
                os.close(fd)
                raise ValueError(self._busy(self._holder())) from None
            except OSError:  # no flock here: fall back to checking the recorded pid
                held_by_kernel = False
            if held_by_kernel and os.fstat(fd).st_ino != _inode(self.path):
                os.close(fd)  # the file was replaced while we waited for it: lock the current one
                continue
            break
        previous = self._holder()
        note = None
        if previous:
            if not held_by_kernel and not self._dead(previous):
                os.close(fd)
                raise ValueError(self._busy(previous))
            note = (
                f"warning: {self.path} was left by a run that ended without releasing it ({_describe(previous)}; "
                "killed or crashed?); taking it over"
            )
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            ).encode(),
        )
        self.fd = fd
        return note

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def _holder(self) -> dict[str, Any]:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def _busy(self, holder: dict[str, Any]) -> str:
        return (
            f"{self.path.parent} is in use by another run ({_describe(holder)}, per {self.path}); wait for it "
            "to finish or use another run.output_dir. If that run is gone (its machine crashed), delete "
            f"{self.path}"
        )

    @staticmethod
    def _dead(holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
