"""For tests that start other Python processes (training runs they can kill, torchrun with two gloo ranks): the
environment that makes their float arithmetic repeatable, and a free port for torchrun's rendezvous."""

from __future__ import annotations

import os
import socket


def repeatable_env(**extra: str) -> dict[str, str]:
    """This process's environment with one OpenMP thread (the same float sums in every process), a fixed hash seed,
    and ``extra`` on top."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", **extra}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (torchrun's ``--master_port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
