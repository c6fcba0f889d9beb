from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from tiny import TINY, TINY_ENCODER

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """../shared beside the repository; tests that need it skip when it is absent (users do not have it)."""
    if not SHARED.is_dir():
        pytest.skip(f"reference material not found at {SHARED} (only present in the development workspace)")
    return SHARED


@pytest.fixture
def tiny_model_kwargs() -> dict:
    """Overrides that make any crate_mae_* preset small enough for CPU tests (tests/tiny.py TINY, a fresh copy)."""
    return dict(TINY)


@pytest.fixture
def tiny_encoder() -> dict:
    """The encoder part of :func:`tiny_model_kwargs`, the keywords every architecture shares (TINY_ENCODER)."""
    return dict(TINY_ENCODER)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_configure(config):
    """torch.compile's cache for this test session alone, set before anything asks torch for it (inductor writes
    its default into the environment on first use). The default, /tmp/torchinductor_$USER, is shared with every
    other process on the machine, among them ones run with another ATEN_CPU_CAPABILITY whose cached kernels
    (written for vector instructions) then failed to compile here (`at::vec has not been declared`, seen under
    ATEN_CPU_CAPABILITY=default). A cache the user set is left alone."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        config.own_inductor_cache = tempfile.mkdtemp(prefix="crate-mae-tests-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = config.own_inductor_cache


def pytest_unconfigure(config):
    own = getattr(config, "own_inductor_cache", None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)
        if os.environ.get("TORCHINDUCTOR_CACHE_DIR") == own:
            del os.environ["TORCHINDUCTOR_CACHE_DIR"]
